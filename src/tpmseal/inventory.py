# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a volume holds (list) and which TPM tokens open it now (test-unlock)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tpmseal.boot.measure import is_volume_bound
from tpmseal.errors import PinRejected, TpmLockout, TpmsealError
from tpmseal.interop import FOREIGN_TPM_TYPES, describe
from tpmseal.luks.tokens import (
    CLEVIS_TYPE,
    NATIVE_TYPE,
    PENDING_TYPE,
    RECOVERY_TYPE,
    NativeToken,
    Pending,
    parse_native,
    parse_pending,
    pending_keyslot,
)
from tpmseal.luks.volume import Header, Token, Volume
from tpmseal.tpm.pcrs import Pcr
from tpmseal.unlock import PinGuard, PinSource, changed_pcrs, read_pcrs, token_openers

TPM_TYPES = (NATIVE_TYPE, "systemd-tpm2")

# Keyslot kinds; the first three are also words --wipe-slot takes. A keyslot is a way in (wipe.py) only as
# a PASSPHRASE or RECOVERY slot, or as a TPM2 slot whose token opens it now; no other kind ever counts.
PASSPHRASE = "password"  # a plain keyslot no token claims
RECOVERY = "recovery"  # claimed only by well-formed systemd-recovery tokens
TPM2 = "tpm2"  # claimed only by readable TPM tokens, and made with the parameters of a TPM keyslot
ORPHAN = "orphan"  # named by a tpmseal-pending marker, claimed by no token: an unfinished enrollment
UNCONFIRMED = "unconfirmed"  # a recovery key added by a command that ended before showing it
REENCRYPT = "reencrypt"  # one of a re-encryption's own keyslots
DAMAGED = "damaged"  # claimed by a token tpmseal cannot read, or by a TPM token on a non-TPM keyslot
FOREIGN = "foreign"  # claimed by a token of a type tpmseal does not know (whatever its name)
CLEVIS = "clevis"


@dataclass
class KeyslotInfo:
    keyslot: int
    kind: str  # password | recovery | tpm2 | orphan | <other token type>
    tokens: list[int]
    kdf: str


@dataclass
class ApprovalInfo:
    label: str
    pcrs: str
    created: str
    signature_valid: bool  # under the seal's public_key and policy_ref (checked in software)
    covers_enrolled_pcrs: bool | None  # its PCRs are the description's; None without a valid description


@dataclass
class SealInfo:
    """One seal of a native token: every one is listed, so a seal added to the header shows."""

    index: int
    label: str
    kind: str  # pcr | authorize
    pcrs: str  # kind pcr: the bound PCRs; authorize: the fixed ones
    pin: bool
    key_name: str | None = None  # authorize: the policy key's TPM name (hex)
    description: str | None = None  # authorize: valid | invalid | missing (under the seal's public_key)
    enrolled_pcrs: str | None = None  # authorize: the PCRs its description says every approval binds
    approvals: list[ApprovalInfo] = field(default_factory=list)


def seal_infos(nt: NativeToken) -> list[SealInfo]:
    """Every seal and approval, with whether its signatures verify under the seal's own public key (that
    key is the header's word; reseal checks under the key it holds, and the TPM under the sealed object's)."""
    out = []
    for i, s in enumerate(nt.seals):
        if s.signed is None:
            out.append(SealInfo(i, s.label, "pcr", s.pcrs.format(), s.pin))
            continue
        from tpmseal.update.description import description_verifies
        from tpmseal.update.signed import key_name, verify_approval_offline

        sp = s.signed
        try:
            own = key_name(sp.public_key) == sp.key_name
            desc_ok = own and description_verifies(sp.public_key, s)
        except TpmsealError:
            own = desc_ok = False
        desc = sp.description
        info = SealInfo(i, s.label, "authorize", sp.fixed.format(), s.pin, sp.key_name.hex(),
                        "missing" if desc is None else "valid" if desc_ok else "invalid",
                        "+".join(map(str, desc.signed_pcrs)) if desc is not None else None)  # fmt: skip
        for a in sp.approved:
            try:
                sig = own and verify_approval_offline(sp.public_key, a, sp.policy_ref)
            except TpmsealError:
                sig = False
            covers = a.pcrs.indexes == desc.signed_pcrs if desc is not None and desc_ok else None
            info.approvals.append(ApprovalInfo(a.label, a.pcrs.format(), a.created, sig, covers))
        out.append(info)
    return out


