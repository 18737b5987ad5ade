# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which PCR selections bind a key to nothing about the boot, said where the user looks.

A policy protects only through the PCRs the firmware and the boot chain extend. Three selections hold on
any system booted on the machine: no PCR at all; only PCR 15 (the volume binding, which every boot starts
at zero, and which another operating system need not extend); only PCRs that software may reset to zero
(16, debug, and 23, application support, resettable at locality 0), with or without PCR 15. ``enroll``
warns, ``list`` and ``doctor`` flag such tokens, ``creds encrypt`` warns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tpmseal.boot.measure import VOLUME_PCR

RESETTABLE_PCRS = frozenset({16, 23})

NO_PCR = "no-pcr"
VOLUME_ONLY = "volume-only"
RESETTABLE_ONLY = "resettable-only"


_ANY = "so any system booted on this machine (another OS from a USB stick, a changed boot chain) can unseal it"
MESSAGES = {
    NO_PCR: f"bound to no PCR: the TPM checks nothing about the boot, {_ANY}",
    VOLUME_ONLY: f"bound only to PCR 15 (the volume binding), which is zero at the start of every boot, {_ANY}",
    RESETTABLE_ONLY: "bound only to resettable PCRs (16, 23; with or without PCR 15): any program that reaches "
    f"the TPM can reset them to zero and they record nothing about the boot, {_ANY}",
}


@dataclass(frozen=True)
class Weakness:
    kind: str  # no-pcr | volume-only | resettable-only
    message: str


def boot_pcrs(indexes: Iterable[int]) -> list[int]:
    """The PCRs of ``indexes`` that record something about this boot that a later stage cannot undo."""
    return sorted({i for i in indexes if i != VOLUME_PCR and i not in RESETTABLE_PCRS})


def weakness(indexes: Iterable[int]) -> Weakness | None:
    """Why a policy over ``indexes`` holds on any system booted on this machine, or None when it does not."""
    idx = set(indexes)
    if boot_pcrs(idx):
        return None
    kind = NO_PCR if not idx else RESETTABLE_ONLY if idx & RESETTABLE_PCRS else VOLUME_ONLY
    return Weakness(kind, MESSAGES[kind])


def weakness_of(seals_indexes: Iterable[Iterable[int]]) -> Weakness | None:
    """The weakness of a token with several seals: any weak seal is a way in."""
    for indexes in seals_indexes:
        w = weakness(indexes)
        if w is not None:
            return w
    return None


def advice(pin: bool) -> str:
    base = "bind to boot-state PCRs, e.g. --tpm2-pcrs=7 (see tpmseal(7), 'Choosing PCRs')"
    return base + ("; until then only the PIN protects it" if pin else "")
