# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal repair DEVICE``: remove what an interrupted enroll, wipe-slot or migrate left behind.

What counts as left behind (and nothing else is touched):

- an orphan keyslot: named by a ``tpmseal-pending`` marker (enroll writes the marker before
  ``luksAddKey``), claimed by no other token, made with PBKDF2 (as enroll makes it), and not the only
  keyslot. Its key was lost in the crash, so it opens nothing. A keyslot that fails any of these tests is
  not provably an orphan: it is kept, and so is its marker, so ``list`` goes on reporting it;
- a ``tpmseal-pending`` marker whose keyslot was never added;
- a ``tpmseal-tpm2``, ``systemd-recovery``, ``systemd-tpm2`` or ``clevis`` token bound to no keyslot (a
  crash between killing a keyslot and removing its token): such a token opens nothing.

Keyslots go first, through ``wipe.remove_keyslot`` (keyslot, then the tokens it leaves unbound), as
everywhere else. Runs under the volume lock; needs no key and no TPM.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI imports this module for every command, --help included
    from tpmseal.luks.volume import Header, Volume


@dataclass
class RepairResult:
    device: str
    removed_keyslots: list[int] = field(default_factory=list)
    removed_tokens: list[int] = field(default_factory=list)
    kept_keyslots: list[int] = field(default_factory=list)  # named by a marker, but not provably orphans
    actions: list[str] = field(default_factory=list)


def provable_orphans(header: Header) -> tuple[list[int], list[int]]:
    """(orphan keyslots safe to remove, marker-named keyslots that are kept)."""
    from tpmseal.inventory import orphan_keyslots

    safe, kept = [], []
    for k in orphan_keyslots(header):
        ks = header.keyslots[k]
        if ks.kdf == "pbkdf2" and len(header.keyslots) > 1:
            safe.append(k)
        else:
            kept.append(k)
    return safe, kept


def repair(volume: Volume) -> RepairResult:
    """Clean up ``volume``; the caller holds the volume lock."""
    from tpmseal.enroll import clean_up_interrupted
    from tpmseal.luks.tokens import (
        CLEVIS_TYPE,
        NATIVE_TYPE,
        PENDING_TYPE,
        RECOVERY_TYPE,
        SYSTEMD_TPM2_TYPE,
        pending_keyslot,
    )
    from tpmseal.wipe import remove_keyslot

    # token types that carry (or mark) a key: bound to no keyslot, they are of no use to anyone
    unbound_removable = (NATIVE_TYPE, RECOVERY_TYPE, SYSTEMD_TPM2_TYPE, CLEVIS_TYPE)

    header = volume.header()
    result = RepairResult(volume.path)
    tokens_before = set(header.tokens)
    keyslots_before = set(header.keyslots)
    safe, kept = provable_orphans(header)
    result.kept_keyslots = kept
    if not kept:
        result.actions += clean_up_interrupted(volume, header)
    else:
        for k in safe:
            remove_keyslot(volume, header, k)
            result.actions.append(f"removed orphan keyslot {k}")
            header = volume.header()
        for t in sorted(header.tokens.values(), key=lambda t: t.id):
            if t.type == PENDING_TYPE and pending_keyslot(t.data) not in kept:
                volume.remove_token(t.id)
                result.actions.append(f"removed orphan token {t.id}")
        for k in kept:
            result.actions.append(f"kept keyslot {k}: named by an unfinished enrollment, but not provably an orphan")
    header = volume.header()
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        if t.type in unbound_removable and not t.keyslots:
            volume.remove_token(t.id)
            result.actions.append(f"removed {t.type} token {t.id} bound to no keyslot")
    header = volume.header()
    result.removed_keyslots = sorted(keyslots_before - set(header.keyslots))
    result.removed_tokens = sorted(tokens_before - set(header.tokens))
    return result


def cmd_repair(args: argparse.Namespace) -> int:
    from tpmseal.cliopts import print_json as _print_json
    from tpmseal.lock import volume_lock
    from tpmseal.luks.volume import Volume

    volume = Volume(args.device)
    volume.check_exists()
    with volume_lock(volume.path):
        result = repair(volume)
    if args.json:
        _print_json(asdict(result))
        return 0
    for line in result.actions:
        print(line)
    if not result.actions:
        print(f"{volume.path}: nothing to repair")
    for k in result.kept_keyslots:
        print(
            f"warning: keyslot {k} is named by an unfinished enrollment but was not made by it as far as "
            f"tpmseal can tell; remove it yourself if you are sure (tpmseal wipe-slot --wipe-slot={k})",
            file=sys.stderr,
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tpmseal repair`` to the top-level parser's subparsers."""
    r = sub.add_parser("repair", help="remove orphan keyslots and tokens left by an interrupted command")
    r.add_argument("device", metavar="DEVICE", help="LUKS2 block device or image file")
    r.add_argument("--json", action="store_true", help="print JSON (removed keyslots and tokens)")
    r.set_defaults(func=cmd_repair)
