# SPDX-License-Identifier: LGPL-2.1-or-later
"""Seal and unseal a secret under a PCR policy (optionally with a PIN), over salted sessions.

Unseal costs five TPM commands: Load, StartAuthSession (salted with the parent key, AES-128-CFB
response encryption), PolicyPCR, Unseal (session not continued: the TPM flushes it) and FlushContext of
the sealed object. The caller passes a parent the TPM itself reported (``srk.srk_from_tpm``, one
ReadPublic, or a CreatePrimary output), never a public key taken from a header: Load proves the TPM
holds that parent, so the session salt is readable by the TPM only. The unsealed key crosses the bus
encrypted; a PIN enters only the session HMAC, after stretching (``PinKdf``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpmseal.errors import PinRejected, PolicyMismatch, TpmLockout, WrongTpm
from tpmseal.secret import Secret
from tpmseal.tpm.device import lockout_status, tpm_error
from tpmseal.tpm.pcrs import PcrSelection
from tpmseal.tpm.policy import marshal_pcr_selection

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

MAX_SEALED = 128  # TPM2B_SENSITIVE_DATA holds at most 128 bytes


@dataclass(frozen=True)
class SealedObject:
    private: bytes  # TPM2B_PRIVATE, marshaled
    public: bytes  # TPM2B_PUBLIC, marshaled


# scrypt parameters of new PIN seals (docs/token-format.md): 16 MiB, measured ≈ 50-90 ms on the host,
# ≈ 0.5-1 s under qemu TCG. The parser refuses weaker ones, so a header edit cannot make a PIN cheaper to guess.
PIN_SCRYPT_LOG2_N = 14
PIN_SCRYPT_R = 8
PIN_SCRYPT_P = 1
PIN_SCRYPT_MIN_LOG2_N = 14
PIN_SCRYPT_MAX_LOG2_N = 16
PIN_SALT_BYTES = 16
LEGACY_HMAC = "hmac-sha256"  # token version 1: one unstretched HMAC
SCRYPT = "scrypt"


@dataclass(frozen=True)
class PinKdf:
    """How a seal turns its PIN into the sealed object's authValue (per-seal random ``salt``).

    ``scrypt`` (token version 2): scrypt(PIN, salt, N = 2^log2_n, r, p, 32 bytes). ``hmac-sha256``
    (token version 1: HMAC-SHA256(key = salt, message = PIN)) is parsed, so that ``list`` shows such a seal,
    but never derived: a header edit could downgrade a stretched seal to it.
    """

    salt: bytes
    algorithm: str = SCRYPT
    log2_n: int = PIN_SCRYPT_LOG2_N
    r: int = PIN_SCRYPT_R
    p: int = PIN_SCRYPT_P

    @classmethod
    def new(cls) -> PinKdf:
        import os

        return cls(os.urandom(PIN_SALT_BYTES), SCRYPT, PIN_SCRYPT_LOG2_N, PIN_SCRYPT_R, PIN_SCRYPT_P)

    def derive(self, pin: bytearray) -> Secret:
        if not pin:
            raise ValueError("empty PIN")  # callers refuse empty PINs before they get here
        from tpmseal.errors import TokenCorrupt, TokenUnsupported

        if self.algorithm == LEGACY_HMAC:
            # Not derived: anyone who can edit the header could turn a stretched seal into this one
            # (version 1, no pin_kdf) and make each PIN guess one HMAC again. The TPM never sees the PIN.
            raise TokenUnsupported(
                "this PIN seal uses the unstretched PIN format of token version 1, which tpmseal no longer opens",
                "re-enroll it: tpmseal enroll DEVICE --replace --tpm2-with-pin (the passphrase still opens the volume)",
            )
        n = 1 << self.log2_n
        try:
            out = hashlib.scrypt(
                bytes(pin), salt=self.salt, n=n, r=self.r, p=self.p, maxmem=256 * n * self.r + (1 << 20), dklen=32
            )
        except (MemoryError, ValueError):
            raise TokenCorrupt("the PIN's scrypt parameters need more memory than this system gives") from None
        return Secret.take(bytearray(out))


def pin_auth(pin: bytearray, kdf: PinKdf) -> Secret:
    """The object's authValue for a PIN under ``kdf``."""
    return kdf.derive(pin)


def _symmetric() -> Any:
    from tpm2_pytss import TPM2_ALG, TPMT_SYM_DEF

    sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    return sym


