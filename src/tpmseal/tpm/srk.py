# SPDX-License-Identifier: LGPL-2.1-or-later
"""The storage root key: an ECC P-256 (else RSA-2048) storage key persisted at 0x81000001.

The template is the TCG's standard SRK template (as tpm2-tools and systemd use), so the key is shared
with other tools rather than duplicated. It is created once when absent and reused after.

Tokens store the SRK's handle and name (and, informationally, its serialized ESYS_TR). Unsealing never
salts a session to a public key read from a header: whoever rewrites the header could put their own key
there, read the salt, and with it every PIN-derived HMAC of the session. ``srk_from_tpm`` reads the key
at the handle from the TPM (one ReadPublic), requires its name to equal the token's and its public area
to be a key whose private part never left a TPM (fixedTPM, fixedParent, sensitiveDataOrigin, restricted
decrypt: TPM2_Import and TPM2_LoadExternal cannot make such an object, and a TPM generates it only
inside itself); the sealed object is then loaded under it and the session salted to it.
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


def public_of(esapi: ESAPI, tr: Any) -> Any:
    """The TPM2B_PUBLIC that ESAPI holds for ``tr`` (what it would salt a session to); no TPM command.

    Read from the Esys_TR_Serialize form: handle u32, TPM2B_NAME, resource type u32, TPM2B_PUBLIC.
    """
    import struct

    from tpm2_pytss import TPM2B_PUBLIC

    raw = bytes(esapi.tr_serialize(tr))
    (size,) = struct.unpack_from(">H", raw, 4)
    public, _ = TPM2B_PUBLIC.unmarshal(raw[6 + size + 4 :])
    return public


def is_tpm_resident_parent(public: Any) -> bool:
    """A storage key whose private part was generated inside a TPM and can never leave it.

    fixedTPM cannot be set on an object created by TPM2_Import or TPM2_LoadExternal (the TPM refuses);
    sensitiveDataOrigin means the TPM, not the caller, chose the private key; restricted + decrypt
    without sign is a storage parent. Only ECC and RSA keys can salt a session.
    """
    from tpm2_pytss import TPM2_ALG, TPMA_OBJECT

    area = public.publicArea
    a = area.objectAttributes
    need = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
    )
    return (a & need) == need and not (a & TPMA_OBJECT.SIGN_ENCRYPT) and area.type in (TPM2_ALG.ECC, TPM2_ALG.RSA)


def _name_of(public: Any) -> bytes:
    """The TPM name of a public area: nameAlg || SHA-256(TPMT_PUBLIC). Computed with hashlib, not
    ``TPMT_PUBLIC.get_name()``, whose lazy import of cryptography's OpenSSL backend the initramfs lacks."""
    from tpm2_pytss import TPM2_ALG

    from tpmseal.tpm.policy import tpm_name

    if public.publicArea.nameAlg != TPM2_ALG.SHA256:
        raise ValueError("the SRK's name algorithm is not SHA-256")
    return tpm_name(bytes(public.marshal()))


def srk_from_tpm(esapi: ESAPI, ref: SrkRef) -> Any:
    """The ESYS_TR of the key at ``ref.handle`` as the TPM reports it (one ReadPublic), checked.

    WrongTpm when nothing is there, when its name is not the token's, or when it is not a TPM-resident
    storage key (``is_tpm_resident_parent``). Callers check this before asking for a PIN.
    """
    from tpm2_pytss import TPM2_RC, TSS2_Exception

    try:
        tr = esapi.tr_from_tpmpublic(ref.handle)
    except TSS2_Exception as e:
        if e.error == TPM2_RC.HANDLE:
            raise WrongTpm(
                f"the TPM has no key at the SRK handle {ref.handle:#x}: sealed by another TPM, or the TPM was cleared",
                "unlock with a passphrase and enroll again",
            ) from None
        raise tpm_error(e, "reading the SRK") from None
    try:
        public = public_of(esapi, tr)
        name = _name_of(public)
        if name != bytes(esapi.tr_get_name(tr)) or name != ref.name:
            raise WrongTpm(
                f"the key at {ref.handle:#x} is not the SRK this token was sealed under (another TPM, a cleared "
                "TPM, a replaced SRK or an edited token)",
                "unlock with a passphrase and enroll again",
            )
        if not is_tpm_resident_parent(public):
            raise WrongTpm(
                f"the key at {ref.handle:#x} is not a storage key generated inside this TPM (fixedTPM, "
                "sensitiveDataOrigin, restricted decrypt); its private part may be known outside the TPM",
                "check what put this key at the SRK handle; tpmseal does not send a PIN in a session salted to it",
            )
    except (TSS2_Exception, ValueError, TypeError):
        esapi.tr_close(tr)
        raise WrongTpm(f"the public area of the key at {ref.handle:#x} cannot be read") from None
    except BaseException:
        esapi.tr_close(tr)
        raise
    return tr


def _is_storage_key(public: Any) -> bool:
    """What enroll, unseal and doctor require of the key at the SRK handle (one test for all three)."""
    return is_tpm_resident_parent(public)


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
        if not is_tpm_resident_parent(public):
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
    """The SRK's ESYS_TR from a token, without a TPM command; its name must match the stored one.

    Never salt a session that carries a PIN to this: the public key comes from the header. Unseal paths
    use ``srk_from_tpm``.
    """
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
