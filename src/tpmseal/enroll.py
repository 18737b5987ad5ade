# SPDX-License-Identifier: LGPL-2.1-or-later
"""Enroll a TPM-sealed key or a recovery key, in an order where no crash loses a way in.

1. check the volume (no re-encryption in progress); 2. seal a fresh key to the TPM; 3. import a
``tpmseal-pending`` marker naming the keyslot about to be added and its fingerprint (a random PBKDF2
iteration count); 4. ``luksAddKey`` with exactly that count (which checks the unlock key); 5. replace the
marker in place by the real token (one header write), once the header shows no other writer in between;
6. prove it: unseal from the token as written and test the key against its keyslot; 7. only then clean
up what an earlier interrupted command left (now that the unlock key is proven), remove the replaced
tokens' keyslots (those tpmseal can show are TPM keyslots) and ``--wipe-slot`` ones.

A crash after 3 leaves a marker; every key the volume had before still opens it. A keyslot the marker
names is removed later only if it carries the marker's fingerprint: a key another program adds in that
keyslot after the crash does not, and is kept and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tpmseal.errors import HeaderChanged, NoFreeKeyslot, Refused, TpmsealError
from tpmseal.inventory import TPM2, claimants, keyslot_kind, orphan_tokens, proven_orphans
from tpmseal.luks.tokens import (
    NATIVE_TYPE,
    PENDING_TYPE,
    NativeToken,
    Seal,
    new_fingerprint,
    now,
    pending_keyslot,
    pending_marker,
    recovery_marker,
    render_native,
)
from tpmseal.luks.volume import Header, Token, Volume
from tpmseal.recovery import generate_recovery_key
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.unlock import PinSource, TokenOpener, keyslot_passphrase, read_pcrs
from tpmseal.wipe import WipeSpec, remove_keyslot, select, wipe

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

    from tpmseal.tpm.seal import PinKdf

log = logging.getLogger("tpmseal")

KEY_BYTES = 32


@dataclass
class EnrollResult:
    device: str
    keyslot: int
    token: int
    type: str
    pcrs: str = ""
    pcr_bank: str = ""
    pin: bool = False
    verified: str = "unsealed"  # unsealed | key-only (sealed for a PCR state that is not current)
    replaced_keyslots: list[int] = field(default_factory=list)
    wiped_keyslots: list[int] = field(default_factory=list)
    cleaned_up: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # weak settings (tpm/strength.py), also on stderr
    sealed_pcrs: tuple[Pcr, ...] | None = None  # the seal's PCRs with their values, where known

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        del out["sealed_pcrs"]
        return out

    def check_strength(self) -> None:
        """Fill ``warnings`` when the policy binds to nothing about the boot (tpm/strength.py)."""
        from tpmseal.tpm.strength import advice, weakness

        if self.type == "recovery":
            return
        w = weakness(self.sealed_pcrs if self.sealed_pcrs is not None else (int(i) for i in self.pcrs.split("+") if i))
        if w is not None:
            self.warnings.append(f"token {self.token} is {w.message}; {advice(self.pin)}")


def clean_up_interrupted(volume: Volume, header: Header, own: int | None = None) -> list[str]:
    """Remove what an interrupted tpmseal command provably left: keyslots that carry their marker's
    fingerprint (their key was lost), then markers naming no keyslot left to report, and tpmseal or
    recovery tokens bound to no keyslot. Never the last keyslot. Enroll calls it only once the unlock
    key has been proven (its own new keyslot was added with it); marked keyslots that are not provably
    tpmseal's are kept, with their marker, so ``list`` and ``repair`` go on reporting them. ``own``: the
    token id of the running command's own marker, left alone."""
    done = []
    proven, _ = proven_orphans(header)
    if own is not None and own in header.tokens:
        proven = [k for k in proven if k != pending_keyslot(header.tokens[own].data)]
    for k in proven:
        if len(header.keyslots) <= 1:
            log.warning("keyslot %d of %s is an orphan but the only keyslot: kept", k, volume.path)
            continue
        remove_keyslot(volume, header, k)
        done.append(f"removed orphan keyslot {k}")
        header = volume.header()
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        if t.type != PENDING_TYPE or t.id == own:
            continue
        named = pending_keyslot(t.data)
        # a marker is kept while it names a keyslot nobody claims (not provably ours: the admin's to judge)
        if named is not None and named in header.keyslots and not claimants(header, named):
            continue
        volume.remove_token(t.id)
        done.append(f"removed orphan token {t.id}")
    header = volume.header()
    for tid in orphan_tokens(header):
        if header.tokens[tid].type != PENDING_TYPE:
            volume.remove_token(tid)
            done.append(f"removed orphan token {tid}")
    return done


