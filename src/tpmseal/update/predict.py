# SPDX-License-Identifier: LGPL-2.1-or-later
"""Predict the PCR values of the next boot from the current event log and the new boot files.

What the next boot measures differently, and how it is computed (docs/pcr-prediction.md):

- PCR 9, the Linux EFI stub's two tagged events: the command line (LOADED_IMAGE::LoadOptions) as
  SHA-256 of its UTF-16LE encoding plus a NUL, and the initramfs ("Linux initrd") as SHA-256 of the file.
  ``cmdline`` is the command line exactly as the kernel will see it (its /proc/cmdline); under OVMF with
  ``-kernel`` that includes the `` initrd=initrd`` OVMF appends.
- Every other event is replayed as it is: the firmware, its configuration and the boot loader are
  assumed to stay the same. PCR 4 (the boot loader / kernel image) is marked unpredictable when a new
  kernel or initramfs is given: under ``-kernel`` qemu patches the image (with the initramfs size) before
  it is hashed (measured: a bigger initramfs moved PCR 4), and tpmseal does not compute Authenticode
  hashes; do not sign PCR 4 when kernels are updated.
- PCRs extended after boot (10 IMA, 15 tpmseal's volume binding, 11-14 by other tools) are not in the
  firmware log: they are "not predicted"; PCR 15 is approved at its boot-time value (zeros) by reseal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tpmseal.update.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    Event,
    EventLog,
    EventLogError,
    extend,
    initial_value,
)

KERNEL_INITRD_PCR = 9
BOOT_LOADER_PCR = 4

# what a PCR's predicted value rests on
PREDICTED = "predicted"  # recomputed from the given files
REPLAYED = "replayed"  # unchanged events of the current log
UNPREDICTABLE = "unpredictable"  # changes in a way tpmseal cannot compute
NOT_IN_LOG = "not-in-log"  # extended after boot (or never): no prediction


def cmdline_digest(cmdline: str) -> bytes:
    """The EFI stub's LoadOptions measurement: SHA-256 of the UTF-16LE string with its terminating NUL."""
    return hashlib.sha256((cmdline + "\0").encode("utf-16-le")).digest()


def file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


@dataclass
class Prediction:
    bank: str
    values: dict[int, bytes]  # PCR -> predicted value (predicted or replayed PCRs only)
    status: dict[int, str]  # PCR -> PREDICTED / REPLAYED / UNPREDICTABLE / NOT_IN_LOG
    replaced: list[str] = field(default_factory=list)  # which events were replaced, for the admin
    notes: list[str] = field(default_factory=list)

    def usable(self, indexes: set[int]) -> list[int]:
        """The PCRs of ``indexes`` that have no usable predicted value."""
        return sorted(i for i in indexes if self.status.get(i) not in (PREDICTED, REPLAYED))


def _replace(e: Event, bank: str, digest: bytes) -> Event:
    return Event(e.number, e.pcr, e.type, {**e.digests, bank: digest}, e.data)


def predict(
    log: EventLog,
    bank: str = "sha256",
    *,
    initrd_digest: bytes | None = None,
    cmdline: str | None = None,
    kernel_changed: bool = False,
) -> Prediction:
    """Replay ``log`` with the PCR 9 events replaced for the new initramfs / command line."""
    if bank != "sha256" and (initrd_digest is not None or cmdline is not None):
        raise EventLogError("tpmseal predicts PCR 9 in the sha256 bank only")
    events: list[Event] = []
    replaced: list[str] = []
    seen_initrd = seen_cmdline = False
    for e in log.events:
        if e.pcr == KERNEL_INITRD_PCR and e.tag == LINUX_INITRD_TAG and initrd_digest is not None:
            e = _replace(e, bank, initrd_digest)
            seen_initrd = True
            replaced.append(f"event {e.number} (PCR 9, Linux initrd) := sha256 of the initramfs")
        elif e.pcr == KERNEL_INITRD_PCR and e.tag == LINUX_LOAD_OPTIONS_TAG and cmdline is not None:
            e = _replace(e, bank, cmdline_digest(cmdline))
            seen_cmdline = True
            replaced.append(f"event {e.number} (PCR 9, LoadOptions) := sha256 of the UTF-16LE command line")
        events.append(e)
    if initrd_digest is not None and not seen_initrd:
        raise EventLogError(
            "the event log has no 'Linux initrd' event in PCR 9: the current boot's initramfs was not "
            "measured by the EFI stub, so its replacement cannot be predicted"
        )
    if cmdline is not None and not seen_cmdline:
        raise EventLogError(
            "the event log has no LoadOptions event in PCR 9: the current kernel command line was not "
            "measured by the EFI stub, so a new one cannot be predicted"
        )
    values = log.replay(bank, events)
    status = {i: REPLAYED for i in values}
    if seen_initrd or seen_cmdline:
        status[KERNEL_INITRD_PCR] = PREDICTED
    notes: list[str] = []
    loader = any(e.pcr == BOOT_LOADER_PCR and e.type == EV_EFI_BOOT_SERVICES_APPLICATION for e in log.events)
    if (kernel_changed or initrd_digest is not None) and loader:
        status[BOOT_LOADER_PCR] = UNPREDICTABLE
        values.pop(BOOT_LOADER_PCR, None)
        notes.append(
            "PCR 4 holds the hash of the kernel image as the firmware loaded it; a new kernel changes it, "
            "and under a direct kernel boot (qemu -kernel) so does a new initramfs size (qemu patches the "
            "image header); tpmseal does not compute this: do not sign PCR 4 across updates"
        )
    for i in range(24):
        status.setdefault(i, NOT_IN_LOG)
    return Prediction(bank, values, status, replaced, notes)


def replay_with_initial(log: EventLog, bank: str) -> dict[int, bytes]:
    """Replay, plus the reset value of every PCR the log does not touch (for display)."""
    values = log.replay(bank)
    size = log.banks[bank]
    return {i: values.get(i, initial_value(i, size, log.startup_locality)) for i in range(24)}


def self_check(log: EventLog, current_cmdline: str, bank: str = "sha256") -> bool | None:
    """Does the log's LoadOptions event equal the measurement of ``current_cmdline``? None: no such event.

    A True here shows that the way tpmseal computes the command-line digest matches this platform."""
    for e in log.events:
        if e.pcr == KERNEL_INITRD_PCR and e.tag == LINUX_LOAD_OPTIONS_TAG:
            return e.digests.get(bank) == cmdline_digest(current_cmdline)
    return None


__all__ = ["Prediction", "cmdline_digest", "extend", "file_digest", "predict", "self_check"]