@dataclass
class TokenInfo:
    token: int
    type: str
    keyslots: list[int]
    orphan: bool = False  # a tpmseal token without keyslot, or an unfinished enrollment
    pcrs: str | None = None
    pcr_bank: str | None = None
    pin: bool | None = None
    seals: int | None = None
    created: str | None = None
    policy_satisfied: bool | None = None  # None: not checked (no TPM, or not a TPM token we read)
    changed_pcrs: list[int] = field(default_factory=list)
    volume_binding: bool | None = None  # bound to PCR 15 (closed after the boot's unlock phase)
    error: str | None = None
    seal_details: list[SealInfo] = field(default_factory=list)  # native tokens: every seal
    weak_binding: str | None = None  # no-pcr | volume-only | resettable-only (tpm/strength.py); None: not weak
    # whether the key it unseals opens its keyslot(s); None: not tried (no TPM, PCRs differ, PIN, not native)
    opens_keyslot: bool | None = None


@dataclass
class VolumeReport:
    device: str
    keyslots: list[KeyslotInfo]
    tokens: list[TokenInfo]
    orphan_keyslots: list[int]
    orphan_tokens: list[int]
    tpm_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def native_tokens(header: Header) -> list[tuple[Token, NativeToken]]:
    """Every parseable native token; corrupt ones are skipped (list reports them)."""
    out = []
    for t in header.tokens.values():
        if t.type == NATIVE_TYPE:
            try:
                out.append((t, parse_native(t.data)))
            except TpmsealError:
                continue
    return out


def markers(header: Header) -> dict[int, list[Pending | None]]:
    """keyslot -> the tpmseal-pending markers naming it (None: a marker tpmseal could not have written)."""
    out: dict[int, list[Pending | None]] = {}
    for t in header.tokens.values():
        if t.type == PENDING_TYPE:
            ks = pending_keyslot(t.data)
            if ks is not None:
                out.setdefault(ks, []).append(parse_pending(t.data))
    return out


def claimants(header: Header, keyslot: int) -> list[Token]:
    return [t for t in header.tokens_of(keyslot) if t.type != PENDING_TYPE]


def orphan_keyslots(header: Header) -> list[int]:
    """Keyslots an unfinished tpmseal command may have added: named by a pending marker, claimed by no
    token. Only ``proven_orphans`` tells which of them tpmseal really made."""
    named = markers(header)
    return sorted(k for k in named if k in header.keyslots and not claimants(header, k))


def proven_orphans(header: Header) -> tuple[list[int], list[int]]:
    """(orphan keyslots the header proves tpmseal made, orphan keyslots it does not).

    Proof: the keyslot has exactly the fingerprint its marker recorded before the keyslot existed — a
    PBKDF2-SHA512 iteration count drawn at random from FINGERPRINT_ITERATIONS. A keyslot another program
    added there later (argon2, a benchmarked PBKDF2 count, systemd's 1000) does not have it; a version 1
    marker recorded none, so what it names is never provable.
    """
    named = markers(header)
    proven: list[int] = []
    unproven: list[int] = []
    for k in orphan_keyslots(header):
        ks = header.keyslots[k]
        fingerprints = {m.iterations for m in named[k] if m is not None and m.iterations is not None}
        ok = ks.plain and ks.kdf == "pbkdf2" and ks.kdf_hash == "sha512" and ks.iterations in fingerprints
        (proven if ok else unproven).append(k)
    return proven, unproven


def orphan_tokens(header: Header) -> list[int]:
    return sorted(
        t.id
        for t in header.tokens.values()
        if t.type == PENDING_TYPE or (t.type in (NATIVE_TYPE, RECOVERY_TYPE) and not t.keyslots)
    )