def _expect_seqid(volume: Volume, expected: int | None, step: str) -> int | None:
    """The header's sequence id now; HeaderChanged if it is not ``expected`` (another program wrote)."""
    seen = volume.seqid()
    if expected is not None and seen is not None and seen != expected:
        raise HeaderChanged(
            f"the LUKS2 header of {volume.path} was written by another program {step} (sequence id "
            f"{seen}, tpmseal expected {expected}); tpmseal stopped without touching it further"
        )
    return seen


def free_slots(volume: Volume, header: Header) -> tuple[int, int]:
    slot, token = header.free_keyslot(), header.free_token()
    if slot is None:
        raise NoFreeKeyslot(f"{volume.path} has no free keyslot")
    if token is None:
        raise NoFreeKeyslot(f"{volume.path} has no free token slot", "remove an unused token first")
    return slot, token


def add_with_token(
    volume: Volume,
    unlock_key: Secret,
    new_key: Secret,
    slot: int,
    token_id: int,
    token: dict[str, object] | None,
    purpose: str = "tpm2",
) -> None:
    """Steps 3-5: marker (with the new keyslot's fingerprint), keyslot, token in place of the marker.

    ``token`` None leaves the marker in place (a recovery key is confirmed once shown: ``confirm_recovery``).
    A wrong unlock key makes luksAddKey fail before it writes anything; the marker is removed again. An
    interrupted luksAddKey (Ctrl-C, SIGTERM) is rolled back: a keyslot with our fingerprint is killed.
    """
    from tpmseal.errors import BadUnlockKey, CommandFailed
    from tpmseal.luks.volume import EXIT_WRONG_KEY

    iterations = new_fingerprint()
    seq = volume.seqid()
    volume.import_token(pending_marker(slot, iterations, purpose), token_id)
    seq = _expect_seqid(volume, None if seq is None else seq + 1, "while tpmseal wrote its marker")
    try:
        volume.add_keyslot(unlock_key.buffer, new_key.buffer, slot, iterations)
    except CommandFailed as e:
        if e.returncode > 0:  # cryptsetup refused: it wrote nothing
            volume.remove_token(token_id)
        if e.returncode == EXIT_WRONG_KEY:
            raise BadUnlockKey(f"the given passphrase or key does not open {volume.path}") from None
        raise
    except (KeyboardInterrupt, SystemExit):
        _roll_back(volume, slot, token_id, iterations)
        raise
    _expect_seqid(volume, None if seq is None else seq + 1, "while tpmseal added its keyslot")
    ks = volume.header().keyslots.get(slot)
    if ks is None or ks.iterations != iterations:
        raise HeaderChanged(f"keyslot {slot} of {volume.path} is not the one tpmseal just added")
    if token is not None:
        token["keyslots"] = [str(slot)]
        volume.import_token(token, token_id, replace=True)


def _roll_back(volume: Volume, slot: int, token_id: int, iterations: int) -> None:
    log.error("interrupted while adding keyslot %d of %s; rolling back", slot, volume.path)
    header = volume.header()
    ks = header.keyslots.get(slot)
    if ks is not None and ks.iterations == iterations and ks.kdf_hash == "sha512" and len(header.keyslots) > 1:
        volume.kill_keyslot(slot)
    if token_id in volume.header().tokens:
        volume.remove_token(token_id)


