# SPDX-License-Identifier: LGPL-2.1-or-later
"""Volume binding: once the initramfs has unlocked its volumes, measure them into PCR 15.

Tokens are bound by default to PCR 15 at its boot-time value (all zeros). This step runs when the
initramfs has unlocked every volume it needs and before anything from those volumes runs: it extends
PCR 15 with one event per unlocked dm-crypt volume (identified by its LUKS UUID and mapping name) and a
final separator. From then on, for the rest of this boot, no process sees the value the tokens are bound
to, so a volume swapped in by an attacker (carrying a copy of a token) cannot boot into code that asks
the TPM for the real key: the TPM refuses.

The extension is TPM2_PCR_Event, so the TPM hashes the event into every active bank.

At boot (``measure-volumes --boot``) the step fails closed: on a machine that has a TPM, the measurement
either happens, read back and seen to have moved PCR 15 off its power-on value, or the command fails and
the initramfs stops the boot (tpmseal-measure.service: FailureAction=poweroff; the pre-mount hook powers
off). A machine has a TPM when its firmware announces one (ACPI table TPM2) or the kernel registered one,
whatever became of the device node: a missing or replaced /dev/tpmrm0 is not a reason to skip, the step
makes a node of its own from sysfs. Only a machine with no TPM at all skips it: then nothing in this boot
can unseal anything. The extension uses the empty password of PCR 15 (no session): filled session slots
do not stop it.
"""

from __future__ import annotations

import os
import re
import stat
import time
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
    """Extend ``pcr`` with one event per volume, then the separator; read it back and check that no bank
    holds its power-on value (zeros) any more. Returns the number of events."""
    from tpm2_pytss import ESYS_TR, TPML_PCR_SELECTION, TSS2_Exception

    from tpmseal.errors import TpmError
    from tpmseal.tpm.device import open_tpm, tpm_error

    events = [v.event() for v in volumes] + [SEPARATOR]
    with open_tpm(tpm_device) as esapi:
        for data in events:
            try:
                esapi.pcr_event(ESYS_TR.PCR0 + pcr, data)
            except TSS2_Exception as e:
                raise tpm_error(e, f"extending PCR {pcr}") from None
        banks = "+".join(f"{b}:{pcr}" for b in BANKS)
        try:
            _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse(banks))
        except TSS2_Exception as e:
            raise tpm_error(e, f"reading PCR {pcr} back") from None
        digests = [bytes(d) for d in values.digests]
        if not digests or any(d == bytes(len(d)) for d in digests):
            raise TpmError(
                f"PCR {pcr} still holds its power-on value after extending it",
                "the TPM did not carry out the extension",
            )
    return len(events)


# --------------------------------------------------------------------------- at boot

DEVICE_WAIT = 10.0  # seconds the boot step waits for a TPM the machine has to show up
PRIVATE_NODE = "/dev/tpmseal-tpmrm"  # not in /run: it is mounted nodev


USED_MARKER = "/run/tpmseal/tpm-used"


def note_tpm_used(marker: str = USED_MARKER, initrd_release: str = "/etc/initrd-release") -> None:
    """In the initramfs, remember that the unlock path talked to a TPM in this boot: the measurement is
    then required even if every other trace of the TPM is gone by the time it runs. Best effort."""
    if not os.path.exists(initrd_release):
        return
    try:
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker, "a", encoding="ascii"):
            pass
    except OSError:
        pass


def tpm_expected(sysfs: str = "/sys", dev: str = "/dev", marker: str = USED_MARKER) -> str | None:
    """Why this machine has a TPM (a phrase for messages), or None when nothing says it has one."""
    if os.path.exists(marker):
        return "the unlock talked to a TPM in this boot"
    if os.path.exists(os.path.join(sysfs, "firmware", "acpi", "tables", "TPM2")):
        return "the firmware announces a TPM 2.0 (ACPI table TPM2)"
    for cls in ("tpmrm", "tpm"):
        try:
            names = sorted(os.listdir(os.path.join(sysfs, "class", cls)))
        except OSError:
            continue
        if names:
            return f"the kernel registered {names[0]}"
    for node in ("tpmrm0", "tpm0"):
        if os.path.exists(os.path.join(dev, node)):
            return f"{dev}/{node} exists"
    return None


def _sysfs_rdev(sysfs: str) -> tuple[str, int] | None:
    """(name, device number) of the kernel's first TPM resource manager (tpmrm0; a TPM whose driver was
    bound again comes back as tpmrm1), from sysfs."""
    base = os.path.join(sysfs, "class", "tpmrm")
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("tpmrm"))
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(base, name, "dev"), encoding="ascii") as f:
                major, minor = f.read().strip().split(":")
            return name, os.makedev(int(major), int(minor))
        except (OSError, ValueError):
            continue
    return None


def _char_rdev(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISCHR(st.st_mode) else None


def boot_device(sysfs: str = "/sys", dev: str = "/dev", private: str = PRIVATE_NODE, wait: float = DEVICE_WAIT) -> str:
    """The kernel's TPM resource manager for the boot step: ``/dev/tpmrmN`` when it is the device sysfs
    names; a node of our own (``private``) when that node is missing or is something else; with no
    sysfs entry, ``/dev/tpmrm0`` if it is a character device. Waits up to ``wait`` seconds for the
    driver. Raises TpmUnavailable when there is none by then."""
    from tpmseal.errors import TpmUnavailable

    node = os.path.join(dev, "tpmrm0")
    deadline = time.monotonic() + wait
    while True:
        found = _sysfs_rdev(sysfs)
        if found is not None:
            name, rdev = found
            if _char_rdev(os.path.join(dev, name)) == rdev:
                return os.path.join(dev, name)
            os.makedirs(os.path.dirname(private), mode=0o755, exist_ok=True)
            if os.path.lexists(private):
                os.unlink(private)
            os.mknod(private, 0o600 | stat.S_IFCHR, rdev)
            return private
        if _char_rdev(node) is not None:
            return node
        if time.monotonic() >= deadline:
            raise TpmUnavailable(
                f"no TPM device: neither {node} nor an entry in {sysfs}/class/tpmrm appeared within {wait:g}s",
                "the TPM's driver did not come up (or the TPM stopped answering)",
            )
        time.sleep(0.1)


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
