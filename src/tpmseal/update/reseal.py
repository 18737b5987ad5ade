# SPDX-License-Identifier: LGPL-2.1-or-later
"""Approve boot states for ``authorize`` seals (reseal), drop stale approvals (cleanup), and say whether
each volume will unlock in a predicted state (check-reboot). None of this needs the volume key.

A token is rewritten in place (``cryptsetup token import --token-replace``, one header write) under the
volume lock. Approvals are only ever added for the predicted or booted state and removed only when
another approval matches the booted state, so a crash or a wrong prediction never removes the
approval that opens the volume today.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tpmseal.boot.measure import VOLUME_PCR
from tpmseal.errors import TpmsealError, UsageError
from tpmseal.luks.tokens import NATIVE_TYPE, Approval, NativeToken, Seal, parse_native, render_native
from tpmseal.tpm.pcrs import BANKS, Pcr, PcrSelection
from tpmseal.update.description import SealUnauthenticated, Trusted, authenticate
from tpmseal.update.predict import PREDICTED, REPLAYED, Prediction
from tpmseal.update.signed import (
    CURRENT,
    NEXT_BOOT,
    make_approval,
    matching,
    verify_approval_offline,
    verify_ticket,
)

if TYPE_CHECKING:
    from tpmseal.luks.volume import Header, Volume
    from tpmseal.update.signed import PolicyKey

log = logging.getLogger("tpmseal")


class NotPredictable(TpmsealError):
    default_hint = (
        "see docs/pcr-prediction.md: sign only PCRs tpmseal can predict (9: kernel command line and initramfs)"
    )


@dataclass
class SealChange:
    token: int
    seal: str
    action: str  # added | replaced | unchanged | removed | kept | skipped | refused
    approvals: list[str] = field(default_factory=list)
    detail: str = ""
    index: int | None = None  # the seal's position in the token's "seals" (labels need not be unique)


@dataclass
class Verdict:
    device: str
    token: int
    will_unlock: bool
    approval: str | None  # the approved policy that matches
    reasons: list[str] = field(default_factory=list)


def signed_tokens(header: Header) -> list[tuple[int, NativeToken]]:
    """Native tokens with at least one ``authorize`` seal (unreadable tokens are skipped with a warning)."""
    out = []
    for t in header.tokens.values():
        if t.type != NATIVE_TYPE:
            continue
        try:
            nt = parse_native(t.data)
        except TpmsealError as e:
            log.warning("token %d: %s", t.id, e)
            continue
        if any(s.signed is not None for s in nt.seals):
            out.append((t.id, nt))
    return out


def _seal_with(seal: Seal, approvals: tuple[Approval, ...]) -> Seal:
    assert seal.signed is not None
    signed = replace(seal.signed, approved=approvals)
    first = approvals[0].pcrs
    merged = {p.index: p for p in (*first.pcrs, *signed.fixed.pcrs)}
    return replace(seal, signed=signed, pcrs=PcrSelection(first.bank, tuple(merged[i] for i in sorted(merged))))


def _with_approvals(token: NativeToken, seal: Seal, approvals: tuple[Approval, ...]) -> NativeToken:
    new = _seal_with(seal, approvals)
    return replace(token, seals=tuple(new if s is seal else s for s in token.seals))


def target_state(
    seal: Seal, values: dict[int, bytes], statuses: dict[int, str] | None, signed_pcrs: tuple[int, ...] | None = None
) -> PcrSelection:
    """The approved selection for a state: the enrolled PCRs (``signed_pcrs``, by default the seal's
    description: never the PCRs its approvals name) at ``values``, PCR 15 at zeros."""
    assert seal.signed is not None
    if signed_pcrs is None:
        if seal.signed.description is None:
            raise SealUnauthenticated(f"seal '{seal.label}' has no signed description")
        signed_pcrs = seal.signed.description.signed_pcrs
    indexes = sorted(signed_pcrs)
    bank = seal.pcrs.bank
    usable = (PREDICTED, REPLAYED)
    missing = [
        i
        for i in indexes
        if i != VOLUME_PCR and (i not in values or (statuses is not None and statuses.get(i) not in usable))
    ]
    if missing:
        why = ", ".join(f"{i} ({statuses.get(i, 'no value') if statuses else 'no value'})" for i in missing)
        raise NotPredictable(f"seal '{seal.label}' signs PCR(s) that have no predicted value: {why}")
    pcrs = tuple(Pcr(i, bytes(BANKS[bank][0]) if i == VOLUME_PCR else values[i]) for i in indexes)
    return PcrSelection(bank, pcrs)


def _trust(key: PolicyKey, token_id: int, index: int, seal: Seal, changes: list[SealChange]) -> Trusted | None:
    """The seal's trusted view, or None (recorded as skipped / refused) when reseal must not touch it."""
    assert seal.signed is not None
    labels = [a.label for a in seal.signed.approved]
    if seal.signed.key_name != key.name:
        changes.append(SealChange(token_id, seal.label, "skipped", labels,
                                  "enrolled with another policy key: not touched", index))  # fmt: skip
        return None
    try:
        return authenticate(key, seal, f"token {token_id} seal {index} ('{seal.label}')")
    except SealUnauthenticated as e:
        changes.append(SealChange(token_id, seal.label, "refused", labels, e.message, index))
        return None


