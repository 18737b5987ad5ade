# SPDX-License-Identifier: LGPL-2.1-or-later
"""The firmware's TCG event log (PC Client Platform Firmware Profile, crypto-agile format): parse, replay.

The log the kernel exports at /sys/kernel/security/tpm0/binary_bios_measurements starts with one event
in the old SHA-1 layout (TCG_PCClientPCREvent) whose data is the "Spec ID Event03" structure: it names
the digest algorithms (banks) of the log and their sizes. Every following event is a TCG_PCR_EVENT2:
PCR index, event type, one digest per bank, event data. All integers are little-endian.

Replaying the log (extending, per bank, every event's digest into its PCR, starting from the reset
value) must give the PCR values the TPM reports. When it does not, the log does not describe the boot
and nothing predicted from it can be trusted. EV_NO_ACTION events are not extended; a "StartupLocality"
EV_NO_ACTION event sets PCR 0's starting value to the locality (H-CRTM platforms).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from tpmseal.errors import TpmsealError

DEFAULT_PATH = "/sys/kernel/security/tpm0/binary_bios_measurements"
PCR_COUNT = 24

# TPM_ALG_ID -> (bank name, digest size)
ALGORITHMS: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    0x000B: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
    0x0012: ("sm3_256", 32),
}
_HASHLIB = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}

EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_EVENT_TAG = 0x00000006
EV_IPL = 0x0000000D
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003

EVENT_TYPES: dict[int, str] = {
    0x00000000: "EV_PREBOOT_CERT",
    0x00000001: "EV_POST_CODE",
    0x00000002: "EV_UNUSED",
    EV_NO_ACTION: "EV_NO_ACTION",
    EV_SEPARATOR: "EV_SEPARATOR",
    0x00000005: "EV_ACTION",
    EV_EVENT_TAG: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS",
    0x00000008: "EV_S_CRTM_VERSION",
    0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0000000B: "EV_TABLE_OF_DEVICES",
    0x0000000C: "EV_COMPACT_HASH",
    EV_IPL: "EV_IPL",
    0x0000000E: "EV_IPL_PARTITION_DATA",
    0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG",
    0x00000011: "EV_NONHOST_INFO",
    0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    EV_EFI_BOOT_SERVICES_APPLICATION: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
_VARIABLE_EVENTS = {0x80000001, 0x80000002, 0x8000000C, 0x800000E0}
_TEXT_EVENTS = {0x00000005, 0x80000007, 0x00000008, EV_IPL}

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
# TCG_PCClientTaggedEvent IDs used by Linux's EFI stub for what it measures into PCR 9
LINUX_INITRD_TAG = 0x8F3B22EC  # data "Linux initrd"; digest = SHA-256 of the initramfs file
# data "LOADED_IMAGE::LoadOptions"; digest = SHA-256 of the UTF-16LE command line + NUL
LINUX_LOAD_OPTIONS_TAG = 0x8F3B22ED


class EventLogError(TpmsealError):
    """The event log is missing, truncated or not in the crypto-agile format."""

    default_hint = "the firmware must log in the crypto-agile (TCG2) format; see tpmseal-pcrs(8)"


@dataclass(frozen=True)
class Event:
    number: int  # position in the log, 0 = the Spec ID event
    pcr: int
    type: int
    digests: dict[str, bytes]  # bank -> digest
    data: bytes

    @property
    def type_name(self) -> str:
        return EVENT_TYPES.get(self.type, f"0x{self.type:08x}")

    @property
    def tag(self) -> int | None:
        """The taggedEventID of an EV_EVENT_TAG event."""
        if self.type == EV_EVENT_TAG and len(self.data) >= 8:
            return int(struct.unpack_from("<I", self.data)[0])
        return None

    def describe(self) -> str:
        """A short, printable summary of the event data."""
        d = self.data
        if self.type in _VARIABLE_EVENTS and len(d) >= 32:
            n, size = struct.unpack_from("<QQ", d, 16)
            name = d[32 : 32 + 2 * n].decode("utf-16-le", "replace")
            return f"{name} ({size} bytes)"
        if self.type == EV_EVENT_TAG and len(d) >= 8:
            tag, size = struct.unpack_from("<II", d)
            text = _text(d[8 : 8 + size])
            return f"tag 0x{tag:08x} {text}".rstrip()
        if self.type in _TEXT_EVENTS or self.type == EV_SEPARATOR:
            return _text(d)
        return f"{len(d)} bytes"


def _text(d: bytes) -> str:
    if len(d) >= 2 and d[1::2].count(0) >= len(d) // 2 - 1 and d[0] != 0:
        s = d.decode("utf-16-le", "replace")
    else:
        s = d.decode("ascii", "replace")
    s = s.rstrip("\0")
    return s if s.isprintable() else d[:32].hex()


@dataclass(frozen=True)
class EventLog:
    banks: dict[str, int]  # bank -> digest size, from the Spec ID event
    events: tuple[Event, ...]
    startup_locality: int = 0
    spec: str = ""  # "2.0 errata 0" etc.
    uintn_size: int = 2
    notes: tuple[str, ...] = field(default=())

    def replay(self, bank: str = "sha256", events: Iterable[Event] | None = None) -> dict[int, bytes]:
        """The PCR values the events produce, for every PCR that has at least one extending event."""
        if bank not in self.banks:
            raise EventLogError(f"the event log has no {bank} digests (banks: {', '.join(self.banks)})")
        if bank not in _HASHLIB:
            raise EventLogError(f"cannot replay the {bank} bank")
        size = self.banks[bank]
        out: dict[int, bytes] = {}
        for e in self.events if events is None else events:
            if e.type == EV_NO_ACTION:
                continue
            if e.pcr not in out:
                out[e.pcr] = initial_value(e.pcr, size, self.startup_locality)
            out[e.pcr] = hashlib.new(_HASHLIB[bank], out[e.pcr] + e.digests[bank]).digest()
        return out

    def by_pcr(self, pcr: int) -> list[Event]:
        return [e for e in self.events if e.pcr == pcr and e.type != EV_NO_ACTION]


def initial_value(pcr: int, size: int, locality: int = 0) -> bytes:
    """The reset value: zeros, PCR 0 holds the startup locality, PCRs 17-22 are ones (D-RTM)."""
    if 17 <= pcr <= 22:
        return b"\xff" * size
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


def extend(bank: str, value: bytes, digest: bytes) -> bytes:
    return hashlib.new(_HASHLIB[bank], value + digest).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.left() < n:
            raise EventLogError(f"event log truncated at byte {self.pos} ({what})")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])


def parse(data: bytes) -> EventLog:
    """Parse a crypto-agile event log; raise EventLogError for anything else."""
    r = _Reader(data)
    pcr = r.u32("first event")
    etype = r.u32("first event")
    r.take(20, "first event digest")
    size = r.u32("first event size")
    spec = r.take(size, "Spec ID event")
    if etype != EV_NO_ACTION or pcr != 0 or not spec.startswith(SPEC_ID_SIGNATURE):
        raise EventLogError("not a crypto-agile event log (the first event is not 'Spec ID Event03')")
    if len(spec) < 28:
        raise EventLogError("the Spec ID event is truncated")
    _platform, minor, major, errata, uintn, count = struct.unpack_from("<IBBBBI", spec, 16)
    banks: dict[str, int] = {}
    algs: dict[int, tuple[str, int]] = {}
    off = 28
    for _ in range(count):
        if off + 4 > len(spec):
            raise EventLogError("the Spec ID event is truncated")
        alg, dsize = struct.unpack_from("<HH", spec, off)
        off += 4
        name = ALGORITHMS.get(alg, (f"alg_0x{alg:04x}", dsize))[0]
        algs[alg] = (name, dsize)
        banks[name] = dsize
    if not banks:
        raise EventLogError("the Spec ID event names no digest algorithm")
    events: list[Event] = [Event(0, 0, EV_NO_ACTION, {}, spec)]
    locality = 0
    notes: list[str] = []
    while r.left() >= 12:
        start = r.pos
        pcr = r.u32("PCR index")
        etype = r.u32("event type")
        n = r.u32("digest count")
        if pcr == 0xFFFFFFFF or (pcr == 0 and etype == 0 and n == 0):
            notes.append(f"stopped at byte {start}: padding or an unused entry")
            r.pos = len(data)
            break
        if pcr >= PCR_COUNT or n > len(algs):
            raise EventLogError(f"event {len(events)} at byte {start}: invalid PCR index {pcr} or digest count {n}")
        digests: dict[str, bytes] = {}
        for _ in range(n):
            alg = r.u16("digest algorithm")
            if alg not in algs:
                raise EventLogError(f"event {len(events)}: digest algorithm 0x{alg:04x} is not in the Spec ID event")
            name, dsize = algs[alg]
            digests[name] = r.take(dsize, "digest")
        esize = r.u32("event size")
        edata = r.take(esize, "event data")
        ev = Event(len(events), pcr, etype, digests, edata)
        if etype == EV_NO_ACTION and edata.startswith(STARTUP_LOCALITY_SIGNATURE) and len(edata) >= 17:
            locality = edata[16]
        elif etype != EV_NO_ACTION and set(digests) != set(banks):
            raise EventLogError(f"event {ev.number}: digests for {sorted(digests)}, expected {sorted(banks)}")
        events.append(ev)
    if r.left():
        notes.append(f"{r.left()} trailing bytes ignored")
    return EventLog(banks, tuple(events), locality, f"{major}.{minor} errata {errata}", uintn, tuple(notes))


def load(path: str = DEFAULT_PATH) -> EventLog:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise EventLogError(
            f"no event log at {path}",
            "the firmware keeps no TCG event log (legacy BIOS?) or securityfs is not mounted "
            "(mount -t securityfs securityfs /sys/kernel/security)",
        ) from None
    except OSError as e:
        raise EventLogError(f"cannot read the event log {path}: {e.strerror}") from None
    return parse(data)
