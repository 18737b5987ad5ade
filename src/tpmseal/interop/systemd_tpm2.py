# SPDX-License-Identifier: LGPL-2.1-or-later
"""``systemd-tpm2`` tokens, as systemd-cryptenroll writes them: read, open, and write (systemd 252 form).

The format (learned from systemd's documentation and source, and from tokens systemd-cryptenroll 252
writes on this machine; see docs/interop.md):

- ``tpm2-blob``: base64 of TPM2B_PRIVATE then TPM2B_PUBLIC (marshaled) of a KEYEDHASH object that holds
  32 random bytes; the keyslot passphrase is their base64 encoding.
- ``tpm2-pcrs`` (PCR indexes), ``tpm2-pcr-bank``, ``tpm2-policy-hash`` (hex of the object's authPolicy:
  PolicyPCR over the PCR values at enrollment, then PolicyAuthValue with a PIN), ``tpm2-pin``.
- ``tpm2-primary-alg``: the parent is not stored; it is re-created with CreatePrimary from a fixed
  template (see interop/primary.py). Newer systemd stores a persistent SRK as ``tpm2_srk`` instead.
- A PIN becomes the object's authValue as SHA-256 of the PIN's bytes; with ``tpm2_salt`` (newer systemd)
  the PIN is first stretched with PBKDF2-HMAC-SHA256 (10000 iterations, 32 bytes) and base64-encoded.

Opening costs 7 TPM commands (CreatePrimary, Load, StartAuthSession salted with the primary key,
PolicyPCR, Unseal, two FlushContext); a PIN adds PCR_Read (checked before the PIN is used) and
PolicyAuthValue; a token with ``tpm2_srk`` replaces CreatePrimary and its FlushContext by a ReadPublic:
the session is salted to the key the TPM holds at that handle (its name must be the stored one, and it
must be a TPM-resident storage key, see tpm/srk.py), never to the public key stored in the header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpmseal.errors import PolicyMismatch, TokenCorrupt, TokenUnsupported, WrongTpm
from tpmseal.luks.tokens import SYSTEMD_TPM2_TYPE, is_number
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

    from tpmseal.enroll import EnrollResult
    from tpmseal.luks.volume import Volume
    from tpmseal.unlock import PinSource

log = logging.getLogger("tpmseal")

TYPE = SYSTEMD_TPM2_TYPE
KEY_BYTES = 32  # systemd seals 32 random bytes
PIN_PBKDF2_ITERATIONS = 10000

# Fields tpmseal understands. Anything else is refused by name: systemd only adds fields when it adds
# a feature, and a feature we do not know may change what it takes to unseal.
KNOWN = {
    "type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-pcr-bank", "tpm2-primary-alg", "tpm2-policy-hash",
    "tpm2-pin", "tpm2_salt", "tpm2_srk", "tpm2_pubkey", "tpm2_pubkey_pcrs", "tpm2_pcrlock",
    "tpm2_pcrlock_nv",
}  # fmt: skip
REFUSED = {
    "tpm2_pubkey": "a signed PCR policy (TPM2_PolicyAuthorize with a public key)",
    "tpm2_pubkey_pcrs": "a signed PCR policy (TPM2_PolicyAuthorize with a public key)",
    "tpm2_pcrlock": "a pcrlock policy (TPM2_PolicyAuthorizeNV over an NV index)",
    "tpm2_pcrlock_nv": "a pcrlock policy (TPM2_PolicyAuthorizeNV over an NV index)",
}


@dataclass(frozen=True)
class SystemdTpm2Token:
    keyslots: tuple[int, ...]
    pcrs: PcrSelection  # indexes only: systemd does not store the values
    primary_alg: str  # ecc | rsa
    sealed: SealedObject
    policy_hash: bytes
    pin: bool
    salt: bytes | None = None  # tpm2_salt: the PIN is stretched first
    srk: bytes | None = None  # tpm2_srk: serialized ESYS_TR of a persistent parent


def _fail(where: str, what: str) -> TokenCorrupt:
    return TokenCorrupt(f"{TYPE} token: {where}: {what}")


def _unsupported(field: str, what: str) -> TokenUnsupported:
    return TokenUnsupported(
        f"{TYPE} token: field '{field}' ({what}) is not supported by tpmseal",
        "open it with systemd-cryptsetup, or enroll a tpmseal token with the passphrase",
    )


def _b64(v: Any, where: str) -> bytes:
    if not isinstance(v, str):
        raise _fail(where, "expected a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(where, "invalid base64") from None


def _single(v: Any, field: str) -> Any:
    """Newer systemd may store several blobs / policy hashes as a list; one is the common case."""
    if isinstance(v, list):
        if len(v) != 1:
            raise _unsupported(field, f"a list of {len(v)} entries")
        return v[0]
    return v


def split_blob(blob: bytes) -> SealedObject:
    """``tpm2-blob`` is TPM2B_PRIVATE || TPM2B_PUBLIC, each a big-endian u16 size and that many bytes."""
    parts = []
    offset = 0
    for name in ("private", "public"):
        if len(blob) < offset + 2:
            raise _fail("tpm2-blob", f"too short for the {name} part")
        (size,) = struct.unpack_from(">H", blob, offset)
        if not size or len(blob) < offset + 2 + size:
            raise _fail("tpm2-blob", f"the {name} part is truncated")
        parts.append(blob[offset : offset + 2 + size])
        offset += 2 + size
    if offset != len(blob):
        # newer systemd appends a TPM2B_ENCRYPTED_SECRET for objects sealed offline (TPM2_Import)
        raise _unsupported("tpm2-blob", f"{len(blob) - offset} bytes after the public part, an imported object")
    return SealedObject(parts[0], parts[1])


def _pcr_list(v: Any, field: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise _fail(field, "expected a list of PCR numbers")
    if any(not 0 <= i < PCR_COUNT for i in v):
        raise _fail(field, "PCR number out of range 0-23")
    return tuple(sorted(set(v)))


def parse_systemd_tpm2(data: Any) -> SystemdTpm2Token:
    """Parse a ``systemd-tpm2`` token; TokenCorrupt if malformed, TokenUnsupported naming a field we refuse."""
    if not isinstance(data, dict) or data.get("type") != TYPE:
        raise _fail("type", f"expected '{TYPE}'")
    for field, what in REFUSED.items():
        v = data.get(field)
        if v not in (None, False, "", []):
            raise _unsupported(field, what)
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise _unsupported(unknown[0], "a field this version of tpmseal does not know")
    ks = data.get("keyslots")
    if not isinstance(ks, list) or not all(is_number(s) for s in ks):
        raise _fail("keyslots", "expected a list of keyslot numbers as strings")
    for required in ("tpm2-blob", "tpm2-pcrs", "tpm2-policy-hash"):
        if required not in data:
            raise _fail(required, "missing")
    indexes = _pcr_list(data["tpm2-pcrs"], "tpm2-pcrs")
    bank = data.get("tpm2-pcr-bank", "sha256")  # absent before systemd 250, which used sha256
    if not isinstance(bank, str):
        raise _fail("tpm2-pcr-bank", "expected a string")
    if bank.lower() not in BANKS:
        raise _unsupported("tpm2-pcr-bank", f"bank '{bank}'")
    alg = data.get("tpm2-primary-alg", "ecc")  # absent before systemd 250, which used ECC
    if not isinstance(alg, str) or alg.lower() not in ("ecc", "rsa"):
        raise _unsupported("tpm2-primary-alg", f"algorithm {alg!r}")
    policy_text = _single(data["tpm2-policy-hash"], "tpm2-policy-hash")
    if not isinstance(policy_text, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", policy_text):
        raise _fail("tpm2-policy-hash", "expected hex")
    policy_hash = bytes.fromhex(policy_text)
    if len(policy_hash) != 32:
        raise _unsupported("tpm2-policy-hash", f"a {len(policy_hash)}-byte digest, not SHA-256")
    pin = data.get("tpm2-pin", False)
    if not isinstance(pin, bool):
        raise _fail("tpm2-pin", "expected true or false")
    salt = _b64(data["tpm2_salt"], "tpm2_salt") if data.get("tpm2_salt") else None
    srk = _b64(data["tpm2_srk"], "tpm2_srk") if data.get("tpm2_srk") else None
    return SystemdTpm2Token(
        keyslots=tuple(int(s) for s in ks),
        pcrs=PcrSelection(bank.lower(), tuple(Pcr(i) for i in indexes)),
        primary_alg=alg.lower(),
        sealed=split_blob(_b64(_single(data["tpm2-blob"], "tpm2-blob"), "tpm2-blob")),
        policy_hash=policy_hash,
        pin=pin,
        salt=salt,
        srk=srk,
    )


def render_systemd_tpm2(token: SystemdTpm2Token) -> dict[str, Any]:
    """The token as systemd 252 writes it: same fields, types, encodings and order."""
    if token.salt is not None or token.srk is not None:
        raise ValueError("systemd 252 tokens have no tpm2_salt or tpm2_srk")
    return {
        "type": TYPE,
        "keyslots": [str(k) for k in token.keyslots],
        "tpm2-blob": base64.b64encode(token.sealed.private + token.sealed.public).decode(),
        "tpm2-pcrs": list(token.pcrs.indexes),
        "tpm2-pcr-bank": token.pcrs.bank,
        "tpm2-primary-alg": token.primary_alg,
        "tpm2-policy-hash": token.policy_hash.hex(),
        "tpm2-pin": token.pin,
    }


def pin_auth(pin: bytearray, salt: bytes | None) -> Secret:
    """The sealed object's authValue for a PIN, as systemd derives it.

    systemd 252: SHA-256 of the PIN's bytes. With ``tpm2_salt`` (systemd 254+): the PIN is first turned
    into the base64 text of PBKDF2-HMAC-SHA256(PIN, salt, 10000 iterations, 32 bytes), then hashed.
    """
    if salt is None:
        return Secret.take(bytearray(hashlib.sha256(pin).digest()))
    stretched = bytearray(hashlib.pbkdf2_hmac("sha256", bytes(pin), salt, PIN_PBKDF2_ITERATIONS, 32))
    text = bytearray(base64.b64encode(stretched))
    try:
        return Secret.take(bytearray(hashlib.sha256(text).digest()))
    finally:
        stretched[:] = bytes(len(stretched))
        text[:] = bytes(len(text))


@contextmanager
def _parent(esapi: ESAPI, token: SystemdTpm2Token) -> Iterator[Any]:
    """The sealed object's parent as the TPM reports it: the persistent key at the handle ``tpm2_srk``
    names (checked against its name, ``srk_from_tpm``), else the re-created primary key. The public key
    stored in ``tpm2_srk`` is never used: a header edit could replace it with a key its author holds."""
    from tpmseal.tpm.srk import SrkRef, is_tpm_resident_parent, public_of, srk_from_tpm

    if token.srk is None:
        from tpmseal.interop.primary import legacy_primary

        with legacy_primary(esapi, token.primary_alg) as (handle, _):
            if not is_tpm_resident_parent(public_of(esapi, handle)):
                raise WrongTpm(f"{TYPE} token: the TPM's primary key is not a storage key")
            yield handle
        return
    from tpm2_pytss import TSS2_Exception

    try:
        stored = esapi.tr_deserialize(token.srk)
    except TSS2_Exception:
        raise WrongTpm(f"{TYPE} token: tpm2_srk cannot be read", "the token may be damaged") from None
    try:
        handle = int(esapi.tr_get_tpm_handle(stored))
        name = bytes(esapi.tr_get_name(stored))
    finally:
        esapi.tr_close(stored)
    if handle >> 24 != 0x81:
        raise _fail("tpm2_srk", "not a persistent handle")
    tr = srk_from_tpm(esapi, SrkRef(handle, name, token.srk))
    try:
        yield tr
    finally:
        esapi.tr_close(tr)


def _policy_now(esapi: ESAPI, token: SystemdTpm2Token) -> tuple[bytes, dict[int, bytes]]:
    """The policy digest the current PCR values give (PolicyPCR [+ PolicyAuthValue]), computed in software."""
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.unlock import read_pcrs

    current = read_pcrs(esapi, token.pcrs) if token.pcrs.pcrs else {}
    if set(current) != set(token.pcrs.indexes):
        return b"", current
    return policy_digest(token.pcrs.with_values(current), token.pin), current


def _mismatch(token: SystemdTpm2Token) -> PolicyMismatch:
    which = "+".join(map(str, token.pcrs.indexes)) or "none"
    return PolicyMismatch(
        f"the TPM refused to unseal: the current values of PCR(s) {which} ({token.pcrs.bank}) do not give "
        "the policy this token was sealed with"
    )


def unseal_systemd_tpm2(esapi: ESAPI, token: SystemdTpm2Token, pin: PinSource | None = None) -> Secret:
    """The 32 raw bytes sealed in the token. The PIN is asked for only when the PCR policy holds and the
    parent is the TPM's (an empty PIN is no PIN: PinRequired, nothing sent; systemd refuses them too)."""
    from tpmseal.tpm.seal import unseal
    from tpmseal.unlock import need_pin

    auth = None
    if token.pin:
        expected, _ = _policy_now(esapi, token)
        if expected != token.policy_hash:
            raise _mismatch(token)
        if pin is None:
            need_pin(pin)  # PinRequired before the parent is even created
    try:
        with _parent(esapi, token) as parent:
            if token.pin:
                pin_text = need_pin(pin)
                try:
                    auth = pin_auth(pin_text, token.salt)
                finally:
                    pin_text[:] = bytes(len(pin_text))
            return unseal(esapi, parent, token.sealed, token.pcrs, auth)
    except PolicyMismatch:
        raise _mismatch(token) from None
    finally:
        if auth is not None:
            auth.close()