def token_readable(t: Token) -> bool:
    """Whether tpmseal can read this token as the type it claims to be (unknown types: False)."""
    if t.type == NATIVE_TYPE:
        try:
            parse_native(t.data)
        except TpmsealError:
            return False
        return True
    if t.type in FOREIGN_TPM_TYPES:
        try:
            describe(t.type, t.data)
        except TpmsealError:
            return False
        return True
    if t.type == RECOVERY_TYPE:  # as systemd-cryptenroll and tpmseal write it
        return set(t.data) == {"type", "keyslots"} and len(t.keyslots) == 1
    return False


def keyslot_kind(header: Header, keyslot: int, orphans: list[int] | None = None) -> str:
    """What a keyslot is, from what the header proves (``orphans`` is accepted for old callers)."""
    ks = header.keyslots[keyslot]
    if not ks.plain:
        return REENCRYPT
    claims = claimants(header, keyslot)
    if not claims:
        named = markers(header).get(keyslot)
        if named is None:
            return PASSPHRASE
        return UNCONFIRMED if any(m is not None and m.purpose == RECOVERY for m in named) else ORPHAN
    types = {t.type for t in claims}
    known = set(TPM_TYPES) | {RECOVERY_TYPE, CLEVIS_TYPE}
    if not types <= known:
        return FOREIGN
    if not all(token_readable(t) for t in claims):
        return DAMAGED
    if types <= set(TPM_TYPES):
        return TPM2 if ks.made_for_random_key() else DAMAGED
    if types == {RECOVERY_TYPE}:
        return RECOVERY
    if types == {CLEVIS_TYPE}:
        return CLEVIS
    return DAMAGED  # a keyslot two kinds of token claim: neither claim can be trusted


def tpm_opened_keyslots(volume: Volume, header: Header, tpm_device: str, keyslots: set[int]) -> set[int]:
    """Which of ``keyslots`` (TPM2 kind) a TPM token opens now: unsealed and tested, keyslot by keyslot.
    A PIN token whose PCR policy holds counts too: without the PIN, that is all tpmseal can check."""
    from tpmseal.errors import PinRequired
    from tpmseal.tpm.device import open_tpm

    openers = token_openers()
    candidates = [
        t
        for t in sorted(header.tokens.values(), key=lambda t: t.id)
        if t.type in openers and set(t.keyslots) & keyslots
    ]
    out: set[int] = set()
    if not candidates:
        return out
    try:
        with open_tpm(tpm_device) as esapi:
            for t in candidates:
                mine = set(t.keyslots) & keyslots
                try:
                    with openers[t.type](esapi, t.data, None) as phrase:
                        out |= {k for k in mine if volume.test_key(phrase.buffer, k)}
                except PinRequired:
                    out |= mine
                except TpmsealError:
                    continue
    except TpmsealError:  # the TPM could not be opened: no TPM slot is proven to work
        return out
    return out


def report(volume: Volume, header: Header, tpm_device: str | None) -> VolumeReport:
    orphans = orphan_keyslots(header)
    keyslots = [
        KeyslotInfo(k, keyslot_kind(header, k, orphans), [t.id for t in header.tokens_of(k)], ks.kdf)
        for k, ks in sorted(header.keyslots.items())
    ]
    orphan_ids = orphan_tokens(header)
    tokens: list[TokenInfo] = []
    natives: list[tuple[TokenInfo, NativeToken]] = []
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        info = TokenInfo(t.id, t.type, list(t.keyslots), orphan=t.id in orphan_ids)
        if t.type == NATIVE_TYPE:
            try:
                nt = parse_native(t.data)
            except TpmsealError as e:
                info.error = e.message
            else:
                first = nt.seals[0]
                info.pcrs = first.pcrs.format()
                info.pcr_bank = first.pcrs.bank
                info.pin = nt.pin
                info.seals = len(nt.seals)
                info.created = nt.created
                info.volume_binding = all(is_volume_bound(x.pcrs) for x in nt.seals)
                info.seal_details = seal_infos(nt)
                info.weak_binding = _weak_kind(*(x.pcrs.pcrs for x in nt.seals))
                natives.append((info, nt))
        elif t.type in FOREIGN_TPM_TYPES:
            try:
                sel, info.pin = describe(t.type, t.data)
                info.pcrs, info.pcr_bank = sel.format(), sel.bank
                info.weak_binding = _weak_kind(sel.indexes)
            except TpmsealError as e:
                info.error = e.message
        tokens.append(info)
    tpm_error = None
    if natives and tpm_device is not None:
        tpm_error = _check_policies(tpm_device, natives)
        if tpm_error is None:
            _check_keys(volume, header, tpm_device, natives)
    return VolumeReport(volume.path, keyslots, tokens, orphans, orphan_ids, tpm_error)


