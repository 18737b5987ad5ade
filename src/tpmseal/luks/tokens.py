# SPDX-License-Identifier: LGPL-2.1-or-later
"""Token formats in the LUKS2 header. The native one, ``tpmseal-tpm2``, is specified in
docs/token-format.md; this parser rejects anything it does not understand.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject
from tpmseal.tpm.srk import SrkRef

NATIVE_TYPE = "tpmseal-tpm2"
PENDING_TYPE = "tpmseal-pending"  # marks an enrollment in progress (see enroll.py)
RECOVERY_TYPE = "systemd-recovery"  # marker for a recovery-key keyslot, shared with systemd-cryptenroll
SYSTEMD_TPM2_TYPE = "systemd-tpm2"
CLEVIS_TYPE = "clevis"
TOKEN_VERSION = 1

TOP_KEYS = {"type", "keyslots", "version", "created", "luks_uuid", "srk", "seals"}
SRK_KEYS = {"handle", "name", "esys_tr"}
SEAL_KEYS = {"kind", "label", "pcr_bank", "pcrs", "policy_digest", "pin", "pin_salt", "private", "public"}
PCR_KEYS = {"index", "value"}
SEAL_KINDS = {"pcr"}


@dataclass(frozen=True)
class Seal:
    """One sealed copy of the volume key, openable under one policy."""

    label: str
    pcrs: PcrSelection  # every PCR has its expected value
    policy_digest: bytes
    pin: bool
    pin_salt: bytes | None
    sealed: SealedObject


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


def _obj(v: Any, where: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, "expected an object")
    unknown = set(v) - keys
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
    missing = required - set(v)
    if missing:
        raise _fail(where, f"missing field(s) {', '.join(sorted(missing))}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _fail(where, "expected a string")
    return v


def _int(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(where, "expected an integer")
    return v


def _b64(v: Any, where: str) -> bytes:
    try:
        return base64.b64decode(_str(v, where), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(where, "invalid base64") from None


def _hex(v: Any, where: str, size: int | None = None) -> bytes:
    s = _str(v, where)
    if not re.fullmatch(r"(?:[0-9a-f]{2})*", s):
        raise _fail(where, "expected lowercase hex")
    b = bytes.fromhex(s)
    if size is not None and len(b) != size:
        raise _fail(where, f"expected {size} bytes, got {len(b)}")
    return b


def _keyslots(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s.isdigit() for s in v):
        raise _fail("keyslots", "expected a list of keyslot numbers as strings")
    return tuple(int(s) for s in v)


def _seal(v: Any, i: int) -> Seal:
    where = f"seals[{i}]"
    kind = v.get("kind") if isinstance(v, dict) else None
    if isinstance(kind, str) and kind not in SEAL_KINDS:
        raise TokenUnsupported(f"{NATIVE_TYPE} token: {where}: policy kind '{kind}' is not supported")
    d = _obj(v, where, SEAL_KEYS, SEAL_KEYS - {"label", "pin_salt"})
    bank = _str(d["pcr_bank"], f"{where}.pcr_bank")
    if bank not in BANKS:
        raise TokenUnsupported(f"{NATIVE_TYPE} token: {where}: PCR bank '{bank}' is not supported")
    if not isinstance(d["pcrs"], list):
        raise _fail(f"{where}.pcrs", "expected a list")
    pcrs: list[Pcr] = []
    for j, p in enumerate(d["pcrs"]):
        pw = f"{where}.pcrs[{j}]"
        pd = _obj(p, pw, PCR_KEYS, PCR_KEYS)
        index = _int(pd["index"], f"{pw}.index")
        if not 0 <= index < PCR_COUNT or (pcrs and index <= pcrs[-1].index):
            raise _fail(f"{pw}.index", "PCR indexes must be 0-23, ascending, each once")
        pcrs.append(Pcr(index, _hex(pd["value"], f"{pw}.value", BANKS[bank][0])))
    pin = d["pin"]
    if not isinstance(pin, bool):
        raise _fail(f"{where}.pin", "expected true or false")
    salt = d.get("pin_salt")
    pin_salt = _b64(salt, f"{where}.pin_salt") if salt is not None else None
    if pin and not pin_salt:
        raise _fail(f"{where}.pin_salt", "a PIN-protected seal needs a salt")
    return Seal(
        label=_str(d.get("label", ""), f"{where}.label"),
        pcrs=PcrSelection(bank, tuple(pcrs)),
        policy_digest=_hex(d["policy_digest"], f"{where}.policy_digest", 32),
        pin=pin,
        pin_salt=pin_salt,
        sealed=SealedObject(_b64(d["private"], f"{where}.private"), _b64(d["public"], f"{where}.public")),
    )


def parse_native(data: Any) -> NativeToken:
    """Parse a ``tpmseal-tpm2`` token's JSON object; raise TokenCorrupt / TokenUnsupported."""
    if not isinstance(data, dict):
        raise _fail("token", "expected a JSON object")
    if data.get("type") != NATIVE_TYPE:
        raise _fail("type", f"expected '{NATIVE_TYPE}'")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version != TOKEN_VERSION:
        raise TokenUnsupported(
            f"{NATIVE_TYPE} token version {version} is not supported (this tpmseal reads version {TOKEN_VERSION})"
        )
    d = _obj(data, "token", TOP_KEYS, TOP_KEYS - {"luks_uuid"})
    _int(d["version"], "version")
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
        seals=tuple(_seal(s, i) for i, s in enumerate(seals)),
        luks_uuid=_str(uuid, "luks_uuid") if uuid is not None else None,
    )


def render_native(token: NativeToken) -> dict[str, Any]:
    """The JSON object of a native token (the inverse of parse_native)."""
    out: dict[str, Any] = {
        "type": NATIVE_TYPE,
        "keyslots": [str(k) for k in token.keyslots],
        "version": TOKEN_VERSION,
        "created": token.created,
        "srk": {
            "handle": f"{token.srk.handle:#010x}",
            "name": token.srk.name.hex(),
            "esys_tr": base64.b64encode(token.srk.serialized).decode(),
        },
        "seals": [
            {
                "kind": "pcr",
                "label": s.label,
                "pcr_bank": s.pcrs.bank,
                "pcrs": [{"index": p.index, "value": (p.value or b"").hex()} for p in s.pcrs.pcrs],
                "policy_digest": s.policy_digest.hex(),
                "pin": s.pin,
                "pin_salt": base64.b64encode(s.pin_salt).decode() if s.pin_salt else None,
                "private": base64.b64encode(s.sealed.private).decode(),
                "public": base64.b64encode(s.sealed.public).decode(),
            }
            for s in token.seals
        ],
    }
    if token.luks_uuid is not None:
        out["luks_uuid"] = token.luks_uuid
    return out


def pending_marker(keyslot: int) -> dict[str, Any]:
    """Imported before a new keyslot is added; replaced in place by the real token afterwards."""
    return {
        "type": PENDING_TYPE,
        "keyslots": [],
        "version": TOKEN_VERSION,
        "keyslot": str(keyslot),
        "started": now(),
    }


def pending_keyslot(data: dict[str, Any]) -> int | None:
    ks = data.get("keyslot")
    return int(ks) if isinstance(ks, str) and ks.isdigit() else None


def recovery_marker(keyslot: int) -> dict[str, Any]:
    return {"type": RECOVERY_TYPE, "keyslots": [str(keyslot)]}