def seal(esapi: ESAPI, srk: Any, secret: Secret, policy: bytes, auth: Secret | None) -> SealedObject:
    """Create a KEYEDHASH object holding ``secret`` under the SRK; its only way out is ``policy``.

    The sensitive part goes to the TPM encrypted (salted HMAC session with command encryption).
    """
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_SE,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMA_OBJECT,
        TPMA_SESSION,
        TPMS_SENSITIVE_CREATE,
        TPMT_PUBLIC,
        TSS2_Exception,
    )

    if len(secret) > MAX_SEALED:
        raise ValueError("secret too large to seal")
    attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if auth is None:
        attrs |= TPMA_OBJECT.NODA  # no PIN: nothing to guess, keep out of dictionary-attack counting
    public = TPM2B_PUBLIC(
        TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs, authPolicy=policy)
    )
    public.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    sensitive = TPM2B_SENSITIVE_CREATE(
        TPMS_SENSITIVE_CREATE(userAuth=bytes(auth.buffer) if auth else b"", data=bytes(secret.buffer))
    )
    session = ESYS_TR.NONE
    try:
        session = esapi.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, _symmetric(), TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.DECRYPT, 0xFF)  # not continued: TPM flushes it
        private, public_out, _, _, _ = esapi.create(srk, sensitive, public, session1=session)
        session = ESYS_TR.NONE
    except TSS2_Exception as e:
        raise tpm_error(e, "sealing the key") from None
    finally:
        if session != ESYS_TR.NONE:
            with contextlib.suppress(TSS2_Exception):  # the TPM may be gone: keep the error that says so
                esapi.flush_context(session)
        sensitive.sensitive.data.buffer = bytes(len(secret))  # best effort: wipe the C copy
    return SealedObject(bytes(private.marshal()), bytes(public_out.marshal()))


def unseal(
    esapi: ESAPI,
    srk: Any,
    sealed: SealedObject,
    selection: PcrSelection,
    auth: Secret | None,
    assert_policy: Callable[[Any], None] | None = None,
) -> Secret:
    """Unseal under PolicyPCR over ``selection`` (+PolicyAuthValue with ``auth``); raises PolicyMismatch,
    PinRejected, WrongTpm, … ``assert_policy(session)``, when given, runs the policy assertions instead of
    the PolicyPCR (e.g. PolicyPCR + PolicyAuthorize of a signed policy); PolicyAuthValue still follows.

    ``srk`` must come from the TPM (``srk_from_tpm`` or CreatePrimary), not from a header: the session is
    salted to its public key. An empty ``auth`` is refused: a PIN seal is never tried without its PIN."""
    if auth is not None and not len(auth):
        raise ValueError("empty authValue")
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_RC,
        TPM2_SE,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPMA_SESSION,
        TPML_PCR_SELECTION,
        TSS2_Exception,
    )

    from tpmseal.errors import TokenCorrupt

    try:
        priv, used_priv = TPM2B_PRIVATE.unmarshal(sealed.private)
        pub, used_pub = TPM2B_PUBLIC.unmarshal(sealed.public)
    except (TSS2_Exception, ValueError) as e:
        raise TokenCorrupt(f"the sealed object cannot be decoded: {e}") from None
    if used_priv != len(sealed.private) or used_pub != len(sealed.public) or not priv.size or not pub.size:
        raise TokenCorrupt("the sealed object cannot be decoded: wrong length")
    obj = ESYS_TR.NONE
    session = ESYS_TR.NONE
    try:
        try:
            obj = esapi.load(srk, priv, pub)
        except TSS2_Exception as e:
            if e.error in (TPM2_RC.INTEGRITY, TPM2_RC.HANDLE, TPM2_RC.BINDING, TPM2_RC.SIZE, TPM2_RC.VALUE):
                raise WrongTpm("this TPM cannot load the sealed key (another TPM, or the TPM was cleared)") from None
            raise tpm_error(e, "loading the sealed key") from None
        session = esapi.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.POLICY, _symmetric(), TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT, 0xFF)
        if assert_policy is not None:
            assert_policy(session)
        elif selection.pcrs:
            pcrs, _ = TPML_PCR_SELECTION.unmarshal(marshal_pcr_selection(selection.bank, selection.indexes))
            esapi.policy_pcr(session, b"", pcrs)
        if auth is not None:
            esapi.policy_auth_value(session)
            esapi.tr_set_auth(obj, bytes(auth.buffer))
        try:
            data = esapi.unseal(obj, session1=session)
            session = ESYS_TR.NONE  # not continued: the TPM flushed it
        except TSS2_Exception as e:
            if e.error == TPM2_RC.POLICY_FAIL:
                raise PolicyMismatch("the TPM refused to unseal: the PCR values do not match the policy") from None
            if e.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH) and auth is None:
                # no PIN was involved: the session's HMAC did not verify (a parent or salt mismatch)
                raise WrongTpm("the TPM rejected the unseal session's authorization (no PIN is involved)") from None
            if e.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
                failed, maximum = lockout_status(esapi)
                left = max(maximum - failed, 0)
                raise PinRejected(
                    f"wrong PIN ({left} of {maximum} tries left before the TPM locks out)",
                    tries_left=left,
                    hint="wrong PINs are not retried; each one counts toward the TPM's lockout. If the PIN was "
                    "right, the token may have been altered (its PIN salt or parameters): check 'tpmseal list'",
                ) from None
            if e.error == TPM2_RC.LOCKOUT:
                raise TpmLockout("the TPM is in dictionary-attack lockout and refuses the PIN") from None
            raise tpm_error(e, "unsealing") from None
        out = Secret.take(bytearray(data.buffer))
        data.buffer = bytes(len(out))  # best effort: wipe the C copy
        return out
    except TSS2_Exception as e:
        raise tpm_error(e, "unsealing") from None
    finally:
        for handle in (session, obj):
            if handle != ESYS_TR.NONE:
                with contextlib.suppress(TSS2_Exception):
                    esapi.flush_context(handle)
