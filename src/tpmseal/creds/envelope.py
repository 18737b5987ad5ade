# SPDX-License-Identifier: LGPL-2.1-or-later
"""The native credential file, version 1 (specified in docs/credential-format.md).

::

    "TPMSCRED" | version u16 BE | header length u32 BE | header (JSON) | ciphertext | GCM tag (16)

A fresh 32-byte data key per credential is sealed to the TPM under tpmseal's SRK (PolicyPCR over the
chosen PCRs, or no policy at all: TPM-bound only) and encrypts the secret with AES-256-GCM. Everything
before the ciphertext (magic, version, length and the header with name, unit, times and the sealed key)
is the associated data, so changing any byte of the file makes decryption fail.

Decryption checks in this order: the file's structure (no TPM needed), the TPM (unseal), the GCM tag,
and only then the claims of the now authenticated header (name, unit, expiry). A claim is never
believed before it is authenticated.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tpmseal.errors import (
    CredentialCorrupt,
    CredentialExpired,
    CredentialNameMismatch,
    CredentialTampered,
    CredentialUnitMismatch,
    CredentialUnsupported,
    PolicyMismatch,
    UsageError,
    WrongTpm,
)
from tpmseal.secret import Secret
from tpmseal.strict import Fields
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject
from tpmseal.tpm.srk import SrkRef

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

MAGIC = b"TPMSCRED"
VERSION = 1
PREFIX = struct.Struct(">8sHI")  # magic, version, header length
MAX_SECRET = 1024 * 1024  # 1 MiB, systemd's limit for one credential too
MAX_HEADER = 64 * 1024
TAG_SIZE = 16
NONCE_SIZE = 12
KEY_SIZE = 32
CIPHER = "aes-256-gcm"
MAX_FILE = PREFIX.size + MAX_HEADER + MAX_SECRET + TAG_SIZE

HEADER_KEYS = {"name", "unit", "created", "not_after", "cipher", "nonce", "size", "tpm"}
TPM_KEYS = {"srk", "pcr_bank", "pcrs", "policy_digest", "private", "public"}
SRK_KEYS = {"handle", "name", "esys_tr"}
PCR_KEYS = {"index", "value"}

_NAME_RE = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]{0,254}")
_UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\@-]{1,247}\.(service|socket|mount|swap)")
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
UNIT_SECTIONS = {"service": "Service", "socket": "Socket", "mount": "Mount", "swap": "Swap"}


# --------------------------------------------------------------------------- names and times


def check_name(name: str) -> str:
    """A credential name: what LoadCredential= takes as ID and the file name in $CREDENTIALS_DIRECTORY."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid credential name {name!r}",
            "use 1-255 characters of A-Z a-z 0-9 _ . @ + -, not starting with '.'",
        )
    return name


def check_unit(unit: str) -> str:
    """A unit that can load credentials: NAME.service (the default suffix), .socket, .mount or .swap."""
    if "." not in unit:
        unit += ".service"
    if not _UNIT_RE.fullmatch(unit) or unit.startswith("."):
        raise UsageError(
            f"invalid unit name {unit!r}",
            "credentials go to units that run processes: NAME.service, .socket, .mount or .swap",
        )
    return unit


