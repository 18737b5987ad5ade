# SPDX-License-Identifier: LGPL-2.1-or-later
"""Volume binding: once the initramfs has unlocked its volumes, measure them into PCR 15.

Tokens are bound by default to PCR 15 at its boot-time value (all zeros). This step runs when the
initramfs has unlocked every volume it needs and before anything from those volumes runs: it extends
PCR 15 with one event per unlocked dm-crypt volume (identified by its LUKS UUID and mapping name) and a
final separator. From then on, for the rest of this boot, no process sees the value the tokens are bound
to, so a volume swapped in by an attacker (carrying a copy of a token) cannot boot into code that asks
the TPM for the real key: the TPM refuses.

The extension is TPM2_PCR_Event, so the TPM hashes the event into every active bank.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tpmseal.tpm.pcrs import BANKS, Pcr, PcrSelection

VOLUME_PCR = 15
SEPARATOR = b"tpmseal:leave-unlock-phase:v1"
_CRYPT_UUID = re.compile(r"^CRYPT-LUKS[12]-([0-9a-f]{32})-(.+)$")


@dataclass(frozen=True)
class Unlocked:
    uuid: str  # LUKS UUID, dashed
    name: str  # dm name

    def event(self) -> bytes:
        return f"tpmseal:volume:v1:{self.uuid}:{self.name}".encode()


def unlocked_volumes(sysfs: str = "/sys") -> list[Unlocked]:
    """Active dm-crypt mappings of LUKS volumes, from sysfs (no tools needed in the initramfs)."""
    out: list[Unlocked] = []
    block = os.path.join(sysfs, "block")
    try:
        names = sorted(os.listdir(block))
    except FileNotFoundError:
        return out
    for dev in names:
        try:
            with open(os.path.join(block, dev, "dm", "uuid"), encoding="ascii") as f:
                dm_uuid = f.read().strip()
        except OSError:
            continue
        m = _CRYPT_UUID.match(dm_uuid)
        if not m:
            continue
        h = m.group(1)
        out.append(Unlocked(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", m.group(2)))
    return sorted(out, key=lambda u: (u.uuid, u.name))


def measure(tpm_device: str, volumes: list[Unlocked], pcr: int = VOLUME_PCR) -> int:
    """Extend ``pcr`` with one event per volume, then the separator. Returns the number of events."""
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    from tpmseal.tpm.device import open_tpm, tpm_error

    events = [v.event() for v in volumes] + [SEPARATOR]
    with open_tpm(tpm_device) as esapi:
        for data in events:
            try:
                esapi.pcr_event(ESYS_TR.PCR0 + pcr, data)
            except TSS2_Exception as e:
                raise tpm_error(e, f"extending PCR {pcr}") from None
    return len(events)


def bind_volume(selection: PcrSelection) -> PcrSelection:
    """``selection`` plus PCR 15 at its boot-time value (zeros), unless it already names PCR 15."""
    if VOLUME_PCR in selection.indexes:
        return selection
    zero = Pcr(VOLUME_PCR, bytes(BANKS[selection.bank][0]))
    return PcrSelection(selection.bank, tuple(sorted((*selection.pcrs, zero), key=lambda p: p.index)))


def is_volume_bound(selection: PcrSelection) -> bool:
    return VOLUME_PCR in selection.indexes


def volume_binding_hint() -> str:
    return (
        "this token is bound to PCR 15 (volume binding): the TPM releases it only in the initramfs, "
        "before the unlocked volumes were measured. For a disk opened after boot, enroll it with "
        "--no-volume-binding, or open it with a key file kept on the (already unlocked) root file system"
    )
