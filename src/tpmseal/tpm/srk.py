# SPDX-License-Identifier: LGPL-2.1-or-later
"""The storage root key: an ECC P-256 (else RSA-2048) storage key persisted at 0x81000001.

The template is the TCG's standard SRK template (as tpm2-tools and systemd use), so the key is shared
with other tools rather than duplicated. It is created once when absent and reused after.

Tokens store the SRK as a serialized ESYS_TR (handle, name and public area). Unsealing deserializes it
without a TPM command and salts its session to that public key: a TPM that does not hold the matching
private key cannot decrypt the salt, so a swapped SRK cannot read the unsealed key.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpmseal.errors import TpmError, WrongTpm
from tpmseal.tpm.device import tpm_error

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

SRK_HANDLE = 0x81000001


@dataclass(frozen=True)
class SrkRef:
    """What a token stores about the SRK it was sealed under."""

    handle: int
    name: bytes
    serialized: bytes  # Esys_TR_Serialize output: lets unseal skip ReadPublic


def _template(alg: str) -> Any:
    from tpm2_pytss import TPM2B_PUBLIC

    attrs = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"
    if alg == "ecc":
        return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs, nameAlg="sha256")
    return TPM2B_PUBLIC.parse("rsa2048:aes128cfb", objectAttributes=attrs, nameAlg="sha256")


def _is_storage_key(public: Any) -> bool:
    from tpm2_pytss import TPMA_OBJECT

    a = public.publicArea.objectAttributes
    need = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    return (a & need) == need and not (a & TPMA_OBJECT.SIGN_ENCRYPT)


def ensure_srk(esapi: ESAPI) -> tuple[Any, SrkRef]:
    """The ESYS_TR of the SRK and its reference for a token; creates and persists it if absent."""
    from tpm2_pytss import ESYS_TR, TPM2_RC, TPM2B_SENSITIVE_CREATE, TSS2_Exception

    try:
        tr = esapi.tr_from_tpmpublic(SRK_HANDLE)
    except TSS2_Exception as e:
        if e.error != TPM2_RC.HANDLE:
            raise tpm_error(e, "reading the SRK") from None
        tr = None
    if tr is not None:
        try:
            public, _, _ = esapi.read_public(tr)
        except TSS2_Exception as e:
            esapi.tr_close(tr)
            raise tpm_error(e, "reading the SRK") from None
        if not _is_storage_key(public):
            esapi.tr_close(tr)
            raise TpmError(
                f"the persistent handle {SRK_HANDLE:#x} holds a key that is not a storage key",
                "tpmseal shares the standard SRK handle with other tools; check what put it there",
            )
    else:
        transient = None
        for alg in ("ecc", "rsa"):
            try:
                transient, _, _, _, _ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), _template(alg), ESYS_TR.OWNER)
                break
            except TSS2_Exception as e:
                if alg == "rsa":
                    raise tpm_error(e, "creating the SRK") from None
        try:
            tr = esapi.evict_control(ESYS_TR.OWNER, transient, SRK_HANDLE)
        except TSS2_Exception as e:
            raise tpm_error(e, f"persisting the SRK at {SRK_HANDLE:#x}") from None
        finally:
            with contextlib.suppress(TSS2_Exception):  # the TPM may be gone: keep the error that says so
                esapi.flush_context(transient)
    name = bytes(esapi.tr_get_name(tr))
    return tr, SrkRef(SRK_HANDLE, name, bytes(esapi.tr_serialize(tr)))


def srk_from_ref(esapi: ESAPI, ref: SrkRef) -> Any:
    """The SRK's ESYS_TR from a token, without a TPM command; its name must match the stored one."""
    from tpm2_pytss import TSS2_Exception

    try:
        tr = esapi.tr_deserialize(ref.serialized)
        matches = bytes(esapi.tr_get_name(tr)) == ref.name and int(esapi.tr_get_tpm_handle(tr)) == ref.handle
    except (TSS2_Exception, ValueError, TypeError):
        raise WrongTpm("the token's SRK reference cannot be read", "the token may be damaged") from None
    if not matches:
        esapi.tr_close(tr)
        raise WrongTpm("the token's SRK reference does not match its recorded name")
    return tr