def _own_key(tokens: list[tuple[int, NativeToken]], key: PolicyKey) -> None:
    if not any(s.signed is not None and s.signed.key_name == key.name for _, t in tokens for s in t.seals):
        raise UsageError(
            "the volume's tokens were enrolled with another policy key than the one given",
            "use --private-key with the key the volume was enrolled with",
        )


def _write(volume: Volume, header: Header, token_id: int, token: NativeToken, seals: list[Seal]) -> None:
    """Replace the token, unless another program (which does not take tpmseal's lock) changed it since it
    was read: then nothing is written and the caller is told (review R8)."""
    from tpmseal.errors import HeaderChanged

    data = render_native(replace(token, seals=tuple(seals)))
    data["keyslots"] = header.tokens[token_id].data.get("keyslots", data["keyslots"])
    now_there = volume.header().tokens.get(token_id)
    if now_there is None or now_there.data != header.tokens[token_id].data:
        raise HeaderChanged(
            f"token {token_id} of {volume.path} was changed by another program while reseal ran; nothing written",
            "check it with 'tpmseal list', then run reseal again",
        )
    volume.import_token(data, token_id, replace=True)


def approve(
    volume: Volume,
    tpm_device: str | None,
    key: PolicyKey,
    values: dict[int, bytes],
    label: str = NEXT_BOOT,
    statuses: dict[int, str] | None = None,
) -> list[SealChange]:
    """Sign the state ``values`` for every authorize seal of the volume and store it under ``label``
    (replacing an older approval with that label, unless it is the one matching ``values`` already).

    Only seals whose signed description verifies under ``key`` are touched, and the PCR set signed is the
    description's; approvals that do not verify under ``key`` (or cover another PCR set) are dropped, never
    kept or used as a template. Seals of another key are skipped, seals without a valid description
    refused (action "refused": the caller must fail). With a TPM, each new signature is checked by the TPM
    (LoadExternal, VerifySignature, FlushContext) before the token is written."""
    from tpmseal.lock import volume_lock

    changes: list[SealChange] = []
    with volume_lock(volume.path):
        header = volume.header()
        tokens = signed_tokens(header)
        if not tokens:
            raise UsageError(
                f"{volume.path} has no tpmseal token with a signed policy",
                "enroll with 'tpmseal enroll --tpm2-public-key-pcrs=9 …' first",
            )
        _own_key(tokens, key)
        for token_id, token in tokens:
            seals = list(token.seals)
            for i, seal in enumerate(token.seals):
                if seal.signed is None:
                    continue
                trusted = _trust(key, token_id, i, seal, changes)
                if trusted is None:
                    continue
                dropped = [a.label for a in seal.signed.approved if a not in trusted.approvals]
                note = f"dropped approval(s) that do not verify: {', '.join(dropped)}" if dropped else ""
                target = target_state(seal, values, statuses, trusted.signed_pcrs)
                if target.indexes != trusted.signed_pcrs:  # cannot happen: target_state builds exactly these
                    raise SealUnauthenticated(f"seal '{seal.label}': refusing to sign PCRs {list(target.indexes)}")
                same = [a for a in trusted.approvals if a.pcrs == target]
                if same:
                    if dropped:
                        seals[i] = _seal_with(seal, trusted.approvals)
                    detail = "; ".join(filter(None, ["this state is approved already", note]))
                    labels = [a.label for a in trusted.approvals]
                    changes.append(SealChange(token_id, seal.label, "unchanged", labels, detail, i))
                    continue
                approval = make_approval(key, target, seal.signed.policy_ref, label)
                if not verify_approval_offline(key.public, approval, seal.signed.policy_ref):
                    raise TpmsealError("the new signature does not verify against the policy key")
                if tpm_device is not None:
                    from tpmseal.tpm.device import open_tpm

                    with open_tpm(tpm_device) as esapi:
                        verify_ticket(esapi, seal.signed, approval)
                kept = tuple(a for a in trusted.approvals if a.label != label)
                action = "replaced" if len(kept) != len(trusted.approvals) else "added"
                seals[i] = _seal_with(seal, (*kept, approval))
                changes.append(SealChange(token_id, seal.label, action, [a.label for a in (*kept, approval)], note, i))
            if seals != list(token.seals):
                _write(volume, header, token_id, token, seals)
    return changes


