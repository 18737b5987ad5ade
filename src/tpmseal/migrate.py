# SPDX-License-Identifier: LGPL-2.1-or-later
"""Move a volume from a ``systemd-tpm2`` or ``clevis`` token to a native tpmseal token, no passphrase needed.

1. open the old token with the TPM (its keyslot passphrase becomes the unlock key) and test it against
   its keyslot; 2. ``enroll.enroll_tpm`` for the same PCRs (or the given selection) and the same PIN — it
   is crash-safe on its own and proves the new token before it returns; 3. unless ``keep``: kill the old
   keyslot, then remove its token (``wipe.remove_keyslot``).

A crash before 3 leaves the old token working (plus, at worst, an orphan keyslot the next enroll removes);
a crash during 3 leaves the proven new token, and at worst an old token bound to no keyslot, which the
next migrate removes. At every point at least one TPM token and every passphrase still open the volume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from tpmseal.errors import BadUnlockKey, TokenError, TpmsealError, UsageError
from tpmseal.luks.volume import Token, Volume
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import PcrSelection
from tpmseal.unlock import PinSource

log = logging.getLogger("tpmseal")

SOURCE_TYPES = ("systemd-tpm2", "clevis")

# Test hook: when TPMSEAL_MIGRATE_FAULT names a step, the process dies there (SIGKILL, no cleanup), so the
# tests can show that a crash between steps never locks anyone out. Steps: "opened" (old token opened,
# nothing written yet), "enrolled" (new token proven, old one untouched).
FAULT_ENV = "TPMSEAL_MIGRATE_FAULT"


@dataclass
class MigrateResult:
    device: str
    source_type: str
    source_token: int
    source_keyslots: list[int]
    keyslot: int  # the new native keyslot
    token: int  # the new native token
    pcrs: str
    pcr_bank: str
    pin: bool
    verified: str
    removed_keyslots: list[int] = field(default_factory=list)
    removed_tokens: list[int] = field(default_factory=list)
    kept: bool = False


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        import signal

        log.error("%s=%s: killing this process", FAULT_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)


def _selection_of(source_type: str, token: Token) -> tuple[PcrSelection, bool]:
    from tpmseal.interop import describe

    return describe(source_type, token.data)


def _open_old(
    volume: Volume, tokens: list[Token], source_type: str, tpm_device: str, pin: PinSource | None
) -> tuple[Token, Secret]:
    """The first token of the type that opens its keyslot now, and its passphrase."""
    from tpmseal.errors import PinRejected, TpmLockout
    from tpmseal.tpm.device import open_tpm
    from tpmseal.unlock import PinGuard, token_openers

    opener = token_openers()[source_type]
    errors: list[TpmsealError] = []
    guard = PinGuard(pin)  # a PIN the TPM refused is not tried on the next token
    with open_tpm(tpm_device) as esapi:
        for t in tokens:
            try:
                phrase = opener(esapi, t.data, guard.source)
            except TpmsealError as e:
                errors.append(e)
                if isinstance(e, PinRejected | TpmLockout):
                    guard.rejected(t.id)
                continue
            if all(volume.test_key(phrase.buffer, k) for k in t.keyslots):
                return t, phrase
            phrase.close()
            errors.append(BadUnlockKey(f"token {t.id}: the unsealed key does not open its keyslot"))
    first = errors[0]
    raise type(first)(f"cannot open the {source_type} token to migrate: {first.message}", first.hint)


def _working_native(volume: Volume, tpm_device: str, pin: PinSource | None) -> tuple[int, int, str, str, bool] | None:
    """A native token that unseals and opens its keyslot now (a migration interrupted after its enroll)."""
    from tpmseal.inventory import native_tokens, run_test_unlock
    from tpmseal.luks.tokens import NATIVE_TYPE

    header = volume.header()
    natives = {t.id: nt for t, nt in native_tokens(header)}
    for r in run_test_unlock(volume, header, tpm_device, pin, only=lambda t: t.type == NATIVE_TYPE):
        if r.ok and r.keyslots:
            first = natives[r.token].seals[0]
            return r.keyslots[0], r.token, first.pcrs.format(), first.pcrs.bank, natives[r.token].pin
    return None


def migrate(
    volume: Volume,
    source_type: str,
    tpm_device: str,
    selection: PcrSelection | None,
    keep: bool,
    pin: PinSource | None = None,
    volume_binding: bool = True,
) -> MigrateResult:
    """Replace a ``systemd-tpm2``/``clevis`` token by a proven native one (same PCRs unless ``selection``).

    If the volume already has a native token that opens it now (e.g. a migration was interrupted after
    its enroll step), no second one is enrolled: the old token is removed (unless ``keep``) and the result
    names the existing one with ``verified`` = ``existing``. A native token that does not open is left
    alone and enroll_tpm refuses (exit 8), as for any enroll without ``--replace``.
    """
    from tpmseal.enroll import enroll_tpm
    from tpmseal.wipe import remove_keyslot

    if source_type not in SOURCE_TYPES:
        raise UsageError(f"cannot migrate from '{source_type}'", f"use one of {', '.join(SOURCE_TYPES)}")
    header = volume.header()
    header.refuse_changes(volume.path)
    candidates = sorted((t for t in header.tokens.values() if t.type == source_type and t.keyslots), key=lambda t: t.id)
    if not candidates:
        raise TokenError(
            f"{volume.path} has no {source_type} token bound to a keyslot", "'tpmseal list' shows its tokens"
        )
    old, phrase = _open_old(volume, candidates, source_type, tpm_device, pin)
    _fault("opened")
    with phrase:
        old_selection, old_pin = _selection_of(source_type, old)
        existing = _working_native(volume, tpm_device, pin)
        if existing is not None:
            slot, token_id, pcrs, bank, has_pin = existing
            verified = "existing"
        else:
            new_pin = Secret.take(pin()) if old_pin and pin is not None else None
            pcrs_to_use = selection if selection is not None else old_selection
            try:
                enrolled = enroll_tpm(
                    volume, phrase, tpm_device, pcrs_to_use, pin=new_pin, volume_binding=volume_binding
                )
            finally:
                if new_pin is not None:
                    new_pin.close()
            slot, token_id, pcrs, bank = enrolled.keyslot, enrolled.token, enrolled.pcrs, enrolled.pcr_bank
            has_pin, verified = enrolled.pin, enrolled.verified
    _fault("enrolled")
    result = MigrateResult(
        volume.path, source_type, old.id, list(old.keyslots), slot, token_id, pcrs, bank, has_pin, verified,
        kept=keep,
    )  # fmt: skip
    if keep:
        return result
    before = set(volume.header().tokens)
    for k in old.keyslots:
        header = volume.header()
        if k in header.keyslots:
            remove_keyslot(volume, header, k)  # keyslot first, then the token it leaves unbound
            result.removed_keyslots.append(k)
    header = volume.header()
    for t in header.tokens.values():
        if t.type == source_type and not t.keyslots:  # this one, or one a crash left unbound before
            volume.remove_token(t.id)
    result.removed_tokens = sorted(before - set(volume.header().tokens))
    return result
