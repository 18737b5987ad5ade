# SPDX-License-Identifier: LGPL-2.1-or-later
"""Opening a TPM: ``--tpm2-device`` syntax, the ESAPI context, and TSS errors turned into ours."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tpmseal.errors import TpmError, TpmLockout, TpmUnavailable

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

DEFAULT_DEVICE = "/dev/tpmrm0"


DEVICE_HINT = "use auto, a TPM character device (/dev/tpmrm0), device:PATH, swtpm:path=SOCK, mssim:… or tabrmd:…"
# The TCTIs --tpm2-device may name. The TCTI loader also takes library spellings (libtss2-tcti-device.so.0,
# a path to a .so) and wrappers (pcap:, cmd:); each is refused rather than checked, so that no spelling
# sends TPM commands into a file that is not a TPM.
TCTI_NAMES = ("device", "swtpm", "mssim", "tabrmd")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
    ):
        if test(mode):
            return name
    return "not a device"


def _require(path: str, want: int, what: str, must_exist: bool) -> None:
    """``path`` (symlinks followed, as the TCTI will) must be of type ``want`` (stat.S_IFCHR / S_IFSOCK).

    A regular file or a block device would receive TPM command bytes: a disk image or a LUKS header given
    by mistake as --tpm2-device is refused before anything opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not must_exist:
            return
        raise TpmUnavailable(f"cannot open TPM '{path}': it does not exist", DEVICE_HINT) from None
    except OSError as e:
        raise TpmUnavailable(f"cannot open TPM '{path}': {e.strerror}", DEVICE_HINT) from None
    if stat.S_IFMT(st.st_mode) != want:
        raise TpmUnavailable(
            f"refusing --tpm2-device '{path}': it is {_kind(st.st_mode)}, not {what}; nothing was written to it",
            DEVICE_HINT,
        )


def check_device(device: str, must_exist: bool = True) -> None:
    """Refuse a ``--tpm2-device`` that names the wrong kind of file: a path or ``device:PATH`` must be a
    character device, ``swtpm:path=``/``mssim:path=`` a socket. A bare path that is a socket is refused with a
    hint to write ``swtpm:path=``. Nothing is opened. ``must_exist=False`` (the command line, before any
    prompt) lets a missing path through, to be reported when the TPM is opened."""
    if device in ("", "auto", "swtpm", "mssim", "device"):
        return
    if device.startswith("/"):
        try:
            if stat.S_ISSOCK(os.stat(device).st_mode):
                raise TpmUnavailable(f"--tpm2-device '{device}' is a socket", f"write swtpm:path={device} for swtpm")
        except OSError:
            pass
        _require(device, stat.S_IFCHR, "a TPM character device", must_exist)
        return
    name, sep, conf = device.partition(":")
    if not sep:
        raise TpmUnavailable(f"invalid --tpm2-device '{device}'", DEVICE_HINT)
    if name not in TCTI_NAMES:
        raise TpmUnavailable(f"--tpm2-device '{device}': TCTI '{name}' is not one tpmseal accepts", DEVICE_HINT)
    if name == "device" and conf:
        _require(conf, stat.S_IFCHR, "a TPM character device", must_exist)
    elif name in ("swtpm", "mssim"):
        for item in conf.split(","):
            key, _, value = item.partition("=")
            if key.strip() == "path" and value:
                _require(value, stat.S_IFSOCK, "a UNIX socket", must_exist)


def tcti_for(device: str) -> str:
    """Map ``--tpm2-device`` to a TCTI string, after ``check_device``.

    ``auto`` is the kernel resource manager; a path is a kernel device; ``device:PATH``,
    ``swtpm:path=SOCK``, ``mssim:…`` and ``tabrmd:…`` are TCTI strings as they are (no other TCTI).
    """
    if device in ("", "auto"):
        if not os.path.exists(DEFAULT_DEVICE):
            raise TpmUnavailable(
                f"no TPM found: {DEFAULT_DEVICE} does not exist",
                "is a TPM 2.0 enabled in the firmware and its driver (tpm_tis/tpm_crb) loaded?",
            )
        return f"device:{DEFAULT_DEVICE}"
    check_device(device)
    if device.startswith("/"):
        return f"device:{device}"
    return device


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