def cleanup(volume: Volume, current: dict[int, bytes], key: PolicyKey) -> list[SealChange]:
    """Drop approvals that do not match the booted state (PCR 15 ignored: it is extended by design after
    unlock); the matching one becomes "current". When none matches, nothing is removed. Only trusted
    approvals (see approve) can match; the others go with the stale ones."""
    from tpmseal.lock import volume_lock

    changes: list[SealChange] = []
    with volume_lock(volume.path):
        header = volume.header()
        tokens = signed_tokens(header)
        if tokens:
            _own_key(tokens, key)
        for token_id, token in tokens:
            seals = list(token.seals)
            for i, seal in enumerate(token.seals):
                if seal.signed is None:
                    continue
                trusted = _trust(key, token_id, i, seal, changes)
                if trusted is None:
                    continue
                keep = matching(trusted.approvals, current, frozenset({VOLUME_PCR}))
                if not keep:
                    labels = [a.label for a in seal.signed.approved]
                    why = "no trusted approved policy matches the booted state; nothing removed"
                    changes.append(SealChange(token_id, seal.label, "kept", labels, why, i))
                    continue
                relabeled = tuple(replace(a, label=CURRENT) if j == 0 else a for j, a in enumerate(keep))
                if relabeled == seal.signed.approved:
                    changes.append(SealChange(token_id, seal.label, "unchanged", [a.label for a in relabeled], "", i))
                    continue
                removed = [a.label for a in seal.signed.approved if a not in keep]
                seals[i] = _seal_with(seal, relabeled)
                why = "removed: " + (", ".join(removed) or "none") + "; the booted one is now 'current'"
                changes.append(SealChange(token_id, seal.label, "removed", [a.label for a in relabeled], why, i))
            if seals != list(token.seals):
                _write(volume, header, token_id, token, seals)
    return changes


def check(device: str, header: Header, values: dict[int, bytes], statuses: dict[int, str] | None) -> list[Verdict]:
    """Will each tpmseal token of the volume unlock in the state ``values`` (PCR 15 taken at zeros)?"""
    from tpmseal.unlock import changed_pcrs

    out: list[Verdict] = []
    for t in header.tokens.values():
        if t.type != NATIVE_TYPE or not t.keyslots:
            continue
        try:
            token = parse_native(t.data)
        except TpmsealError as e:
            out.append(Verdict(device, t.id, False, None, [f"token unreadable: {e}"]))
            continue
        state = dict(values)
        bank = token.seals[0].pcrs.bank
        state[VOLUME_PCR] = bytes(BANKS[bank][0])
        unknown = {i for i, s in (statuses or {}).items() if s not in (PREDICTED, REPLAYED)} - {VOLUME_PCR}
        reasons: list[str] = []
        verdict: Verdict | None = None
        for seal in token.seals:
            if seal.signed is None:
                bound = set(seal.pcrs.indexes)
                if bound & unknown:
                    reasons.append(f"seal '{seal.label}': PCR(s) {sorted(bound & unknown)} cannot be predicted")
                    continue
                changed = changed_pcrs(seal, state)
                if not changed:
                    verdict = Verdict(device, t.id, True, seal.label)
                    break
                reasons.append(f"seal '{seal.label}' (fixed PCR policy): PCR(s) {', '.join(map(str, changed))} differ")
                continue
            fixed_bad = [p.index for p in seal.signed.fixed.pcrs if state.get(p.index) != p.value]
            for a in seal.signed.approved:
                bound = set(a.pcrs.indexes)
                if bound & unknown:
                    reasons.append(f"approved '{a.label}': PCR(s) {sorted(bound & unknown)} cannot be predicted")
                    continue
                differ = [p.index for p in a.pcrs.pcrs if state.get(p.index) != p.value] + fixed_bad
                if differ:
                    reasons.append(f"approved '{a.label}': PCR(s) {', '.join(map(str, differ))} differ")
                elif not verify_approval_offline(seal.signed.public_key, a, seal.signed.policy_ref):
                    reasons.append(f"approved '{a.label}': its signature does not verify")
                else:
                    verdict = Verdict(device, t.id, True, a.label)
                    break
            if verdict is not None:
                break
        out.append(verdict or Verdict(device, t.id, False, None, reasons))
    return out


def prediction_values(pred: Prediction) -> tuple[dict[int, bytes], dict[int, str]]:
    return dict(pred.values), dict(pred.status)