def _weak_kind(*seals_indexes: tuple[int, ...] | tuple[Pcr, ...]) -> str | None:
    from tpmseal.tpm.strength import weakness_of

    w = weakness_of(seals_indexes)
    return w.kind if w is not None else None


def _check_policies(tpm_device: str, natives: list[tuple[TokenInfo, NativeToken]]) -> str | None:
    """Compare each token's sealed PCR values with the current ones (reads PCRs, unseals nothing)."""
    from tpmseal.tpm.device import open_tpm

    try:
        with open_tpm(tpm_device) as esapi:
            for info, nt in natives:
                best: list[int] | None = None
                for s in nt.seals:
                    changed = changed_pcrs(s, read_pcrs(esapi, s.pcrs)) if s.pcrs.pcrs else []
                    if best is None or len(changed) < len(best):
                        best = changed
                info.changed_pcrs = best or []
                info.policy_satisfied = not best
    except TpmsealError as e:
        return e.message
    return None


def _check_keys(volume: Volume, header: Header, tpm_device: str, natives: list[tuple[TokenInfo, NativeToken]]) -> None:
    """Unseal each token whose policy holds and needs no PIN, and test its key against its keyslot(s):
    a keyslot whose key material is gone (a luksKillSlot interrupted halfway) is found here, not at boot."""
    by_id = {info.token: info for info, nt in natives if info.policy_satisfied and not nt.pin and info.keyslots}
    if not by_id:
        return
    for r in run_test_unlock(volume, header, tpm_device, only=lambda t: t.id in by_id):
        if r.ok:
            by_id[r.token].opens_keyslot = True
        elif r.error_kind == "KeyMismatch":
            by_id[r.token].opens_keyslot = False


@dataclass
class UnlockResult:
    token: int
    type: str
    keyslots: list[int]
    ok: bool
    error: str | None = None
    error_kind: str | None = None


def run_test_unlock(
    volume: Volume,
    header: Header,
    tpm_device: str,
    pin: PinSource | None = None,
    only: Callable[[Token], bool] | None = None,
) -> list[UnlockResult]:
    """Unseal every TPM token tpmseal can open and test its key against its keyslot(s). Maps nothing."""
    from tpmseal.tpm.device import open_tpm

    openers = token_openers()
    candidates = [t for t in sorted(header.tokens.values(), key=lambda t: t.id) if t.type in openers]
    if only is not None:
        candidates = [t for t in candidates if only(t)]
    if not candidates:
        return []
    results: list[UnlockResult] = []
    guard = PinGuard(pin)
    try:
        with open_tpm(tpm_device) as esapi:
            for t in candidates:
                r = UnlockResult(t.id, t.type, list(t.keyslots), False)
                try:
                    if not t.keyslots:
                        raise TpmsealError(f"token {t.id} is not bound to any keyslot")
                    with openers[t.type](esapi, t.data, guard.source) as phrase:
                        r.ok = all(volume.test_key(phrase.buffer, ks) for ks in t.keyslots)
                    if not r.ok:
                        r.error, r.error_kind = "the unsealed key does not open its keyslot", "KeyMismatch"
                except TpmsealError as e:
                    r.error, r.error_kind = e.message, type(e).__name__
                    if isinstance(e, PinRejected | TpmLockout):
                        guard.rejected(t.id)
                results.append(r)
    except TpmsealError as e:  # the TPM could not be opened
        done = {r.token for r in results}
        results += [
            UnlockResult(t.id, t.type, list(t.keyslots), False, e.message, type(e).__name__)
            for t in candidates
            if t.id not in done
        ]
    return results
