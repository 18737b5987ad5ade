# SPDX-License-Identifier: LGPL-2.1-or-later
"""The signed description of an ``authorize`` seal: which PCRs its approvals must cover, fixed at enrollment.

reseal signs PolicyPCR digests with the policy key. Whoever holds the disk can rewrite the header, so the
PCR set reseal signs must not come from the header's approvals: it comes from the seal's *description*,
signed by the policy key at enrollment and verified by reseal under the key it holds itself (never under
a public key read from the header). The signed bytes bind the key name, policy_ref, bank, the signed PCR
indexes, the fixed PCRs with their values, the PIN flag, the sealed object's TPM name (which covers its
authPolicy) and the policy digest. Copying a description and its signature into another seal is useless:
it verifies only next to the same sealed object and policy_ref, and then reseal signs exactly the enrolled
PCR set for it — what it signs for the real seal anyway.

Domain separation from approvals: an approval signature is over SHA-256(policy ‖ policy_ref), at most
96 bytes hashed; a description signature is over SHA-256 of a message that starts with MAGIC and is longer
than that, so neither can stand in for the other (and the TPM never sees a description's digest).

Canonical form, version 1 (all integers big-endian):
MAGIC ‖ u16 version ‖ u16 len ‖ key_name ‖ u16 len ‖ policy_ref ‖ u16 TPM_ALG of the bank ‖
u8 n ‖ n signed PCR indexes (u8 each) ‖ u8 m ‖ m fixed PCRs (u8 index ‖ u16 len ‖ value) ‖ u8 pin ‖
u16 len ‖ sealed object name ‖ u16 len ‖ policy_digest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpmseal.boot.measure import VOLUME_PCR
from tpmseal.errors import TokenCorrupt, UsageError
from tpmseal.luks.tokens import DESCRIPTION_VERSION, Approval, Description, Seal
from tpmseal.tpm.pcrs import BANKS, PcrSelection
from tpmseal.update.signed import key_name, verify_approval_offline

if TYPE_CHECKING:
    from tpmseal.update.signed import PolicyKey

MAGIC = b"tpmseal authorize seal description\x00"
# PCRs that software can reset to zeros after boot without a reboot (TCG PC Client: 16 "debug" from any
# locality, 23 "application support" from locality 0): a policy over them binds nothing.
RESETTABLE_PCRS = frozenset({16, 23})

REENROLL_HINT = (
    "re-enroll the volume ('tpmseal enroll DEVICE --replace --tpm2-public-key-pcrs=…'): a new seal gets a "
    "signed description and a fresh policy_ref; until then the current approvals keep working"
)


class SealUnauthenticated(TokenCorrupt):
    """An authorize seal whose description is missing or does not verify under the held policy key."""

    default_hint = REENROLL_HINT


def canonical(
    name: bytes,
    policy_ref: bytes,
    bank: str,
    signed_pcrs: tuple[int, ...],
    fixed: PcrSelection,
    pin: bool,
    object_name: bytes,
    policy: bytes,
    version: int = DESCRIPTION_VERSION,
) -> bytes:
    def blob(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    out = MAGIC + struct.pack(">H", version) + blob(name) + blob(policy_ref) + struct.pack(">H", BANKS[bank][1])
    out += struct.pack(">B", len(signed_pcrs)) + bytes(signed_pcrs)
    out += struct.pack(">B", len(fixed.pcrs))
    for p in fixed.pcrs:
        out += struct.pack(">B", p.index) + blob(p.value or b"")
    return out + struct.pack(">B", int(pin)) + blob(object_name) + blob(policy)


def seal_message(seal: Seal, name: bytes, signed_pcrs: tuple[int, ...], version: int = DESCRIPTION_VERSION) -> bytes:
    """The canonical description of ``seal`` as it would be signed under the key named ``name``."""
    assert seal.signed is not None
    s = seal.signed
    return canonical(name, s.policy_ref, seal.pcrs.bank, signed_pcrs, s.fixed, seal.pin,
                     key_name(seal.sealed.public), seal.policy_digest, version)  # fmt: skip


def check_pcr_choice(signed_pcrs: tuple[int, ...], fixed: tuple[int, ...]) -> None:
    """Refuse PCR sets any local program could satisfy: resettable PCRs, or nothing but PCR 15."""
    bad = sorted(RESETTABLE_PCRS & {*signed_pcrs, *fixed})
    if bad:
        raise UsageError(
            f"PCR(s) {', '.join(map(str, bad))} can be reset to zeros by any program on the running system "
            "(tpm2_pcrreset): a policy over them opens the volume on any boot",
            "bind boot-state PCRs (e.g. 7, 9, 11) and leave out 16 and 23",
        )
    if not (set(signed_pcrs) - {VOLUME_PCR}) and not fixed:
        raise UsageError(
            "a policy over PCR 15 alone holds on any boot until the volumes are measured",
            "name the boot-state PCRs to sign, e.g. --tpm2-public-key-pcrs=7+9",
        )


def sign_description(key: PolicyKey, seal: Seal, signed_pcrs: tuple[int, ...]) -> Description:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    check_pcr_choice(signed_pcrs, seal.signed.fixed.indexes if seal.signed else ())
    message = seal_message(seal, key.name, signed_pcrs)
    return Description(DESCRIPTION_VERSION, signed_pcrs, key.private.sign(message, ec.ECDSA(hashes.SHA256())))


def description_verifies(public: bytes, seal: Seal) -> bool:
    """Whether the seal's description verifies under ``public`` (a marshaled TPM2B_PUBLIC, P-256)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from tpmseal.update.signed import _xy

    assert seal.signed is not None
    desc = seal.signed.description
    if desc is None:
        return False
    x, y = _xy(public)
    pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    try:
        pub.verify(desc.signature, seal_message(seal, key_name(public), desc.signed_pcrs, desc.version),
                   ec.ECDSA(hashes.SHA256()))  # fmt: skip
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Trusted:
    """What reseal may rely on for one seal: the enrolled PCR indexes, and the approvals that are real."""

    bank: str
    signed_pcrs: tuple[int, ...]
    approvals: tuple[Approval, ...]  # verify under the held key, cover exactly signed_pcrs, PCR 15 at zeros


