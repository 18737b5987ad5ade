# SPDX-License-Identifier: LGPL-2.1-or-later
"""Signed PCR policies (TPM2_PolicyAuthorize): seals that new boot states can be approved for, without the key.

The sealed object's authPolicy is PolicyAuthorize(name of the policy signing key, policyRef) (then
PolicyPCR over fixed PCRs, if any, then PolicyAuthValue with a PIN). It names no PCR value: the PCR
values live in *approved policies* — PolicyPCR digests signed by the policy key and stored in the
token. Approving the next boot state after an update needs only the private policy key, never the
volume key, which on the running system nothing can unseal (PCR 15 volume binding).

Unseal (11 TPM commands; +1 with a PIN, +1 with fixed PCRs): PCR_Read (pick the approved policy
whose values are current), LoadExternal (the public key, owner hierarchy: a NULL-hierarchy ticket is
useless), VerifySignature -> ticket, FlushContext, ReadPublic (the SRK as the TPM holds it), Load,
StartAuthSession (salted with that SRK), PolicyPCR, PolicyAuthorize, [PolicyPCR fixed], [PolicyAuthValue],
Unseal, FlushContext.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from dataclasses import replace as _with
from typing import TYPE_CHECKING, Any

from tpmseal.errors import PolicyMismatch, TokenCorrupt, TpmsealError, UsageError
from tpmseal.luks.tokens import Approval, NativeToken, Seal, SignedPolicy, now
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.tpm.policy import (
    POLICY_DIGEST_SIZE,
    TPM_CC_POLICY_AUTH_VALUE,
    TPM_CC_POLICY_PCR,
    extend,
    marshal_pcr_selection,
    policy_digest,
    tpm_name,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from tpm2_pytss import ESAPI

    from tpmseal.enroll import EnrollResult
    from tpmseal.luks.volume import Header, Volume
    from tpmseal.tpm.seal import PinKdf
    from tpmseal.unlock import PinSource
    from tpmseal.wipe import WipeSpec

log = logging.getLogger("tpmseal")

DEFAULT_KEY_PATH = "/etc/tpmseal/policy-key.pem"
TPM_CC_POLICY_AUTHORIZE = 0x0000016A
POLICY_REF_BYTES = 16
CURRENT = "current"
NEXT_BOOT = "next-boot"


class PolicyKeyError(TpmsealError):
    default_hint = (
        f"the policy signing key ({DEFAULT_KEY_PATH}) is created by 'tpmseal enroll --tpm2-public-key-pcrs=…'; "
        "it must be the key the volume was enrolled with"
    )


# --------------------------------------------------------------------------- the policy key


@dataclass(frozen=True)
class PolicyKey:
    private: EllipticCurvePrivateKey
    public: bytes  # TPM2B_PUBLIC, marshaled
    name: bytes  # TPM name: nameAlg (sha256) || SHA-256(TPMT_PUBLIC)

    def sign(self, approved: bytes, policy_ref: bytes) -> bytes:
        return sign_approval(self.private, approved, policy_ref)


def tpm_public(x: int, y: int) -> bytes:
    """TPM2B_PUBLIC of an ECC P-256 verification key (as LoadExternal takes it), marshaled by hand so the
    name is a pure function of the key: type ECC, nameAlg SHA-256, sign|userWithAuth, no scheme, no KDF."""
    attrs = 0x00040000 | 0x00000040  # TPMA_OBJECT_SIGN_ENCRYPT | USERWITHAUTH
    area = struct.pack(">HHIH", 0x0023, 0x000B, attrs, 0)  # ECC, SHA256, attributes, empty authPolicy
    area += struct.pack(">HHHH", 0x0010, 0x0010, 0x0003, 0x0010)  # sym NULL, scheme NULL, P-256, kdf NULL
    area += struct.pack(">H", 32) + x.to_bytes(32, "big") + struct.pack(">H", 32) + y.to_bytes(32, "big")
    return struct.pack(">H", len(area)) + area


def key_name(public: bytes) -> bytes:
    """TPM name of a marshaled TPM2B_PUBLIC whose nameAlg is SHA-256."""
    return tpm_name(public)


def policy_key_from_private(private: EllipticCurvePrivateKey) -> PolicyKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(private.curve, ec.SECP256R1):
        raise PolicyKeyError(f"the policy key must be ECC P-256, not {private.curve.name}")
    nums = private.public_key().public_numbers()
    public = tpm_public(nums.x, nums.y)
    return PolicyKey(private, public, key_name(public))


def _check_key_owner(st: os.stat_result, what: str) -> None:
    """The policy key and its directory belong to root (or whoever runs tpmseal), and only they may change
    them; the key file, in addition, is readable by no one else."""
    if st.st_uid not in (0, os.geteuid()):
        raise PolicyKeyError(f"{what} belongs to uid {st.st_uid}; the policy key must be root's (or yours)")
    if st.st_mode & 0o022:
        raise PolicyKeyError(f"{what} is writable by group or others (mode {st.st_mode & 0o7777:o})")


def _check_key_dir(directory: str) -> None:
    import stat

    try:
        st = os.lstat(directory)
    except OSError as e:
        raise PolicyKeyError(f"cannot use {directory} for the policy signing key: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PolicyKeyError(f"{directory} (the policy key's directory) is not a directory (a symbolic link?)")
    _check_key_owner(st, directory)


def load_policy_key(path: str = DEFAULT_KEY_PATH) -> PolicyKey:
    """Read the policy key; refuse a symbolic link, a file not owned by root or the caller, or one that group
    or others could read or write (with the key, anyone can approve a boot state for the volume)."""
    import errno
    import stat

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PolicyKeyError(f"no policy signing key at {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PolicyKeyError(f"{path} is a symbolic link; the policy key must be a regular file") from None
        raise PolicyKeyError(f"cannot read the policy signing key {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PolicyKeyError(f"{path} is not a regular file")
        _check_key_owner(st, path)
        if st.st_mode & 0o077:
            raise PolicyKeyError(
                f"{path} is readable or writable by group or others (mode {st.st_mode & 0o7777:o})",
                f"make it private: chmod 600 {path}, then consider the key exposed and rotate it",
            )
        data = f.read()
    _check_key_dir(os.path.dirname(os.path.abspath(path)))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise PolicyKeyError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PolicyKeyError(f"{path} is not an ECC key")
    return policy_key_from_private(key)


def ensure_policy_key(path: str = DEFAULT_KEY_PATH) -> tuple[PolicyKey, bool]:
    """The policy key at ``path``; created (ECC P-256, PEM, mode 0400, directory 0700) when absent.

    Returns (key, created). Creation is O_EXCL|O_NOFOLLOW: two enrollments at once cannot overwrite each
    other's key, and a planted symbolic link (even a dangling one) is never written through.
    """
    if os.path.lexists(path):
        return load_policy_key(path), False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _check_key_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    except FileExistsError:
        return load_policy_key(path), False
    try:
        os.fchmod(fd, 0o400)  # whatever the umask
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("created the policy signing key %s", path)
    return policy_key_from_private(key), True


# --------------------------------------------------------------------------- digests and signatures


def authorize_policy(name: bytes, policy_ref: bytes, fixed: PcrSelection, with_pin: bool) -> bytes:
    """authPolicy of the sealed object: PolicyAuthorize(name, ref) [PolicyPCR(fixed)] [PolicyAuthValue]."""
    digest = extend(bytes(POLICY_DIGEST_SIZE), struct.pack(">I", TPM_CC_POLICY_AUTHORIZE), name)
    digest = extend(digest, policy_ref)
    if fixed.pcrs:
        from tpmseal.tpm.policy import pcr_digest

        digest = extend(
            digest,
            struct.pack(">I", TPM_CC_POLICY_PCR),
            marshal_pcr_selection(fixed.bank, fixed.indexes),
            pcr_digest(fixed),
        )
    if with_pin:
        digest = extend(digest, struct.pack(">I", TPM_CC_POLICY_AUTH_VALUE))
    return digest


def approval_digest(approved: bytes, policy_ref: bytes) -> bytes:
    """aHash: what the policy key signs and VerifySignature checks (key nameAlg SHA-256)."""
    return hashlib.sha256(approved + policy_ref).digest()


def sign_approval(private: EllipticCurvePrivateKey, approved: bytes, policy_ref: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    return private.sign(approval_digest(approved, policy_ref), ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def verify_approval_offline(public: bytes, approval: Approval, policy_ref: bytes) -> bool:
    """Check a signature in software against the token's public key (no TPM)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    x, y = _xy(public)
    key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    try:
        key.verify(
            approval.signature, approval_digest(approval.policy, policy_ref), ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )
    except InvalidSignature:
        return False
    return True