def format_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(text: str, where: str) -> int:
    m = _TIME_RE.fullmatch(text)
    if not m:
        raise CredentialCorrupt(f"credential header: {where}: expected a UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:  # not strptime: it imports _strptime lazily, which a minimal initramfs Python may lack
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        return int(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp())
    except ValueError:
        raise CredentialCorrupt(f"credential header: {where}: not a valid time") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: int | None = None) -> int:
    """``--not-after``: ``+30d`` / ``+12h`` / ``+90m`` / ``+45s`` / ``+2w`` from now, ``@EPOCH``, or an
    ISO 8601 date or time (``2027-01-31``, ``2027-01-31T12:00:00Z``; without a zone, UTC)."""
    now = int(time.time()) if now is None else now
    t = text.strip()
    m = re.fullmatch(r"\+(\d+)([smhdw]?)", t)
    if m:
        return now + int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if re.fullmatch(r"@\d+", t):
        return int(t[1:])
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00") if t.endswith("Z") else t)
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}", "use +30d, +12h, @EPOCH, 2027-01-31 or 2027-01-31T12:00:00Z"
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp())


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Header:
    """The authenticated header of a credential (all of it is associated data)."""

    name: str
    unit: str | None
    created: int  # epoch seconds
    not_after: int | None
    nonce: bytes
    size: int  # bytes of the secret (= of the ciphertext)
    srk: SrkRef
    pcrs: PcrSelection  # every PCR with its expected value; empty: bound to the TPM only
    policy_digest: bytes
    sealed: SealedObject

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "created": format_time(self.created),
            "not_after": format_time(self.not_after) if self.not_after is not None else None,
            "cipher": CIPHER,
            "nonce": base64.b64encode(self.nonce).decode(),
            "size": self.size,
            "tpm": {
                "srk": {
                    "handle": f"{self.srk.handle:#010x}",
                    "name": self.srk.name.hex(),
                    "esys_tr": base64.b64encode(self.srk.serialized).decode(),
                },
                "pcr_bank": self.pcrs.bank,
                "pcrs": [{"index": p.index, "value": (p.value or b"").hex()} for p in self.pcrs.pcrs],
                "policy_digest": self.policy_digest.hex(),
                "private": base64.b64encode(self.sealed.private).decode(),
                "public": base64.b64encode(self.sealed.public).decode(),
            },
        }


@dataclass(frozen=True)
class Envelope:
    """A parsed file: the header, and the byte ranges the cipher needs."""

    header: Header
    aad: bytes  # the file up to the end of the header
    ciphertext: bytes
    tag: bytes