def approval_is_trusted(key: PolicyKey, seal: Seal, signed_pcrs: tuple[int, ...], a: Approval) -> bool:
    assert seal.signed is not None
    zeros = bytes(BANKS[seal.pcrs.bank][0])
    return (
        a.pcrs.bank == seal.pcrs.bank
        and a.pcrs.indexes == signed_pcrs
        and all(p.value == zeros for p in a.pcrs.pcrs if p.index == VOLUME_PCR)
        and verify_approval_offline(key.public, a, seal.signed.policy_ref)
    )


def authenticate(key: PolicyKey, seal: Seal, where: str) -> Trusted:
    """The trusted view of an authorize seal whose key_name is ``key``'s; SealUnauthenticated otherwise.

    Everything is checked under ``key`` (the one reseal holds): the header's public_key must be it, the
    description must verify under it, and only approvals that verify under it and cover the enrolled
    PCRs are returned."""
    s = seal.signed
    assert s is not None and s.key_name == key.name
    if s.public_key != key.public:
        raise SealUnauthenticated(f"{where}: its public_key is not the policy key's, although key_name is")
    if s.description is None:
        raise SealUnauthenticated(
            f"{where} has no signed description (enrolled before descriptions were introduced): reseal "
            "cannot tell which PCRs it must sign for it, and refuses it"
        )
    if not description_verifies(key.public, seal):
        raise SealUnauthenticated(
            f"{where}: its description does not verify under the policy key: the header was edited",
            "someone rewrote this token; check 'tpmseal list', then re-enroll with --replace",
        )
    required = s.description.signed_pcrs
    if RESETTABLE_PCRS & set(required) or (not set(required) - {VOLUME_PCR} and not s.fixed.pcrs):
        raise SealUnauthenticated(f"{where}: its enrolled PCR set {list(required)} could be satisfied by anyone")
    trusted = tuple(a for a in s.approved if approval_is_trusted(key, seal, required, a))
    return Trusted(seal.pcrs.bank, required, trusted)