def _xy(public: bytes) -> tuple[int, int]:
    # size, type, nameAlg, attributes, empty authPolicy (12), sym/scheme/curve/kdf (8), x, y (2 + 32 each)
    if len(public) != 88 or public[2:4] != b"\x00\x23" or public[16:18] != b"\x00\x03":
        raise TokenCorrupt("the token's policy public key is not an ECC P-256 key in tpmseal's layout")
    return int.from_bytes(public[22:54], "big"), int.from_bytes(public[56:88], "big")


def make_approval(key: PolicyKey, selection: PcrSelection, policy_ref: bytes, label: str) -> Approval:
    if any(p.value is None for p in selection.pcrs):
        raise UsageError("an approved policy needs a value for every PCR")
    approved = policy_digest(selection, False)
    return Approval(label, now(), selection, approved, key.sign(approved, policy_ref))


# --------------------------------------------------------------------------- TPM side


def der_signature(der: bytes) -> tuple[int, int]:
    """(r, s) of a DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs). Parsed here, not with cryptography,
    so the unseal path in the initramfs needs no more of cryptography than tpm2-pytss imports."""

    def item(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
        if pos + 2 > len(data) or data[pos] != tag:
            raise ValueError("unexpected tag")
        n = data[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            if k not in (1, 2) or pos + k > len(data):
                raise ValueError("bad length")
            n = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        if pos + n > len(data):
            raise ValueError("truncated")
        return data[pos : pos + n], pos + n

    try:
        body, end = item(der, 0, 0x30)
        if end != len(der):
            raise ValueError("trailing bytes")
        r, pos = item(body, 0, 0x02)
        s, pos = item(body, pos, 0x02)
        if pos != len(body) or not r or not s or r[0] & 0x80 or s[0] & 0x80:
            raise ValueError("not two positive integers")
    except ValueError:
        raise TokenCorrupt("an approved policy's signature is not a DER ECDSA signature") from None
    ri, si = int.from_bytes(r, "big"), int.from_bytes(s, "big")
    if not (0 < ri < 1 << 256 and 0 < si < 1 << 256):
        raise TokenCorrupt("an approved policy's signature is out of range for P-256")
    return ri, si


def _tpm_signature(der: bytes) -> Any:
    from tpm2_pytss import TPM2_ALG, TPMS_SIGNATURE_ECC, TPMT_SIGNATURE, TPMU_SIGNATURE

    r, s = der_signature(der)
    ecc = TPMS_SIGNATURE_ECC(hash=TPM2_ALG.SHA256, signatureR=r.to_bytes(32, "big"), signatureS=s.to_bytes(32, "big"))
    return TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA, signature=TPMU_SIGNATURE(ecdsa=ecc))


def verify_ticket(esapi: ESAPI, signed: SignedPolicy, approval: Approval) -> Any:
    """LoadExternal + VerifySignature + FlushContext: the TPM's ticket that the key approved this policy.

    Raises PolicyMismatch when the TPM rejects the signature or the key is not the one the token names.
    """
    from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TSS2_Exception

    from tpmseal.tpm.device import tpm_error

    try:
        pub, used = TPM2B_PUBLIC.unmarshal(signed.public_key)
    except (TSS2_Exception, ValueError):
        raise TokenCorrupt("the token's policy public key cannot be decoded") from None
    if used != len(signed.public_key) or key_name(signed.public_key) != signed.key_name:
        raise TokenCorrupt("the token's policy public key does not match its key_name")
    ext = ESYS_TR.NONE
    try:
        ext = esapi.load_external(pub, None, ESYS_TR.RH_OWNER)
        if bytes(esapi.tr_get_name(ext)) != signed.key_name:
            raise TokenCorrupt("the TPM computes another name for the token's policy public key")
        try:
            return esapi.verify_signature(
                ext, approval_digest(approval.policy, signed.policy_ref), _tpm_signature(approval.signature)
            )
        except TSS2_Exception as e:
            raise PolicyMismatch(
                f"the TPM rejects the signature of the approved policy '{approval.label}' ({e})",
                "the policy was not signed by this volume's policy key; run 'tpmseal reseal' again",
            ) from None
    except TSS2_Exception as e:
        raise tpm_error(e, "loading the policy public key") from None
    finally:
        if ext != ESYS_TR.NONE:
            with contextlib.suppress(TSS2_Exception):
                esapi.flush_context(ext)


def read_pcr_values(esapi: ESAPI, bank: str, indexes: set[int]) -> dict[int, bytes]:
    from tpmseal.unlock import read_pcrs

    if not indexes:
        return {}
    return read_pcrs(esapi, PcrSelection(bank, tuple(Pcr(i) for i in sorted(indexes))))


def matching(
    approvals: tuple[Approval, ...], current: dict[int, bytes], ignore: frozenset[int] = frozenset()
) -> list[Approval]:
    return [a for a in approvals if all(p.index in ignore or current.get(p.index) == p.value for p in a.pcrs.pcrs)]


def signed_indexes(seal: Seal) -> set[int]:
    assert seal.signed is not None
    return {i for a in seal.signed.approved for i in a.pcrs.indexes} | set(seal.signed.fixed.indexes)


def unseal_signed(
    esapi: ESAPI, srk: Any, seal: Seal, approval: Approval, auth: Secret | None, ticket: Any = None
) -> Secret:
    """The unseal proper, for one approved policy whose PCR values are current: the TPM checks the
    approval's signature (a ticket, unless given), then the session asserts PolicyPCR and PolicyAuthorize."""
    from tpm2_pytss import TPM2_RC, TPML_PCR_SELECTION, TSS2_Exception

    from tpmseal.tpm.seal import unseal

    signed = seal.signed
    assert signed is not None
    if ticket is None:
        ticket = verify_ticket(esapi, signed, approval)
    sel = approval.pcrs

    def assert_policy(session: Any) -> None:
        try:
            pcrs, _ = TPML_PCR_SELECTION.unmarshal(marshal_pcr_selection(sel.bank, sel.indexes))
            esapi.policy_pcr(session, b"", pcrs)
            esapi.policy_authorize(session, approval.policy, signed.key_name, ticket, signed.policy_ref)
            if signed.fixed.pcrs:
                fixed, _ = TPML_PCR_SELECTION.unmarshal(marshal_pcr_selection(sel.bank, signed.fixed.indexes))
                esapi.policy_pcr(session, b"", fixed)
        except TSS2_Exception as e:
            if e.error in (TPM2_RC.VALUE, TPM2_RC.POLICY_FAIL):
                raise PolicyMismatch("the TPM refused the approved policy: the PCR values changed meanwhile") from None
            raise

    return unseal(esapi, srk, seal.sealed, sel, auth, assert_policy)


def unseal_signed_token(esapi: ESAPI, token: NativeToken, pin: PinSource | None = None) -> Secret:
    """The raw key of a token with ``authorize`` seals: reads the PCRs once, picks the approved policy
    (of any authorize seal) whose values are all current and whose signature the TPM accepts, and
    unseals with it. An approval the TPM rejects (forged, copied) is passed over, so one placed in front
    of the real one cannot stop the unlock."""
    from tpmseal.tpm.srk import srk_from_tpm
    from tpmseal.unlock import seal_auth

    seals = [s for s in token.seals if s.signed is not None]
    if not seals:
        raise TokenCorrupt("token has no authorize seals")
    bank = seals[0].pcrs.bank
    current = read_pcr_values(esapi, bank, set().union(*(signed_indexes(s) for s in seals)))
    candidates: list[tuple[Seal, Approval]] = []
    for s in seals:
        assert s.signed is not None
        fixed_ok = all(current.get(p.index) == p.value for p in s.signed.fixed.pcrs)
        found = matching(s.signed.approved, current) if fixed_ok and s.pcrs.bank == bank else []
        candidates += [(s, a) for a in found]
    if not candidates:
        raise mismatch(seals[0], current)
    chosen: tuple[Seal, Approval, Any] | None = None
    rejected: PolicyMismatch | None = None
    for s, a in candidates:
        assert s.signed is not None
        try:
            chosen = (s, a, verify_ticket(esapi, s.signed, a))
            break
        except PolicyMismatch as e:
            log.debug("approved policy '%s' of seal '%s' passed over: %s", a.label, s.label, e)
            rejected = rejected or e
    if chosen is None:
        assert rejected is not None
        raise rejected
    seal, approval, ticket = chosen
    log.debug("using approved policy '%s' of seal '%s'", approval.label, seal.label)
    srk = srk_from_tpm(esapi, token.srk)  # the TPM's key, checked, before any PIN is asked
    auth = None
    try:
        auth = seal_auth(seal, pin)
        return unseal_signed(esapi, srk, seal, approval, auth, ticket)
    finally:
        if auth is not None:
            auth.close()
        esapi.tr_close(srk)


def mismatch(seal: Seal, current: dict[int, bytes]) -> PolicyMismatch:
    from tpmseal.boot.measure import VOLUME_PCR, volume_binding_hint

    assert seal.signed is not None
    parts = []
    changed_sets = []
    for a in seal.signed.approved:
        changed = [p.index for p in (*a.pcrs.pcrs, *seal.signed.fixed.pcrs) if current.get(p.index) != p.value]
        changed_sets.append(changed)
        parts.append(f"'{a.label}': PCR(s) {', '.join(map(str, changed))}")
    msg = "no approved policy matches the current PCR values; differ from " + "; ".join(parts)
    if changed_sets and all(c == [VOLUME_PCR] for c in changed_sets):
        return PolicyMismatch(msg + " (volume binding: the volumes of this boot were already measured)",
                              volume_binding_hint())  # fmt: skip
    return PolicyMismatch(
        msg,
        "the boot state was not approved: unlock with a passphrase, then approve it with "
        "'tpmseal reseal DEVICE --current' (or before a reboot with 'tpmseal reseal DEVICE --next-boot …')",
    )


# --------------------------------------------------------------------------- enrollment


def enroll_signed(
    volume: Volume,
    unlock_key: Secret,
    tpm_device: str,
    signed_pcrs: PcrSelection,
    fixed_selection: PcrSelection | None = None,
    pin: Secret | None = None,
    *,
    key_path: str = DEFAULT_KEY_PATH,
    replace: bool = False,
    wipe_spec: WipeSpec | None = None,
    force: bool = False,
    volume_binding: bool = True,
    header: Header | None = None,
) -> EnrollResult:
    """Seal a fresh key under PolicyAuthorize(policy key) and approve the current boot state.

    ``signed_pcrs`` are the PCRs of the approved policies (``--tpm2-public-key-pcrs``); PCRs without a
    value take the current one (``9:sha256=HEX`` approves a literal, e.g. predicted, value). PCR 15 =
    zeros joins them unless ``volume_binding`` is off. ``fixed_selection`` (``--tpm2-pcrs``, may be
    empty) is bound directly. The policy key at ``key_path`` is created once (0400) when absent.
    Crash-safe like enroll_tpm: marker, keyslot, token in place, proof (an unseal when the approved
    state is the current one; always a signature check by the TPM and a key test against the keyslot).
    """
    from tpmseal.boot.measure import bind_volume
    from tpmseal.enroll import enroll_native
    from tpmseal.tpm.seal import seal
    from tpmseal.unlock import read_pcrs

    if not signed_pcrs.pcrs:
        raise UsageError("--tpm2-public-key-pcrs needs at least one PCR")
    fixed = fixed_selection or PcrSelection(signed_pcrs.bank, ())
    if fixed.pcrs and fixed.bank != signed_pcrs.bank:
        raise UsageError("signed and fixed PCRs must use the same bank")
    if set(fixed.indexes) & set(signed_pcrs.indexes):
        raise UsageError("a PCR cannot be both signed (--tpm2-public-key-pcrs) and fixed (--tpm2-pcrs)")
    from tpmseal.update.description import check_pcr_choice, sign_description

    if volume_binding:
        signed_pcrs = bind_volume(signed_pcrs)
    check_pcr_choice(signed_pcrs.indexes, fixed.indexes)
    key, _created = ensure_policy_key(key_path)
    policy_ref = os.urandom(POLICY_REF_BYTES)
    wanted = PcrSelection(signed_pcrs.bank, tuple(sorted((*signed_pcrs.pcrs, *fixed.pcrs), key=lambda p: p.index)))

    def make_seal(esapi: ESAPI, srk: Any, secret: Secret, auth: Secret | None, kdf: PinKdf | None) -> tuple[Seal, bool]:
        current = read_pcrs(esapi, wanted)
        approved_sel = signed_pcrs.with_values(current)
        fixed_full = fixed.with_values(current)
        is_current = all(current.get(p.index) == p.value for p in (*approved_sel.pcrs, *fixed_full.pcrs))
        policy = authorize_policy(key.name, policy_ref, fixed_full, pin is not None)
        approval = make_approval(key, approved_sel, policy_ref, CURRENT)
        signed = SignedPolicy(key.public, key.name, policy_ref, fixed_full, (approval,))
        verify_ticket(esapi, signed, approval)  # the TPM accepts the key and the signature
        merged = PcrSelection(approved_sel.bank, tuple(sorted((*approved_sel.pcrs, *fixed_full.pcrs),
                                                              key=lambda p: p.index)))  # fmt: skip
        sealed = seal(esapi, srk, secret, policy, auth)
        made = Seal("enrolled", merged, policy, pin is not None, kdf, sealed, signed)
        # which PCRs every approval must cover is decided now, and signed: reseal trusts only this
        description = sign_description(key, made, approved_sel.indexes)
        return _with(made, signed=_with(signed, description=description)), is_current

    return enroll_native(volume, unlock_key, tpm_device, make_seal, pin, replace, wipe_spec, force, header)
