# SPDX-License-Identifier: LGPL-2.1-or-later
"""systemd-creds' encrypted credentials with a TPM2 key (``--with-key=tpm2``), read and written.

The layout (facts from systemd's creds-util.c and from files systemd-creds 252 writes here; all integers
little-endian; each part padded with NUL bytes to a multiple of 8):

1. main header: a 16-byte key-type id, key size (32), block size (1 for GCM), IV size (12), tag size (16),
   then the IV;
2. TPM2 header: PCR mask (u64), PCR bank (TPM2_ALG id, u16), primary key algorithm (TPM2_ALG_ECC or
   TPM2_ALG_RSA, u16), blob size (u32), policy hash size (u32), the blob (TPM2B_PRIVATE then TPM2B_PUBLIC),
   the policy hash;
3. AES-256-GCM ciphertext of: metadata (timestamp and not-after in microseconds, u64 each, UINT64_MAX for
   none; name size u32 and the name, padded) followed by the secret;
4. the 16-byte tag.

Parts 1 and 2 are the associated data. The AES key is SHA-256 of the 32 bytes unsealed from the blob,
whose parent is the primary key re-created from the owner seed (interop/primary.py). The file on disk is
the base64 text of all this; binary input is accepted too.

Only the TPM2-only key type is handled: the types that mix in the host key (/var/lib/systemd/
credential.secret), signed PCR policies or per-user scope are refused by name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpmseal.creds.envelope import MAX_SECRET, aead_open, aead_seal, check_claims, check_name
from tpmseal.errors import (
    CredentialCorrupt,
    CredentialUnsupported,
    PolicyMismatch,
    TokenCorrupt,
    UsageError,
    WrongTpm,
)
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

BY_TPM2_HMAC = bytes.fromhex("0c7cc07b117645919c4b0bea08bc20fe")
KNOWN_IDS = {
    bytes.fromhex("5a1c6a86df9d4096b1d5a65e0862f19a"): "the host key only",
    bytes.fromhex("93a894094874449090caf2fc93cab553"): "the host key and the TPM2",
    bytes.fromhex("faf7eb9341e3412ca1a436f95a29362f"): "the TPM2 with a signed PCR policy",
    bytes.fromhex("af4950a849134eb1a73846304ff30c05"): "the host key and the TPM2 with a signed PCR policy",
    bytes.fromhex("055869daf6f54324800549da0f8ea2fb"): "the null key (no protection)",
    bytes.fromhex("55b9ed1d38594d43a8319d2ebb332ac6"): "the host key, scoped to a user",
    bytes.fromhex("ef4ac13679a9480ea7db68897f9f165d"): "the host key and the TPM2, scoped to a user",
    bytes.fromhex("adbc4ca3efb64201ba881b6f2e4095ea"): "host key, TPM2, signed policy, scoped to a user",
}
MAIN = struct.Struct("<16sIIII")
TPM2 = struct.Struct("<QHHII")
META = struct.Struct("<QQI")
FIELD_MAX = 16 * 1024
NO_TIME = 2**64 - 1
ALG_IDS = {bank: alg for bank, (_, alg) in BANKS.items()}
BANK_OF = {alg: bank for bank, alg in ALG_IDS.items()}
PRIMARY_ALGS = {0x0023: "ecc", 0x0001: "rsa"}
PRIMARY_IDS = {v: k for k, v in PRIMARY_ALGS.items()}
IV_SIZE = 12
TAG_SIZE = 16


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _pad(b: bytes) -> bytes:
    return b + bytes(_align8(len(b)) - len(b))


@dataclass(frozen=True)
class SdCredential:
    iv: bytes
    pcrs: PcrSelection  # indexes only: systemd stores the mask, not the values
    primary_alg: str
    sealed: SealedObject
    policy_hash: bytes
    aad: bytes
    ciphertext: bytes
    tag: bytes


def decode(data: bytes) -> bytes | None:
    """The binary form of a systemd credential (base64 text or binary), or None if it is not one."""
    if data[:16] == BY_TPM2_HMAC or data[:16] in KNOWN_IDS:
        return data
    text = data.strip()
    if not text or len(text) > 2 * (MAX_SECRET + FIELD_MAX):
        return None
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if raw[:16] == BY_TPM2_HMAC or raw[:16] in KNOWN_IDS else None


def parse(raw: bytes) -> SdCredential:
    """Parse the binary form; CredentialCorrupt / CredentialUnsupported."""
    if len(raw) < MAIN.size:
        raise CredentialCorrupt("systemd credential truncated: no complete header")
    cid, key_size, block_size, iv_size, tag_size = MAIN.unpack_from(raw)
    if cid != BY_TPM2_HMAC:
        what = KNOWN_IDS.get(cid)
        if what is None:
            raise CredentialCorrupt("not a systemd credential (unknown key type id)")
        raise CredentialUnsupported(
            f"systemd credential encrypted with {what}: tpmseal reads only --with-key=tpm2 credentials",
            "decrypt it with systemd-creds",
        )
    if key_size != 32 or tag_size != TAG_SIZE or not 0 < block_size <= FIELD_MAX or iv_size != IV_SIZE:
        raise CredentialCorrupt("systemd credential: unexpected key, block, IV or tag size in the header")
    p = _align8(MAIN.size + iv_size)
    if len(raw) < p + TPM2.size:
        raise CredentialCorrupt("systemd credential truncated in the TPM2 header")
    iv = raw[MAIN.size : MAIN.size + iv_size]
    mask, bank_id, primary_id, blob_size, policy_size = TPM2.unpack_from(raw, p)
    if mask >> PCR_COUNT:
        raise CredentialCorrupt("systemd credential: PCR mask out of range")
    bank = BANK_OF.get(bank_id)
    if bank is None:
        raise CredentialUnsupported(f"systemd credential: PCR bank {bank_id:#06x} is not supported")
    alg = PRIMARY_ALGS.get(primary_id)
    if alg is None:
        raise CredentialUnsupported(f"systemd credential: primary key algorithm {primary_id:#06x} is not supported")
    if blob_size > FIELD_MAX or policy_size > FIELD_MAX:
        raise CredentialCorrupt("systemd credential: TPM2 blob or policy hash too large")
    q = p + TPM2.size
    end = p + _align8(TPM2.size + blob_size + policy_size)
    if len(raw) < end + _align8(META.size) + TAG_SIZE:
        raise CredentialCorrupt("systemd credential truncated")
    blob = raw[q : q + blob_size]
    policy = raw[q + blob_size : q + blob_size + policy_size]
    return SdCredential(
        iv=iv,
        pcrs=PcrSelection(bank, tuple(Pcr(i) for i in range(PCR_COUNT) if mask >> i & 1)),
        primary_alg=alg,
        sealed=split_blob(blob),
        policy_hash=policy,
        aad=raw[:end],
        ciphertext=raw[end:-TAG_SIZE],
        tag=raw[-TAG_SIZE:],
    )


def split_blob(blob: bytes) -> SealedObject:
    parts: list[bytes] = []
    offset = 0
    for _ in range(2):
        if len(blob) < offset + 2:
            raise CredentialCorrupt("systemd credential: TPM2 blob truncated")
        (size,) = struct.unpack_from(">H", blob, offset)
        if not size or len(blob) < offset + 2 + size:
            raise CredentialCorrupt("systemd credential: TPM2 blob truncated")
        parts.append(blob[offset : offset + 2 + size])
        offset += 2 + size
    if offset != len(blob):
        raise CredentialUnsupported("systemd credential: TPM2 blob has extra data (an imported object)")
    return SealedObject(parts[0], parts[1])


def _unseal(esapi: ESAPI, cred: SdCredential) -> Secret:
    from tpmseal.interop.primary import legacy_primary
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.tpm.seal import unseal
    from tpmseal.unlock import read_pcrs

    try:
        with legacy_primary(esapi, cred.primary_alg) as (primary, _):
            return unseal(esapi, primary, cred.sealed, cred.pcrs, None)
    except PolicyMismatch:
        current = read_pcrs(esapi, cred.pcrs) if cred.pcrs.pcrs else {}
        which = "+".join(map(str, cred.pcrs.indexes)) or "none"
        same = set(current) == set(cred.pcrs.indexes) and (
            policy_digest(cred.pcrs.with_values(current), False) == cred.policy_hash
        )
        detail = "" if same else " (the current values do not give the stored policy hash)"
        raise PolicyMismatch(
            f"the TPM refused to unseal the systemd credential: PCR(s) {which} ({cred.pcrs.bank}) "
            f"changed since it was encrypted{detail}",
            "encrypt the credential again for the current state",
        ) from None
    except TokenCorrupt as e:
        raise CredentialCorrupt(f"systemd credential: {e.message}") from None
    except WrongTpm:
        raise WrongTpm(
            "this TPM cannot load the systemd credential's sealed key: it was encrypted on another machine, "
            "the TPM was cleared, or the file was changed",
            "encrypt the secret again on this machine",
        ) from None


def decrypt(
    esapi: ESAPI,
    cred: SdCredential,
    expect_name: str | None = None,
    now: Callable[[], float] = time.time,
) -> tuple[Secret, str]:
    """The secret and its embedded name. The name is checked the way systemd-creds checks it: an
    embedded name must equal ``expect_name`` when one is given."""
    with _unseal(esapi, cred) as raw:
        key = Secret.take(bytearray(hashlib.sha256(raw.buffer).digest()))
    with key:
        plain = aead_open(key.buffer, cred.iv, cred.aad, cred.ciphertext, cred.tag)
    try:
        buf = plain.buffer
        if len(buf) < META.size:
            raise CredentialCorrupt("systemd credential: metadata truncated")
        _, not_after, name_size = META.unpack_from(buf)
        start = _align8(META.size + name_size)
        if name_size > 255 or start > len(buf):
            raise CredentialCorrupt("systemd credential: metadata name too long")
        name = bytes(buf[META.size : META.size + name_size]).decode("utf-8", "replace")
        check_claims(
            name or (expect_name or ""),
            None,
            None if not_after == NO_TIME else not_after // 1_000_000,
            expect_name if name else None,
            None,
            int(now()),
        )
        out = Secret(len(buf) - start)
        out.buffer[:] = memoryview(buf)[start:]
        return out, name
    finally:
        plain.close()


def encrypt(
    esapi: ESAPI,
    secret: Secret,
    name: str,
    selection: PcrSelection,
    not_after: int | None = None,
    now: int | None = None,
) -> bytes:
    """A credential systemd-creds 252 decrypts (as base64 text), sealed the way it seals."""
    from tpmseal.interop.primary import legacy_primary
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.tpm.seal import seal
    from tpmseal.unlock import read_pcrs

    check_name(name)
    if not selection.pcrs:
        raise UsageError(
            "--format=systemd needs at least one PCR in --tpm2-pcrs",
            "systemd-creds 252 cannot decrypt a TPM2 credential bound to no PCR (it records the PCR bank "
            "as invalid); bind it to PCR 7 as systemd-creds does by default",
        )
    if len(secret) > MAX_SECRET:
        raise UsageError(f"the secret has {len(secret)} bytes; a credential holds at most {MAX_SECRET} (1 MiB)")
    created = int(time.time()) if now is None else now
    if not_after is not None and not_after <= created:
        raise UsageError("--not-after is not in the future")
    full = selection.with_values(read_pcrs(esapi, selection))
    policy = policy_digest(full, False)
    mask = sum(1 << i for i in full.indexes)
    with Secret.random(32) as tpm_key, Secret.random(IV_SIZE) as iv_s:
        with legacy_primary(esapi, "auto") as (primary, alg):
            sealed = seal(esapi, primary, tpm_key, policy, None)
        blob = sealed.private + sealed.public
        iv = bytes(iv_s.buffer)
        aad = _pad(MAIN.pack(BY_TPM2_HMAC, 32, 1, IV_SIZE, TAG_SIZE) + iv) + _pad(
            TPM2.pack(mask, ALG_IDS[full.bank], PRIMARY_IDS[alg], len(blob), len(policy)) + blob + policy
        )
        meta = _pad(
            META.pack(created * 1_000_000, NO_TIME if not_after is None else not_after * 1_000_000, len(name))
            + name.encode()
        )
        with Secret(len(meta) + len(secret)) as plain:
            plain.buffer[: len(meta)] = meta
            plain.buffer[len(meta) :] = secret.buffer
            key = Secret.take(bytearray(hashlib.sha256(tpm_key.buffer).digest()))
            with key:
                body = aead_seal(key.buffer, iv, aad, plain.buffer)
    text = base64.b64encode(aad + bytes(body))
    return b"\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\n"
