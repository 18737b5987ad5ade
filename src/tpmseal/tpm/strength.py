# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which PCR selections bind a key to nothing about the boot, said where the user looks.

A policy protects only through the PCRs the firmware and the boot chain extend. Three selections hold on
any system booted on the machine: no PCR at all; only PCR 15 (the volume binding, which every boot starts
at zero, and which another operating system need not extend); only PCRs that software may reset to zero
(16, debug, and 23, application support, resettable at locality 0), with or without PCR 15. A PCR sealed at
its reset value (zeros; all ones for the DRTM PCRs 17-22) records nothing either: no stage of this boot
extended it, and another system need not. Where the expected values are known (native tokens), such PCRs
do not count. ``enroll`` warns, ``list`` and ``doctor`` flag such tokens, ``creds encrypt`` warns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tpmseal.boot.measure import VOLUME_PCR
from tpmseal.tpm.pcrs import Pcr

RESETTABLE_PCRS = frozenset({16, 23})
DRTM_PCRS = range(17, 23)  # all ones until a dynamic launch extends them

NO_PCR = "no-pcr"
VOLUME_ONLY = "volume-only"
RESETTABLE_ONLY = "resettable-only"
RESET_VALUE = "reset-value"


_ANY = "so any system booted on this machine (another OS from a USB stick, a changed boot chain) can unseal it"
MESSAGES = {
    NO_PCR: f"bound to no PCR: the TPM checks nothing about the boot, {_ANY}",
    VOLUME_ONLY: f"bound only to PCR 15 (the volume binding), which is zero at the start of every boot, {_ANY}",
    RESET_VALUE: "bound only to PCRs sealed at their reset value (zeros, or all ones for 17-22): nothing in this "
    f"boot extended them and another system need not either, {_ANY}",
    RESETTABLE_ONLY: "bound only to resettable PCRs (16, 23; with or without PCR 15): any program that reaches "
    f"the TPM can reset them to zero and they record nothing about the boot, {_ANY}",
}


@dataclass(frozen=True)
class Weakness:
    kind: str  # no-pcr | volume-only | resettable-only | reset-value
    message: str


def at_reset_value(pcr: Pcr) -> bool:
    """Whether ``pcr`` is expected at the value it has before anything extends it."""
    if pcr.value is None:
        return False
    reset = b"\xff" if pcr.index in DRTM_PCRS else b"\x00"
    return pcr.value == reset * len(pcr.value)


def _index(p: int | Pcr) -> int:
    return p.index if isinstance(p, Pcr) else p


def boot_pcrs(pcrs: Iterable[int | Pcr]) -> list[int]:
    """The PCRs of ``pcrs`` that record something about this boot that a later stage cannot undo (a PCR
    given with its expected value counts only when that is not its reset value)."""
    return sorted({
        _index(p) for p in pcrs
        if _index(p) != VOLUME_PCR and _index(p) not in RESETTABLE_PCRS
        and not (isinstance(p, Pcr) and at_reset_value(p))
    })  # fmt: skip


def weakness(pcrs: Iterable[int | Pcr]) -> Weakness | None:
    """Why a policy over ``pcrs`` (indexes, or PCRs with their expected values) holds on any system booted on
    this machine, or None when it does not."""
    items = list(pcrs)
    idx = {_index(p) for p in items}
    if boot_pcrs(items):
        return None
    if idx - {VOLUME_PCR} - RESETTABLE_PCRS:
        return Weakness(RESET_VALUE, MESSAGES[RESET_VALUE])
    kind = NO_PCR if not idx else RESETTABLE_ONLY if idx & RESETTABLE_PCRS else VOLUME_ONLY
    return Weakness(kind, MESSAGES[kind])


def weakness_of(seals_indexes: Iterable[Iterable[int | Pcr]]) -> Weakness | None:
    """The weakness of a token with several seals: any weak seal is a way in."""
    for indexes in seals_indexes:
        w = weakness(indexes)
        if w is not None:
            return w
    return None


def advice(pin: bool) -> str:
    base = "bind to boot-state PCRs, e.g. --tpm2-pcrs=7 (see tpmseal(7), 'Choosing PCRs')"
    return base + ("; until then only the PIN protects it" if pin else "")