# Seals the fresh key under one kind of policy: (esapi, SRK, key, PIN authValue or None, PIN salt or None)
# -> (the seal for the token, whether its policy holds for the current PCR values).
SealMaker = Callable[["ESAPI", Any, Secret, "Secret | None", "PinKdf | None"], tuple[Seal, bool]]


def enroll_native(
    volume: Volume,
    unlock_key: Secret,
    tpm_device: str,
    make_seal: SealMaker,
    pin: Secret | None = None,
    replace: bool = False,
    wipe_spec: WipeSpec | None = None,
    force: bool = False,
    header: Header | None = None,
) -> EnrollResult:
    """Steps 2-7 for a native token, whatever the policy kind (``make_seal`` computes and seals it)."""
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.seal import PinKdf, pin_auth
    from tpmseal.tpm.srk import ensure_srk
    from tpmseal.unlock import open_native

    if header is None:
        header = volume.header()
    header.refuse_changes(volume.path)
    old = [t for t in header.tokens.values() if t.type == NATIVE_TYPE and t.keyslots]
    if old and not replace:
        ids = ", ".join(f"token {t.id} (keyslot {', '.join(map(str, t.keyslots))})" for t in old)
        raise Refused(
            f"{volume.path} already has a tpmseal token: {ids}",
            "use --replace to rotate it (the new one is proven before the old one goes)",
        )
    slot, token_id = free_slots(volume, header)
    uuid = volume.uuid()

    with open_tpm(tpm_device) as esapi:
        srk_tr, srk_ref = ensure_srk(esapi)
        salt = PinKdf.new() if pin is not None else None  # per-seal salt, scrypt (token version 2)
        auth = pin_auth(pin.buffer, salt) if pin is not None and salt is not None else None
        with Secret.random(KEY_BYTES) as key:
            try:
                new_seal, is_current = make_seal(esapi, srk_tr, key, auth, salt)
            finally:
                if auth is not None:
                    auth.close()
                esapi.tr_close(srk_tr)
            native = NativeToken(keyslots=(), created=now(), srk=srk_ref, seals=(new_seal,), luks_uuid=uuid)
            with keyslot_passphrase(key) as phrase:
                add_with_token(volume, unlock_key, phrase, slot, token_id, render_native(native))
                verified = prove(volume, esapi, slot, token_id, phrase, open_native if is_current else None, pin)

    cleaned = clean_up_interrupted(volume, volume.header())  # the unlock key is proven by now
    result = EnrollResult(
        volume.path, slot, token_id, NATIVE_TYPE, new_seal.pcrs.format(), new_seal.pcrs.bank, pin is not None,
        verified, cleaned_up=cleaned, sealed_pcrs=new_seal.pcrs.pcrs,
    )  # fmt: skip
    return finish(volume, result, old, wipe_spec, tpm_device, force)


def enroll_tpm(
    volume: Volume,
    unlock_key: Secret,
    tpm_device: str,
    selection: PcrSelection,
    pin: Secret | None = None,
    replace: bool = False,
    wipe_spec: WipeSpec | None = None,
    force: bool = False,
    volume_binding: bool = True,
    header: Header | None = None,
) -> EnrollResult:
    """Seal a fresh key for ``selection`` (plus PCR 15 at its boot-time value unless ``volume_binding``
    is off, see boot/measure.py) and add it as a keyslot with a native token."""
    from tpmseal.boot.measure import bind_volume
    from tpmseal.tpm.policy import policy_digest
    from tpmseal.tpm.seal import seal

    if volume_binding:
        selection = bind_volume(selection)

    def make_seal(esapi: ESAPI, srk: Any, key: Secret, auth: Secret | None, salt: PinKdf | None) -> tuple[Seal, bool]:
        current = read_pcrs(esapi, selection) if selection.pcrs else {}
        full = selection.with_values(current)
        policy = policy_digest(full, pin is not None)
        sealed = seal(esapi, srk, key, policy, auth)
        is_current = all(current.get(p.index) == p.value for p in full.pcrs)
        return Seal("enrolled", full, policy, pin is not None, salt, sealed), is_current

    return enroll_native(volume, unlock_key, tpm_device, make_seal, pin, replace, wipe_spec, force, header)


