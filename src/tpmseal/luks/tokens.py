# SPDX-License-Identifier: LGPL-2.1-or-later
"""Token formats in the LUKS2 header. The native one, ``tpmseal-tpm2``, is specified in
docs/token-format.md; this parser rejects anything it does not understand.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.strict import Fields
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import (
    LEGACY_HMAC,
    PIN_SCRYPT_MAX_LOG2_N,
    SCRYPT,
    PinKdf,
    SealedObject,
)
from tpmseal.tpm.srk import SrkRef

NATIVE_TYPE = "tpmseal-tpm2"
PENDING_TYPE = "tpmseal-pending"  # marks an enrollment in progress (see enroll.py)
RECOVERY_TYPE = "systemd-recovery"  # marker for a recovery-key keyslot, shared with systemd-cryptenroll
SYSTEMD_TPM2_TYPE = "systemd-tpm2"
CLEVIS_TYPE = "clevis"
TOKEN_VERSION = 2  # the newest version this tpmseal reads; it writes 1 when a token has no PIN seal
TOKEN_VERSIONS = (1, 2)
PENDING_VERSION = 1  # the tpmseal-pending marker has its own version

TOP_KEYS = {"type", "keyslots", "version", "created", "luks_uuid", "srk", "seals"}
SRK_KEYS = {"handle", "name", "esys_tr"}
SEAL_KEYS = {"kind", "label", "pcr_bank", "pcrs", "policy_digest", "pin", "pin_salt", "private", "public"}
PIN_KDF_KEY = "pin_kdf"  # version 2: how the PIN is stretched
PIN_KDF_KEYS = {"algorithm", "log2_n", "r", "p"}
PCR_KEYS = {"index", "value"}
SEAL_KINDS = {"pcr", "authorize"}
# kind "authorize" (signed policies, see docs/token-format.md and tpmseal/update/signed.py)
AUTHORIZE_KEYS = {
    "kind", "label", "pcr_bank", "pcrs", "public_key", "key_name", "policy_ref", "policy_digest",
    "pin", "pin_salt", "private", "public", "approved", "description",
}  # fmt: skip
APPROVAL_KEYS = {"label", "created", "pcrs", "policy", "signature"}
DESCRIPTION_KEYS = {"version", "signed_pcrs", "signature"}
DESCRIPTION_VERSION = 1  # of an authorize seal's "description" (see tpmseal/update/description.py)


@dataclass(frozen=True)
class Approval:
    """One signed policy of an ``authorize`` seal: PolicyPCR over ``pcrs``, approved by the policy key."""

    label: str  # current, next-boot, …
    created: str
    pcrs: PcrSelection  # every PCR has its expected value
    policy: bytes  # the approved policy: PolicyPCR digest of ``pcrs`` (from a zero digest)
    signature: bytes  # ECDSA P-256 (DER) over SHA-256(policy || policy_ref)


@dataclass(frozen=True)
class Description:
    """What an ``authorize`` seal's approvals must cover, signed by the policy key at enrollment (the
    signed bytes are rebuilt from this and the seal's other fields: tpmseal/update/description.py)."""

    version: int
    signed_pcrs: tuple[int, ...]  # the PCR indexes every approval binds (PCR 15 with volume binding)
    signature: bytes  # ECDSA P-256 (DER) over SHA-256 of the canonical seal description


@dataclass(frozen=True)
class SignedPolicy:
    """What an ``authorize`` seal adds: the key its policies are signed with, and the signed policies."""

    public_key: bytes  # TPM2B_PUBLIC of the ECC P-256 signing key, marshaled (for LoadExternal)
    key_name: bytes  # its TPM name; the sealed object's authPolicy names it
    policy_ref: bytes
    fixed: PcrSelection  # PCRs bound directly (PolicyPCR after PolicyAuthorize); usually none
    approved: tuple[Approval, ...]
    description: Description | None = None  # None: enrolled before descriptions; reseal refuses it


@dataclass(frozen=True)
class Seal:
    """One sealed copy of the volume key, openable under one policy."""

    label: str
    pcrs: PcrSelection  # every PCR has its expected value (authorize: fixed + the first approval's)
    policy_digest: bytes
    pin: bool
    pin_kdf: PinKdf | None  # how the PIN becomes the authValue (salt included); None without a PIN
    sealed: SealedObject
    signed: SignedPolicy | None = None  # kind "authorize"; None = kind "pcr"


