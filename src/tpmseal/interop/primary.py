# SPDX-License-Identifier: LGPL-2.1-or-later
"""The transient primary key that systemd 252 and clevis's tpm2 pin derive under the owner hierarchy.

Neither tool keeps a persistent SRK: each unseal runs CreatePrimary again with a fixed template, and
the TPM derives the same key from its owner seed. Both templates are the same (measured: the names
match): a restricted decryption storage key, nameAlg SHA-256, AES-128-CFB for child protection, null
scheme, empty unique, attributes fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, restricted,
decrypt — without noDA, unlike the TCG SRK template tpmseal's own SRK uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from tpmseal.tpm.device import tpm_error

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

PRIMARY_ALGS = ("ecc", "rsa")
_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"


def legacy_template(alg: str) -> Any:
    """TPM2B_PUBLIC of the primary key for ``ecc`` (NIST P-256) or ``rsa`` (2048 bits)."""
    from tpm2_pytss import TPM2B_PUBLIC

    spec = {"ecc": "ecc256:aes128cfb", "rsa": "rsa2048:aes128cfb"}[alg]
    return TPM2B_PUBLIC.parse(spec, objectAttributes=_ATTRS, nameAlg="sha256")


@contextmanager
def legacy_primary(esapi: ESAPI, alg: str) -> Iterator[tuple[Any, str]]:
    """Create the primary key (``alg`` ``ecc``, ``rsa``, or ``auto``: ECC, else RSA) and flush it on exit.

    Yields (ESYS_TR, the algorithm used). One CreatePrimary and one FlushContext.
    """
    from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE, TSS2_Exception

    tries = PRIMARY_ALGS if alg == "auto" else (alg,)
    handle = None
    used = tries[0]
    for i, a in enumerate(tries):
        try:
            handle, _, _, _, _ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), legacy_template(a), ESYS_TR.OWNER)
            used = a
            break
        except TSS2_Exception as e:
            if i == len(tries) - 1:
                raise tpm_error(e, f"creating the {a.upper()} primary key") from None
    try:
        yield handle, used
    finally:
        with suppress(TSS2_Exception):
            esapi.flush_context(handle)