def open_systemd_tpm2(esapi: ESAPI, data: dict[str, Any], pin: PinSource | None) -> Secret:
    """TokenOpener for ``systemd-tpm2``: the keyslot passphrase (base64 of the unsealed bytes)."""
    from tpmseal.unlock import keyslot_passphrase

    with unseal_systemd_tpm2(esapi, parse_systemd_tpm2(data), pin) as raw:
        return keyslot_passphrase(raw)


def enroll_systemd_tpm2(
    volume: Volume,
    unlock_key: Secret,
    tpm_device: str,
    selection: PcrSelection,
    pin: Secret | None = None,
) -> EnrollResult:
    """Add a keyslot and a ``systemd-tpm2`` token that systemd 252's systemd-cryptsetup can open.

    Sealed as systemd 252 seals: under the CreatePrimary ECC key (RSA if the TPM has no ECC), policy
    PolicyPCR (+ PolicyAuthValue with SHA-256 of the PIN), 32 random bytes whose base64 is the keyslot
    passphrase; no tpm2_srk / tpm2_salt, which systemd 252 does not read. Same crash-safe order as
    enroll.py: pending marker, luksAddKey, the token in place of the marker, then proof.
    """
    from tpmseal.enroll import EnrollResult, add_with_token, clean_up_interrupted, free_slots, prove
    from tpmseal.interop.primary import legacy_primary
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.tpm.seal import seal
    from tpmseal.unlock import keyslot_passphrase, read_pcrs

    header = volume.header()
    header.refuse_changes(volume.path)
    slot, token_id = free_slots(volume, header)

    with open_tpm(tpm_device) as esapi:
        current = read_pcrs(esapi, selection) if selection.pcrs else {}
        full = selection.with_values(current)
        is_current = all(current.get(p.index) == p.value for p in full.pcrs)
        policy = policy_digest(full, pin is not None)
        auth = pin_auth(pin.buffer, None) if pin is not None else None
        with Secret.random(KEY_BYTES) as key:
            try:
                with legacy_primary(esapi, "auto") as (primary, alg):
                    sealed = seal(esapi, primary, key, policy, auth)
            finally:
                if auth is not None:
                    auth.close()
            token = SystemdTpm2Token(
                (), PcrSelection(full.bank, tuple(Pcr(p.index) for p in full.pcrs)), alg, sealed, policy,
                pin is not None,
            )  # fmt: skip
            with keyslot_passphrase(key) as phrase:
                add_with_token(volume, unlock_key, phrase, slot, token_id, render_systemd_tpm2(token))
                opener = open_systemd_tpm2 if is_current else None
                verified = prove(volume, esapi, slot, token_id, phrase, opener, pin)
    cleaned = clean_up_interrupted(volume, volume.header())  # only now: the unlock key is proven
    return EnrollResult(
        volume.path, slot, token_id, TYPE, full.format(), full.bank, pin is not None, verified, cleaned_up=cleaned
    )
