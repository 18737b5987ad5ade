# SPDX-License-Identifier: LGPL-2.1-or-later
"""Find the passphrase of a volume from its TPM tokens, and unlock with it.

Used by ``tpmseal unlock`` (running system, non-systemd initramfs hook) and by the ask-password agent.
Every attempt ends in one log line per volume: which token opened it, or why none did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tpmseal.errors import PinRejected, PinRequired, TpmLockout, TpmsealError
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.unlock import PinGuard, PinSource, token_openers


@dataclass
class Attempt:
    token: int
    type: str
    error: str | None = None
    error_kind: str | None = None


@dataclass
class Found:
    """A passphrase that opens ``keyslot``, from ``token``; the caller closes ``passphrase``."""

    token: int
    type: str
    keyslot: int
    passphrase: Secret


@dataclass
class Outcome:
    device: str
    found: Found | None
    attempts: list[Attempt] = field(default_factory=list)

    def summary(self) -> str:
        if self.found:
            f = self.found
            return f"{self.device}: unlocked with token {f.token} ({f.type}), keyslot {f.keyslot}"
        if not self.attempts:
            return f"{self.device}: no TPM token; leaving it to the passphrase prompt"
        why = "; ".join(f"token {a.token} ({a.type}): {a.error}" for a in self.attempts)
        return f"{self.device}: no TPM token opened it ({why}); leaving it to the passphrase prompt"


def find_passphrase(volume: Volume, tpm_device: str, pin: PinSource | None = None) -> Outcome:
    """Try every TPM token of ``volume`` in token order; test each key against its keyslot. The volume's
    lock is held shared meanwhile, so a tpmseal writer (an enroll after boot) never changes the header
    under it."""
    from tpmseal.lock import volume_read_lock

    with volume_read_lock(volume.path):
        return _find_passphrase(volume, tpm_device, pin)


def _find_passphrase(volume: Volume, tpm_device: str, pin: PinSource | None) -> Outcome:
    from tpmseal.boot.measure import note_tpm_used
    from tpmseal.tpm.device import open_tpm

    header = volume.header()
    openers = token_openers()
    tokens = [t for t in sorted(header.tokens.values(), key=lambda t: t.id) if t.type in openers and t.keyslots]
    out = Outcome(volume.path, None)
    if not tokens:
        return out
    guard = PinGuard(pin)  # a PIN the TPM refused is not tried on the next token
    try:
        with open_tpm(tpm_device) as esapi:
            note_tpm_used()
            for t in tokens:
                try:
                    phrase = openers[t.type](esapi, t.data, guard.source)
                except PinRequired as e:
                    out.attempts.append(
                        Attempt(
                            t.id,
                            t.type,
                            "needs a PIN (" + ("none given" if pin else "not asked at unattended boot") + ")",
                            type(e).__name__,
                        )
                    )
                    continue
                except TpmsealError as e:
                    out.attempts.append(Attempt(t.id, t.type, e.message, type(e).__name__))
                    if isinstance(e, PinRejected | TpmLockout):
                        guard.rejected(t.id)
                    continue
                slot = next((k for k in t.keyslots if volume.test_key(phrase.buffer, k)), None)
                if slot is None:
                    phrase.close()
                    out.attempts.append(
                        Attempt(t.id, t.type, "the unsealed key does not open its keyslot", "KeyMismatch")
                    )
                    continue
                out.found = Found(t.id, t.type, slot, phrase)
                return out
    except TpmsealError as e:  # no TPM at all
        out.attempts += [Attempt(t.id, t.type, e.message, type(e).__name__) for t in tokens[len(out.attempts) :]]
    return out


def unlock(volume: Volume, name: str, tpm_device: str, pin: PinSource | None = None) -> Outcome:
    """Unseal and map ``volume`` as /dev/mapper/NAME. The caller reports ``outcome.summary()``."""
    outcome = find_passphrase(volume, tpm_device, pin)
    if outcome.found is not None:
        with outcome.found.passphrase as phrase:
            volume.activate(name, phrase.buffer, outcome.found.keyslot)
    return outcome
