# SPDX-License-Identifier: LGPL-2.1-or-later
"""--wipe-slot: which keyslots a spec selects, and removing them without locking anyone out."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from tpmseal.errors import Refused, UsageError
from tpmseal.inventory import (
    ORPHAN,
    PASSPHRASE,
    RECOVERY,
    TPM2,
    keyslot_kind,
    tpm_opened_keyslots,
)
from tpmseal.luks.tokens import PENDING_TYPE, pending_keyslot
from tpmseal.luks.volume import LUKS2_KEYSLOTS, Header, Volume

log = logging.getLogger("tpmseal")

WIPE_WORDS = ("all", "empty", PASSPHRASE, RECOVERY, TPM2)


@dataclass(frozen=True)
class WipeSpec:
    words: frozenset[str]
    indexes: frozenset[int]


def parse_wipe_spec(text: str) -> WipeSpec:
    """``all``, ``empty``, ``password``, ``recovery``, ``tpm2`` and keyslot numbers, comma-separated."""
    words: set[str] = set()
    indexes: set[int] = set()
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if item in WIPE_WORDS:
            words.add(item)
        elif item.isdigit() and int(item) < LUKS2_KEYSLOTS:
            indexes.add(int(item))
        else:
            raise UsageError(f"invalid --wipe-slot item '{item}'", f"use {', '.join(WIPE_WORDS)} or 0-31")
    if not words and not indexes:
        raise UsageError("--wipe-slot names no keyslot")
    return WipeSpec(frozenset(words), frozenset(indexes))


def select(volume: Volume, header: Header, spec: WipeSpec, keep: frozenset[int] = frozenset()) -> list[int]:
    chosen: set[int] = set()
    for k in header.keyslots:
        kind = keyslot_kind(header, k)
        if "all" in spec.words or k in spec.indexes or kind in spec.words:
            chosen.add(k)
        elif "empty" in spec.words and kind in (PASSPHRASE, ORPHAN) and volume.opens_with_empty_passphrase(k):
            chosen.add(k)
    missing = spec.indexes - set(header.keyslots)
    if missing:
        raise UsageError(f"keyslot(s) {', '.join(map(str, sorted(missing)))} of {volume.path} are not in use")
    return sorted(chosen - keep)


def working_keyslots(volume: Volume, header: Header, candidates: set[int], tpm_device: str | None) -> set[int]:
    """Which of ``candidates`` are a way in, for reasons that hold: a plain passphrase keyslot no token
    claims, a recovery keyslot only systemd-recovery tokens claim, or a TPM2 keyslot a token opens now.
    Re-encryption keyslots, keyslots a damaged or unknown token claims, orphans and unconfirmed recovery
    keys never count (inventory.keyslot_kind)."""
    kinds = {k: keyslot_kind(header, k) for k in candidates}
    working = {k for k, kind in kinds.items() if kind in (PASSPHRASE, RECOVERY)}
    tpm_slots = {k for k, kind in kinds.items() if kind == TPM2}
    if tpm_slots and tpm_device is not None:
        working |= tpm_opened_keyslots(volume, header, tpm_device, tpm_slots)
    return working


def wipe(
    volume: Volume,
    header: Header,
    slots: list[int],
    tpm_device: str | None,
    force: bool = False,
) -> list[int]:
    """Remove ``slots`` (keyslot, then the tokens that named it); refuse to remove the last way in."""
    header.refuse_changes(volume.path)
    if not slots:
        return []
    remaining = set(header.keyslots) - set(slots)
    if not working_keyslots(volume, header, remaining, tpm_device):
        msg = (
            f"wiping keyslot(s) {', '.join(map(str, slots))} would leave {volume.path} with no "
            "working passphrase, recovery key or TPM token"
        )
        if not force:
            raise Refused(msg)
        log.warning("WARNING: %s; going ahead because of --force", msg)
    for k in slots:
        remove_keyslot(volume, header, k)
    return slots


def remove_keyslot(volume: Volume, header: Header, keyslot: int) -> None:
    """Kill the keyslot first (cryptsetup unassigns it from tokens in the same header write), then
    remove the tokens left bound to nothing. A crash between leaves an orphan token, never a keyslot
    whose key is lost.

    ``header`` is what the decision was made on: if another program (which does not take tpmseal's lock)
    has since replaced that keyslot (a new salt) or changed the tokens naming it, nothing is removed and
    HeaderChanged says so."""
    from tpmseal.errors import HeaderChanged

    now = volume.header()

    def naming(h: Header) -> list[tuple[int, str, str]]:
        # a token's other keyslots may have gone in this very command (cryptsetup unassigns killed ones)
        return sorted(
            (t.id, t.type, json.dumps({k: v for k, v in t.data.items() if k != "keyslots"}, sort_keys=True))
            for t in h.tokens.values()
            if keyslot in t.keyslots
        )

    if now.keyslots.get(keyslot) != header.keyslots.get(keyslot) or naming(now) != naming(header):
        raise HeaderChanged(
            f"keyslot {keyslot} of {volume.path} (or a token naming it) was changed by another program since "
            "tpmseal read the header; nothing removed",
            "check it with 'tpmseal list', then run the command again",
        )
    volume.kill_keyslot(keyslot)
    for t in header.tokens.values():
        named = keyslot in t.keyslots or (t.type == PENDING_TYPE and pending_keyslot(t.data) == keyslot)
        if named and not (set(t.keyslots) - {keyslot}):
            volume.remove_token(t.id)