def finish(
    volume: Volume,
    result: EnrollResult,
    old: list[Token],
    wipe_spec: WipeSpec | None,
    tpm_device: str,
    force: bool,
) -> EnrollResult:
    """Step 7, once the new keyslot is proven: remove the replaced tokens and keyslots, then wipe.

    A replaced token's keyslot goes only if tpmseal can show it is a TPM keyslot of that token alone
    (inventory.keyslot_kind): a damaged token naming the passphrase keyslot takes nothing with it."""
    for t in old:
        header = volume.header()
        for k in t.keyslots:
            if k not in header.keyslots:
                continue
            if keyslot_kind(header, k) != TPM2 or [c.id for c in claimants(header, k)] != [t.id]:
                log.warning(
                    "keyslot %d of %s, named by the replaced token %d, is not provably its TPM keyslot: kept "
                    "('tpmseal list' shows it; 'tpmseal wipe-slot --wipe-slot=%d' removes it)", k, volume.path, t.id, k,
                )  # fmt: skip
                continue
            remove_keyslot(volume, header, k)
            result.replaced_keyslots.append(k)
            header = volume.header()
    if wipe_spec is not None:
        header = volume.header()
        result.wiped_keyslots = wipe(
            volume, header, select(volume, header, wipe_spec, frozenset({result.keyslot})), tpm_device, force
        )
    return result


def prove(
    volume: Volume,
    esapi: ESAPI,
    slot: int,
    token_id: int,
    phrase: Secret,
    opener: TokenOpener | None,
    pin: Secret | None,
) -> str:
    """Step 6: open the token as written in the header with ``opener`` (None when its policy does not
    hold now) and test the key against its keyslot. On failure the new keyslot and token are removed
    again and the error is raised."""
    try:
        if opener is not None:
            pin_copy: PinSource | None = (lambda: bytearray(pin.buffer)) if pin is not None else None
            with opener(esapi, volume.header().tokens[token_id].data, pin_copy) as again:
                if again != phrase:
                    raise TpmsealError("the key unsealed from the new token differs from the one sealed")
        if not volume.test_key(phrase.buffer, slot):
            raise TpmsealError(f"the new key does not open keyslot {slot}")
        return "unsealed" if opener is not None else "key-only"
    except BaseException:
        log.error("enrollment could not be proven; removing keyslot %d and token %d again", slot, token_id)
        remove_keyslot(volume, volume.header(), slot)
        if token_id in volume.header().tokens:
            volume.remove_token(token_id)
        raise


def enroll_recovery(volume: Volume, unlock_key: Secret) -> tuple[EnrollResult, Secret]:
    """Add a generated recovery key; the caller shows it once, then calls ``confirm_recovery``. It is
    never stored. Until confirmed, its keyslot is "unconfirmed": not a way in, and ``repair`` removes it."""
    header = volume.header()
    header.refuse_changes(volume.path)
    slot, token_id = free_slots(volume, header)
    key = generate_recovery_key()
    try:
        add_with_token(volume, unlock_key, key, slot, token_id, None, purpose="recovery")
        if not volume.test_key(key.buffer, slot):
            raise TpmsealError(f"the recovery key does not open keyslot {slot}")
    except BaseException:
        key.close()
        raise
    cleaned = clean_up_interrupted(volume, volume.header(), own=token_id)
    result = EnrollResult(volume.path, slot, token_id, "recovery", verified="key-only", cleaned_up=cleaned)
    return result, key


def confirm_recovery(volume: Volume, result: EnrollResult) -> None:
    """The admin has been shown the key: the marker becomes the ``systemd-recovery`` token (one write)."""
    volume.import_token(recovery_marker(result.keyslot), result.token, replace=True)
