# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal repair DEVICE``: remove what an interrupted enroll, wipe-slot or migrate left behind.

What counts as left behind (and nothing else is touched):

- an orphan keyslot: named by a ``tpmseal-pending`` marker, claimed by no token, and carrying the
  fingerprint the marker recorded before the keyslot existed (a random PBKDF2 iteration count, see
  docs/token-format.md), and not the only keyslot. Its key was lost in the crash (or, for a recovery key,
  never shown), so it opens nothing anyone knows. A marked keyslot without the fingerprint — say an
  admin's ``cryptsetup luksAddKey`` that landed there after the crash — is not provably an orphan: it is
  kept, and so is its marker, so ``list`` goes on reporting it;
- a ``tpmseal-pending`` marker whose keyslot was never added, or is claimed by a token;
- a ``tpmseal-tpm2`` or ``systemd-recovery`` token bound to no keyslot, and a ``systemd-tpm2`` or ``clevis``
  token bound to no keyslot (a crash between killing a keyslot and removing its token): it opens nothing.

With a TPM (``--tpm2-device``), every TPM token is also unsealed and tested against its keyslot; one whose
key does not open it (a keyslot killed halfway, or a token re-pointed) is reported as dead, never removed.
Keyslots go first, through ``wipe.remove_keyslot`` (keyslot, then the tokens it leaves unbound), as
everywhere else. Runs under the volume lock; refuses while a re-encryption is in progress.
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
    dead_tokens: dict[int, str] = field(default_factory=dict)  # TPM tokens whose key does not open their keyslot
    actions: list[str] = field(default_factory=list)


def provable_orphans(header: Header) -> tuple[list[int], list[int]]:
    """(orphan keyslots safe to remove, marker-named keyslots that are kept)."""
    from tpmseal.inventory import proven_orphans

    proven, kept = proven_orphans(header)
    if len(header.keyslots) <= len(proven):  # never the last keyslot
        kept, proven = sorted(kept + proven[:1]), proven[1:]
    return proven, kept


def repair(volume: Volume, tpm_device: str | None = None) -> RepairResult:
    """Clean up ``volume``; the caller holds the volume lock."""
    from tpmseal.enroll import clean_up_interrupted
    from tpmseal.luks.tokens import CLEVIS_TYPE, SYSTEMD_TPM2_TYPE

    header = volume.header()
    header.refuse_changes(volume.path)
    result = RepairResult(volume.path)
    tokens_before = set(header.tokens)
    keyslots_before = set(header.keyslots)
    _, result.kept_keyslots = provable_orphans(header)
    result.actions += clean_up_interrupted(volume, header)
    for k in result.kept_keyslots:
        result.actions.append(f"kept keyslot {k}: named by an unfinished enrollment, but not provably its keyslot")
    header = volume.header()
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        if t.type in (SYSTEMD_TPM2_TYPE, CLEVIS_TYPE) and not t.keyslots:
            volume.remove_token(t.id)
            result.actions.append(f"removed {t.type} token {t.id} bound to no keyslot")
    if tpm_device is not None:
        result.dead_tokens = dead_tokens(volume, volume.header(), tpm_device)
        for tid, why in result.dead_tokens.items():
            result.actions.append(f"token {tid} is dead: {why}")
    header = volume.header()
    result.removed_keyslots = sorted(keyslots_before - set(header.keyslots))
    result.removed_tokens = sorted(tokens_before - set(header.tokens))
    return result


def dead_tokens(volume: Volume, header: Header, tpm_device: str) -> dict[int, str]:
    """TPM tokens whose unsealed key does not open their keyslot (the TPM opened them: policy held)."""
    from tpmseal.inventory import run_test_unlock

    return {
        r.token: f"the key it unseals does not open keyslot(s) {', '.join(map(str, r.keyslots))}"
        for r in run_test_unlock(volume, header, tpm_device, only=lambda t: bool(t.keyslots))
        if r.error_kind == "KeyMismatch"
    }


def cmd_repair(args: argparse.Namespace) -> int:
    from tpmseal.cliopts import print_json as _print_json
    from tpmseal.lock import volume_lock
    from tpmseal.luks.volume import Volume

    volume = Volume(args.device)
    volume.check_exists()
    with volume_lock(volume.path):
        result = repair(volume, args.tpm2_device)
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
    for tid in result.dead_tokens:
        print(
            f"warning: token {tid} opens nothing; remove it and its keyslot with 'tpmseal wipe-slot' once "
            "another way in works, then enroll again",
            file=sys.stderr,
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tpmseal repair`` to the top-level parser's subparsers."""
    r = sub.add_parser("repair", help="remove orphan keyslots and tokens left by an interrupted command")
    r.add_argument("device", metavar="DEVICE", help="LUKS2 block device or image file")
    r.add_argument("--json", action="store_true", help="print JSON (removed keyslots and tokens)")
    r.add_argument(
        "--tpm2-device", default=None, metavar="TCTI",
        help="also unseal every TPM token and test it against its keyslot (reports dead tokens)",
    )  # fmt: skip
    r.set_defaults(func=cmd_repair)
