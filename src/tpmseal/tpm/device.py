# SPDX-License-Identifier: LGPL-2.1-or-later
"""Opening a TPM: ``--tpm2-device`` syntax, the ESAPI context, and TSS errors turned into ours."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tpmseal.errors import TpmError, TpmLockout, TpmUnavailable

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

DEFAULT_DEVICE = "/dev/tpmrm0"


def tcti_for(device: str) -> str:
    """Map ``--tpm2-device`` to a TCTI string.

    ``auto`` is the kernel resource manager; a path is a kernel device; ``device:PATH``,
    ``swtpm:path=SOCK``, ``mssim:…`` and any other ``NAME:CONF`` are TCTI strings as they are.
    """
    if device in ("", "auto"):
        if not os.path.exists(DEFAULT_DEVICE):
            raise TpmUnavailable(
                f"no TPM found: {DEFAULT_DEVICE} does not exist",
                "is a TPM 2.0 enabled in the firmware and its driver (tpm_tis/tpm_crb) loaded?",
            )
        return f"device:{DEFAULT_DEVICE}"
    if device.startswith("/"):
        return f"device:{device}"
    if ":" in device or device in ("swtpm", "mssim", "device"):
        return device
    raise TpmUnavailable(
        f"invalid --tpm2-device '{device}'",
        "use auto, a device path, device:PATH, swtpm:path=SOCK or another TCTI string",
    )


def quiet_tss_logging() -> None:
    """The TSS prints every TPM error on stderr even when we handle it; keep it quiet unless asked."""
    os.environ.setdefault("TSS2_LOG", "all+none")


@contextmanager
def open_tpm(device: str) -> Iterator[ESAPI]:
    """An ESAPI context for ``device``, closed on exit (its TCTI too)."""
    tcti = tcti_for(device)
    quiet_tss_logging()
    from tpm2_pytss import ESAPI, TSS2_Exception

    try:
        esapi = ESAPI(tcti)
    except TSS2_Exception as e:
        raise TpmUnavailable(f"cannot open TPM '{device}': {e}") from None
    try:
        yield esapi
    finally:
        esapi.close()


def tpm_error(e: Exception, doing: str) -> TpmError:
    """A TSS2_Exception that no caller handles specially, as one of ours."""
    from tpm2_pytss import TPM2_RC, TSS2_Exception

    if isinstance(e, TSS2_Exception):
        if e.error == TPM2_RC.LOCKOUT:
            return TpmLockout(f"{doing}: the TPM is in dictionary-attack lockout")
        if "tcti" in str(e).lower() or "IO failure" in str(e):
            return TpmUnavailable(f"{doing}: lost the connection to the TPM ({e})")
    return TpmError(f"{doing}: {e}", "run with --debug for details")


def lockout_status(esapi: ESAPI) -> tuple[int, int]:
    """(failed tries so far, maximum tries) of the dictionary-attack protection."""
    from tpm2_pytss import TPM2_CAP, TPM2_PT

    _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.LOCKOUT_COUNTER, 2)
    props = {p.property: p.value for p in data.data.tpmProperties}
    return int(props.get(TPM2_PT.LOCKOUT_COUNTER, 0)), int(props.get(TPM2_PT.MAX_AUTH_FAIL, 0))