@dataclass(frozen=True)
class NativeToken:
    keyslots: tuple[int, ...]
    created: str
    srk: SrkRef
    seals: tuple[Seal, ...]
    luks_uuid: str | None = None

    @property
    def pin(self) -> bool:
        return any(s.pin for s in self.seals)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fail(where: str, what: str) -> TokenCorrupt:
    return TokenCorrupt(f"{NATIVE_TYPE} token: {where}: {what}")


_fields = Fields(_fail)
_obj = _fields.obj
_str = _fields.text
_int = _fields.integer
_b64 = _fields.b64
_hex = _fields.hex


def is_number(s: Any) -> TypeGuard[str]:
    """A keyslot number as LUKS2 JSON writes it: ASCII digits (``str.isdigit`` also takes '²', which
    ``int()`` refuses), and short enough for ``int()`` (which refuses more than 4300 digits)."""
    return isinstance(s, str) and s.isascii() and s.isdigit() and len(s) <= 9


def _keyslots(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(is_number(s) for s in v):
        raise _fail("keyslots", "expected a list of keyslot numbers as strings")
    return tuple(int(s) for s in v)


def _pcr_list(v: Any, where: str, bank: str) -> PcrSelection:
    if not isinstance(v, list):
        raise _fail(where, "expected a list")
    pcrs: list[Pcr] = []
    for j, p in enumerate(v):
        pw = f"{where}[{j}]"
        pd = _obj(p, pw, PCR_KEYS, PCR_KEYS)
        index = _int(pd["index"], f"{pw}.index")
        if not 0 <= index < PCR_COUNT or (pcrs and index <= pcrs[-1].index):
            raise _fail(f"{pw}.index", "PCR indexes must be 0-23, ascending, each once")
        pcrs.append(Pcr(index, _hex(pd["value"], f"{pw}.value", BANKS[bank][0])))
    return PcrSelection(bank, tuple(pcrs))


def _approval(v: Any, where: str, bank: str) -> Approval:
    from tpmseal.tpm.policy import policy_digest

    d = _obj(v, where, APPROVAL_KEYS, APPROVAL_KEYS)
    pcrs = _pcr_list(d["pcrs"], f"{where}.pcrs", bank)
    if not pcrs.pcrs:
        raise _fail(f"{where}.pcrs", "an approved policy binds at least one PCR")
    policy = _hex(d["policy"], f"{where}.policy", 32)
    if policy != policy_digest(pcrs, False):
        raise _fail(f"{where}.policy", "does not match the PolicyPCR digest of its PCR values")
    return Approval(
        label=_str(d["label"], f"{where}.label"),
        created=_str(d["created"], f"{where}.created"),
        pcrs=pcrs,
        policy=policy,
        signature=_b64(d["signature"], f"{where}.signature"),
    )


def _description(v: Any, where: str) -> Description:
    d = _obj(v, where, DESCRIPTION_KEYS, DESCRIPTION_KEYS)
    version = _int(d["version"], f"{where}.version")
    if version != DESCRIPTION_VERSION:
        raise TokenUnsupported(
            f"{NATIVE_TYPE} token: {where}: seal description version {version} is not supported "
            f"(this tpmseal reads version {DESCRIPTION_VERSION})"
        )
    pcrs = d["signed_pcrs"]
    if not isinstance(pcrs, list) or not pcrs:
        raise _fail(f"{where}.signed_pcrs", "expected a non-empty list of PCR indexes")
    indexes = tuple(_int(i, f"{where}.signed_pcrs[{j}]") for j, i in enumerate(pcrs))
    if any(not 0 <= i < PCR_COUNT for i in indexes) or list(indexes) != sorted(set(indexes)):
        raise _fail(f"{where}.signed_pcrs", "PCR indexes must be 0-23, ascending, each once")
    return Description(version, indexes, _b64(d["signature"], f"{where}.signature"))


def _merge(a: PcrSelection, b: PcrSelection) -> PcrSelection:
    merged = {p.index: p for p in (*a.pcrs, *b.pcrs)}
    return PcrSelection(a.bank, tuple(merged[i] for i in sorted(merged)))


def _pin_kdf(v: Any, where: str, salt: bytes) -> PinKdf:
    from tpmseal.tpm import seal as seal_mod

    d = _obj(v, where, PIN_KDF_KEYS, PIN_KDF_KEYS)
    algorithm = _str(d["algorithm"], f"{where}.algorithm")
    if algorithm != SCRYPT:
        raise TokenUnsupported(f"{NATIVE_TYPE} token: {where}: PIN KDF '{algorithm}' is not supported")
    log2_n, r, p = (_int(d[k], f"{where}.{k}") for k in ("log2_n", "r", "p"))
    # the lower bound is read at call time: a header edit must not make a PIN cheaper to guess
    if not seal_mod.PIN_SCRYPT_MIN_LOG2_N <= log2_n <= PIN_SCRYPT_MAX_LOG2_N:
        raise _fail(
            f"{where}.log2_n", f"must be {seal_mod.PIN_SCRYPT_MIN_LOG2_N}-{PIN_SCRYPT_MAX_LOG2_N} (scrypt N = 2^log2_n)"
        )
    # neither cheaper than the default (r 8, p 1) nor a memory or time bomb: at most 64 MiB (128*N*r) and
    # 8 times the default work, which a 1 GiB initramfs VM still derives
    if not 8 <= r <= 16 or not 1 <= p <= 4 or 128 * (1 << log2_n) * r > 64 << 20 or (1 << log2_n) * r * p > 1 << 20:
        raise _fail(where, "scrypt r must be 8-16, p 1-4, 128*N*r at most 64 MiB and N*r*p at most 2^20")
    return PinKdf(salt, SCRYPT, log2_n, r, p)


def _seal(v: Any, i: int, version: int) -> Seal:
    where = f"seals[{i}]"
    kind = v.get("kind") if isinstance(v, dict) else None
    if isinstance(kind, str) and kind not in SEAL_KINDS:
        raise TokenUnsupported(f"{NATIVE_TYPE} token: {where}: policy kind '{kind}' is not supported")
    authorize = kind == "authorize"
    keys = AUTHORIZE_KEYS if authorize else SEAL_KEYS
    if version >= 2:
        keys = keys | {PIN_KDF_KEY}
    d = _obj(v, where, keys, keys - {"label", "pin_salt", "description", PIN_KDF_KEY})
    bank = _str(d["pcr_bank"], f"{where}.pcr_bank")
    if bank not in BANKS:
        raise TokenUnsupported(f"{NATIVE_TYPE} token: {where}: PCR bank '{bank}' is not supported")
    selection = _pcr_list(d["pcrs"], f"{where}.pcrs", bank)
    signed: SignedPolicy | None = None
    if authorize:
        approved = d["approved"]
        if not isinstance(approved, list) or not approved:
            raise _fail(f"{where}.approved", "expected a non-empty list")
        signed = SignedPolicy(
            public_key=_b64(d["public_key"], f"{where}.public_key"),
            key_name=_hex(d["key_name"], f"{where}.key_name", 34),
            policy_ref=_hex(d["policy_ref"], f"{where}.policy_ref"),
            fixed=selection,
            approved=tuple(_approval(a, f"{where}.approved[{j}]", bank) for j, a in enumerate(approved)),
            description=_description(d["description"], f"{where}.description") if "description" in d else None,
        )
        if len(signed.policy_ref) > 32:
            raise _fail(f"{where}.policy_ref", "at most 32 bytes")
        selection = _merge(signed.approved[0].pcrs, selection)
    pin = d["pin"]
    if not isinstance(pin, bool):
        raise _fail(f"{where}.pin", "expected true or false")
    salt = d.get("pin_salt")
    pin_salt = _b64(salt, f"{where}.pin_salt") if salt is not None else None
    if pin and not pin_salt:
        raise _fail(f"{where}.pin_salt", "a PIN-protected seal needs a salt")
    if not pin and (pin_salt is not None or d.get(PIN_KDF_KEY) is not None):
        raise _fail(f"{where}.pin_salt", "a seal without a PIN has no salt and no KDF")
    kdf: PinKdf | None = None
    if pin and pin_salt:
        if version >= 2:
            if d.get(PIN_KDF_KEY) is None:
                raise _fail(f"{where}.{PIN_KDF_KEY}", "a PIN-protected seal of a version 2 token needs a KDF")
            kdf = _pin_kdf(d[PIN_KDF_KEY], f"{where}.{PIN_KDF_KEY}", pin_salt)
        else:
            kdf = PinKdf(pin_salt, LEGACY_HMAC, 0, 0, 0)
    return Seal(
        label=_str(d.get("label", ""), f"{where}.label"),
        pcrs=selection,
        policy_digest=_hex(d["policy_digest"], f"{where}.policy_digest", 32),
        pin=pin,
        pin_kdf=kdf,
        sealed=SealedObject(_b64(d["private"], f"{where}.private"), _b64(d["public"], f"{where}.public")),
        signed=signed,
    )


def parse_native(data: Any) -> NativeToken:
    """Parse a ``tpmseal-tpm2`` token's JSON object; raise TokenCorrupt / TokenUnsupported."""
    if not isinstance(data, dict):
        raise _fail("token", "expected a JSON object")
    if data.get("type") != NATIVE_TYPE:
        raise _fail("type", f"expected '{NATIVE_TYPE}'")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version not in TOKEN_VERSIONS:
        raise TokenUnsupported(
            f"{NATIVE_TYPE} token version {version} is not supported (this tpmseal reads versions 1 and 2)"
        )
    d = _obj(data, "token", TOP_KEYS, TOP_KEYS - {"luks_uuid"})
    version = _int(d["version"], "version")
    srk = _obj(d["srk"], "srk", SRK_KEYS, SRK_KEYS)
    handle_text = _str(srk["handle"], "srk.handle")
    if not re.fullmatch(r"0x81[0-9a-f]{6}", handle_text):
        raise _fail("srk.handle", "expected a persistent handle like 0x81000001")
    seals = d["seals"]
    if not isinstance(seals, list) or not seals:
        raise _fail("seals", "expected a non-empty list")
    uuid = d.get("luks_uuid")
    return NativeToken(
        keyslots=_keyslots(d["keyslots"]),
        created=_str(d["created"], "created"),
        srk=SrkRef(int(handle_text, 16), _hex(srk["name"], "srk.name"), _b64(srk["esys_tr"], "srk.esys_tr")),
        seals=tuple(_seal(s, i, version) for i, s in enumerate(seals)),
        luks_uuid=_str(uuid, "luks_uuid") if uuid is not None else None,
    )


def token_version(token: NativeToken) -> int:
    """The lowest version that expresses ``token``: 2 when a seal stretches its PIN (``pin_kdf``), else 1.

    A version 1 PIN seal (HMAC) and a version 2 one (scrypt) cannot share a token.
    """
    kinds = {s.pin_kdf.algorithm for s in token.seals if s.pin_kdf is not None}
    if len(kinds) > 1:
        raise ValueError("a token cannot mix version 1 and version 2 PIN seals")
    return 2 if SCRYPT in kinds else 1


def render_native(token: NativeToken) -> dict[str, Any]:
    """The JSON object of a native token (the inverse of parse_native)."""
    out: dict[str, Any] = {
        "type": NATIVE_TYPE,
        "keyslots": [str(k) for k in token.keyslots],
        "version": token_version(token),
        "created": token.created,
        "srk": {
            "handle": f"{token.srk.handle:#010x}",
            "name": token.srk.name.hex(),
            "esys_tr": base64.b64encode(token.srk.serialized).decode(),
        },
        "seals": [_render_seal(s) for s in token.seals],
    }
    if token.luks_uuid is not None:
        out["luks_uuid"] = token.luks_uuid
    return out


def _render_pcrs(selection: PcrSelection) -> list[dict[str, Any]]:
    return [{"index": p.index, "value": (p.value or b"").hex()} for p in selection.pcrs]


def _render_seal(s: Seal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "pcr" if s.signed is None else "authorize",
        "label": s.label,
        "pcr_bank": s.pcrs.bank,
        "pcrs": _render_pcrs(s.pcrs if s.signed is None else s.signed.fixed),
        "policy_digest": s.policy_digest.hex(),
        "pin": s.pin,
        "pin_salt": base64.b64encode(s.pin_kdf.salt).decode() if s.pin_kdf else None,
        "private": base64.b64encode(s.sealed.private).decode(),
        "public": base64.b64encode(s.sealed.public).decode(),
    }
    if s.pin_kdf is not None and s.pin_kdf.algorithm == SCRYPT:
        k = s.pin_kdf
        out[PIN_KDF_KEY] = {"algorithm": SCRYPT, "log2_n": k.log2_n, "r": k.r, "p": k.p}
    if s.signed is not None:
        out["public_key"] = base64.b64encode(s.signed.public_key).decode()
        out["key_name"] = s.signed.key_name.hex()
        out["policy_ref"] = s.signed.policy_ref.hex()
        out["approved"] = [
            {
                "label": a.label,
                "created": a.created,
                "pcrs": _render_pcrs(a.pcrs),
                "policy": a.policy.hex(),
                "signature": base64.b64encode(a.signature).decode(),
            }
            for a in s.signed.approved
        ]
        if s.signed.description is not None:
            desc = s.signed.description
            out["description"] = {
                "version": desc.version,
                "signed_pcrs": list(desc.signed_pcrs),
                "signature": base64.b64encode(desc.signature).decode(),
            }
    return out


PENDING_VERSION = 2
PENDING_KEYS = {"type", "keyslots", "version", "keyslot", "started", "purpose", "kdf"}
PENDING_PURPOSES = ("tpm2", "recovery")


@dataclass(frozen=True)
class Pending:
    """A ``tpmseal-pending`` marker: the keyslot an unfinished tpmseal command was adding, and the
    fingerprint it gave that keyslot (None for a version 1 marker, which had none: never provable)."""

    keyslot: int
    purpose: str  # tpm2 | recovery
    iterations: int | None


def new_fingerprint() -> int:
    """A PBKDF2 iteration count from FINGERPRINT_ITERATIONS, drawn at random for one new keyslot."""
    import secrets

    from tpmseal.luks.volume import FINGERPRINT_ITERATIONS

    return FINGERPRINT_ITERATIONS[secrets.randbelow(len(FINGERPRINT_ITERATIONS))]


def pending_marker(keyslot: int, iterations: int, purpose: str = "tpm2") -> dict[str, Any]:
    """Imported before a new keyslot is added; replaced in place by the real token afterwards.

    ``kdf`` is the fingerprint of the keyslot about to be added (tpmseal passes exactly these
    parameters to luksAddKey): written before the keyslot exists, it tells tpmseal's keyslot from one
    another program adds in the same place later (docs/token-format.md).
    """
    from tpmseal.luks.volume import RANDOM_KEY_HASH

    return {
        "type": PENDING_TYPE,
        "keyslots": [],
        "version": PENDING_VERSION,
        "keyslot": str(keyslot),
        "started": now(),
        "purpose": purpose,
        "kdf": {"type": "pbkdf2", "hash": RANDOM_KEY_HASH, "iterations": iterations},
    }


def parse_pending(data: Any) -> Pending | None:
    """The marker, or None when it is not one tpmseal could have written (then nothing it names is provable)."""
    from tpmseal.luks.volume import FINGERPRINT_ITERATIONS, RANDOM_KEY_HASH

    if not isinstance(data, dict) or data.get("type") != PENDING_TYPE or data.get("keyslots") != []:
        return None
    keyslot = data.get("keyslot")
    if not is_number(keyslot):
        return None
    version = data.get("version")
    if version == 1 and set(data) <= {"type", "keyslots", "version", "keyslot", "started"}:
        return Pending(int(keyslot), "tpm2", None)
    if version != PENDING_VERSION or set(data) != PENDING_KEYS:
        return None
    kdf, purpose = data.get("kdf"), data.get("purpose")
    if purpose not in PENDING_PURPOSES or not isinstance(kdf, dict) or set(kdf) != {"type", "hash", "iterations"}:
        return None
    iterations = kdf.get("iterations")
    if kdf.get("type") != "pbkdf2" or kdf.get("hash") != RANDOM_KEY_HASH or not isinstance(iterations, int):
        return None
    if isinstance(iterations, bool) or iterations not in FINGERPRINT_ITERATIONS:
        return None
    return Pending(int(keyslot), str(purpose), iterations)


def pending_keyslot(data: dict[str, Any]) -> int | None:
    ks = data.get("keyslot")
    return int(ks) if is_number(ks) else None


def recovery_marker(keyslot: int) -> dict[str, Any]:
    return {"type": RECOVERY_TYPE, "keyslots": [str(keyslot)]}