def is_native(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def _fail(where: str, what: str) -> CredentialCorrupt:
    return CredentialCorrupt(f"credential header: {where}: {what}")


_fields = Fields(_fail)
_obj = _fields.obj
_str = _fields.text
_int = _fields.integer
_b64 = _fields.b64
_hex = _fields.hex


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _fail(k, "given twice")
        out[k] = v
    return out


def _tpm(v: Any) -> tuple[SrkRef, PcrSelection, bytes, SealedObject]:
    d = _obj(v, "tpm", TPM_KEYS)
    srk = _obj(d["srk"], "tpm.srk", SRK_KEYS)
    handle = _str(srk["handle"], "tpm.srk.handle")
    if not re.fullmatch(r"0x81[0-9a-f]{6}", handle):
        raise _fail("tpm.srk.handle", "expected a persistent handle like 0x81000001")
    bank = _str(d["pcr_bank"], "tpm.pcr_bank")
    if bank not in BANKS:
        raise CredentialUnsupported(f"credential header: PCR bank '{bank}' is not supported")
    if not isinstance(d["pcrs"], list):
        raise _fail("tpm.pcrs", "expected a list")
    pcrs: list[Pcr] = []
    for j, p in enumerate(d["pcrs"]):
        where = f"tpm.pcrs[{j}]"
        pd = _obj(p, where, PCR_KEYS)
        index = _int(pd["index"], f"{where}.index")
        if not 0 <= index < PCR_COUNT or (pcrs and index <= pcrs[-1].index):
            raise _fail(f"{where}.index", "PCR indexes must be 0-23, ascending, each once")
        pcrs.append(Pcr(index, _hex(pd["value"], f"{where}.value", BANKS[bank][0])))
    return (
        SrkRef(int(handle, 16), _hex(srk["name"], "tpm.srk.name"), _b64(srk["esys_tr"], "tpm.srk.esys_tr")),
        PcrSelection(bank, tuple(pcrs)),
        _hex(d["policy_digest"], "tpm.policy_digest", 32),
        SealedObject(_b64(d["private"], "tpm.private"), _b64(d["public"], "tpm.public")),
    )


def parse(data: bytes) -> Envelope:
    """Parse a native credential file without the TPM; raise CredentialCorrupt / CredentialUnsupported."""
    if len(data) < PREFIX.size or not is_native(data):
        raise CredentialCorrupt("not a tpmseal credential (the file does not start with TPMSCRED)")
    _, version, hlen = PREFIX.unpack_from(data)
    if version != VERSION:
        raise CredentialUnsupported(
            f"credential format version {version} is not supported (this tpmseal reads version {VERSION})"
        )
    if hlen > MAX_HEADER:
        raise CredentialCorrupt(f"credential header of {hlen} bytes exceeds the limit of {MAX_HEADER}")
    end = PREFIX.size + hlen
    if len(data) < end:
        raise CredentialCorrupt(f"credential truncated: {len(data)} bytes, the header alone needs {end}")
    try:
        raw = json.loads(data[PREFIX.size : end].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CredentialCorrupt(f"credential header is not valid JSON: {type(e).__name__}") from None
    d = _obj(raw, "header", HEADER_KEYS)
    if _str(d["cipher"], "cipher") != CIPHER:
        raise CredentialUnsupported(f"credential cipher '{d['cipher']}' is not supported (only {CIPHER})")
    name = _str(d["name"], "name")
    if not _NAME_RE.fullmatch(name):
        raise _fail("name", "not a valid credential name")
    unit = d["unit"]
    if unit is not None and not _UNIT_RE.fullmatch(_str(unit, "unit")):
        raise _fail("unit", "not a valid unit name")
    size = _int(d["size"], "size")
    if not 0 <= size <= MAX_SECRET:
        raise _fail("size", f"must be 0-{MAX_SECRET}")
    nonce = _b64(d["nonce"], "nonce")
    if len(nonce) != NONCE_SIZE:
        raise _fail("nonce", f"expected {NONCE_SIZE} bytes")
    not_after = d["not_after"]
    srk, pcrs, policy, sealed = _tpm(d["tpm"])
    header = Header(
        name=name,
        unit=unit,
        created=_stamp(_str(d["created"], "created"), "created"),
        not_after=_stamp(_str(not_after, "not_after"), "not_after") if not_after is not None else None,
        nonce=nonce,
        size=size,
        srk=srk,
        pcrs=pcrs,
        policy_digest=policy,
        sealed=sealed,
    )
    want = end + size + TAG_SIZE
    if len(data) != want:
        what = "truncated" if len(data) < want else "has trailing bytes"
        raise CredentialCorrupt(f"credential {what}: {len(data)} bytes, the header says {want}")
    return Envelope(header, bytes(data[:end]), bytes(data[end : end + size]), bytes(data[end + size :]))


def render_prefix_and_header(header: Header) -> bytes:
    body = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, VERSION, len(body)) + body


# --------------------------------------------------------------------------- AES-256-GCM into wiped buffers


def aead_seal(key: bytearray, nonce: bytes, aad: bytes, plaintext: bytearray) -> bytearray:
    """Ciphertext then tag. The plaintext is read from the caller's buffer; nothing secret is copied."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    out = bytearray(len(plaintext) + 15)
    n = enc.update_into(plaintext, out)
    enc.finalize()
    del out[n:]
    out += enc.tag
    return out


def aead_open(key: bytearray, nonce: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> Secret:
    """The plaintext in a Secret; CredentialTampered if the tag does not match (the buffer is wiped)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    scratch = Secret(len(ciphertext) + 15)
    out = Secret(len(ciphertext))
    try:
        n = dec.update_into(ciphertext, scratch.buffer)
        dec.finalize()
        out.buffer[:] = memoryview(scratch.buffer)[:n]
    except InvalidTag:
        out.close()
        raise CredentialTampered(
            "credential authentication failed: the file was changed after it was encrypted "
            "(header, sealed key or ciphertext)"
        ) from None
    except BaseException:
        out.close()
        raise
    finally:
        scratch.close()
    return out


# --------------------------------------------------------------------------- encrypt / decrypt


def read_pcrs(esapi: ESAPI, selection: PcrSelection) -> dict[int, bytes]:
    from tpmseal.unlock import read_pcrs as read

    return read(esapi, selection) if selection.pcrs else {}


def encrypt(
    esapi: ESAPI,
    secret: Secret,
    name: str,
    unit: str | None,
    selection: PcrSelection,
    not_after: int | None = None,
    now: int | None = None,
) -> bytes:
    """A native credential for ``secret``: a fresh data key sealed under the SRK and ``selection``."""
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.tpm.seal import seal
    from tpmseal.tpm.srk import ensure_srk

    check_name(name)
    if unit is not None:
        check_unit(unit)
    if len(secret) > MAX_SECRET:
        raise UsageError(f"the secret has {len(secret)} bytes; a credential holds at most {MAX_SECRET} (1 MiB)")
    created = int(time.time()) if now is None else now
    if not_after is not None and not_after <= created:
        raise UsageError(f"--not-after {format_time(not_after)} is not in the future")
    full = selection.with_values(read_pcrs(esapi, selection)) if selection.pcrs else selection
    missing = [p.index for p in full.pcrs if p.value is None]
    if missing:
        raise UsageError(f"PCR(s) {', '.join(map(str, missing))} cannot be read in bank {full.bank}")
    policy = policy_digest(full, False)
    srk_tr, srk_ref = ensure_srk(esapi)
    try:
        with Secret.random(KEY_SIZE) as key, Secret.random(NONCE_SIZE) as nonce_s:
            sealed = seal(esapi, srk_tr, key, policy, None)
            header = Header(
                name, unit, created, not_after, bytes(nonce_s.buffer), len(secret), srk_ref, full, policy, sealed
            )
            aad = render_prefix_and_header(header)
            body = aead_seal(key.buffer, header.nonce, aad, secret.buffer)
            return aad + bytes(body)
    finally:
        esapi.tr_close(srk_tr)


def unseal_key(esapi: ESAPI, header: Header) -> Secret:
    """The data key, from the TPM; PolicyMismatch names the PCRs that changed, WrongTpm another TPM."""
    from tpm2_pytss import TSS2_Exception

    from tpmseal.errors import TokenCorrupt
    from tpmseal.tpm.seal import unseal
    from tpmseal.tpm.srk import srk_from_ref

    try:
        srk = srk_from_ref(esapi, header.srk)
    except (WrongTpm, TSS2_Exception):
        raise CredentialTampered(f"credential '{header.name}': its SRK reference (tpm.srk) is damaged") from None
    try:
        try:
            key = unseal(esapi, srk, header.sealed, header.pcrs, None)
        except TokenCorrupt as e:
            raise CredentialTampered(f"credential '{header.name}': {e.message}") from None
        except PolicyMismatch:
            now = read_pcrs(esapi, header.pcrs)
            changed = [p.index for p in header.pcrs.pcrs if now.get(p.index) != p.value]
            raise PolicyMismatch(
                f"the TPM refused to unseal the credential '{header.name}': PCR(s) "
                f"{', '.join(map(str, changed)) or 'none visible'} differ from the state it was sealed to",
                "the boot chain changed since the credential was encrypted; encrypt it again for the new state",
            ) from None
        except WrongTpm:
            raise WrongTpm(
                f"this TPM cannot load the sealed key of credential '{header.name}': it was encrypted on "
                "another machine, the TPM was cleared, or its sealed key was changed",
                "encrypt the secret again on this machine",
            ) from None
    finally:
        esapi.tr_close(srk)
    if len(key) != KEY_SIZE:
        key.close()
        raise CredentialTampered(f"credential '{header.name}': the sealed data key has the wrong size")
    return key


def check_claims(
    name: str, unit: str | None, not_after: int | None, expect_name: str | None, expect_unit: str | None, now: int
) -> None:
    """Name, unit and expiry, checked once they are authenticated."""
    if expect_name is not None and name != expect_name:
        raise CredentialNameMismatch(
            f"credential was encrypted for the name '{name}', not '{expect_name}' (renamed or swapped)"
        )
    if expect_unit is not None and unit is not None and unit != expect_unit:
        raise CredentialUnitMismatch(f"credential was encrypted for unit '{unit}', not '{expect_unit}'")
    if not_after is not None and now >= not_after:
        raise CredentialExpired(f"credential '{name}' expired at {format_time(not_after)}")


def decrypt(
    esapi: ESAPI,
    env: Envelope,
    expect_name: str | None = None,
    expect_unit: str | None = None,
    now: Callable[[], float] = time.time,
) -> Secret:
    """The secret of a parsed credential. Raises a CredentialRejected subclass, PolicyMismatch or WrongTpm."""
    from tpmseal.tpm.policy import policy_digest

    h = env.header
    if policy_digest(h.pcrs, False) != h.policy_digest:
        raise CredentialCorrupt("credential header: tpm.policy_digest does not match its PCR values")
    with unseal_key(esapi, h) as key:
        plain = aead_open(key.buffer, h.nonce, env.aad, env.ciphertext, env.tag)
    try:
        check_claims(h.name, h.unit, h.not_after, expect_name, expect_unit, int(now()))
    except BaseException:
        plain.close()
        raise
    return plain
