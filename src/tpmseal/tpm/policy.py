# SPDX-License-Identifier: LGPL-2.1-or-later
"""Policy digests computed in software, exactly as the TPM extends them (TPM 2.0 part 3, 23.x).

Computing the digest ourselves lets an admin enroll for PCR values that are not the current ones
(``7:sha256=HEX``, predicted states) and saves the TPM a trial session.
"""

from __future__ import annotations

import hashlib
import struct

from tpmseal.tpm.pcrs import BANKS, PcrSelection

TPM_CC_POLICY_PCR = 0x0000017F
TPM_CC_POLICY_AUTH_VALUE = 0x0000016B
POLICY_HASH = "sha256"  # the sealed object's nameAlg and the policy session's hash
POLICY_DIGEST_SIZE = 32


def tpm_name(public: bytes) -> bytes:
    """TPM name of a marshaled TPM2B_PUBLIC whose nameAlg is SHA-256: nameAlg || SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", 0x000B) + hashlib.sha256(public[2:]).digest()


def marshal_pcr_selection(bank: str, indexes: tuple[int, ...]) -> bytes:
    """TPML_PCR_SELECTION with a single TPMS_PCR_SELECTION (3-byte bitmap)."""
    bitmap = bytearray(3)
    for i in indexes:
        bitmap[i // 8] |= 1 << (i % 8)
    return struct.pack(">IHB", 1, BANKS[bank][1], 3) + bytes(bitmap)


def pcr_digest(selection: PcrSelection) -> bytes:
    """Hash of the concatenated expected PCR values, in index order (every value must be known)."""
    h = hashlib.new(POLICY_HASH)
    for p in selection.pcrs:
        if p.value is None:
            raise ValueError(f"PCR {p.index} has no expected value")
        h.update(p.value)
    return h.digest()


def extend(digest: bytes, *parts: bytes) -> bytes:
    h = hashlib.new(POLICY_HASH)
    h.update(digest)
    for part in parts:
        h.update(part)
    return h.digest()


def policy_digest(selection: PcrSelection, with_pin: bool) -> bytes:
    """The authPolicy of a sealed object: PolicyPCR (if any PCRs), then PolicyAuthValue (if a PIN)."""
    digest = bytes(POLICY_DIGEST_SIZE)
    if selection.pcrs:
        digest = extend(
            digest,
            struct.pack(">I", TPM_CC_POLICY_PCR),
            marshal_pcr_selection(selection.bank, selection.indexes),
            pcr_digest(selection),
        )
    if with_pin:
        digest = extend(digest, struct.pack(">I", TPM_CC_POLICY_AUTH_VALUE))
    return digest
