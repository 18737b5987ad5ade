# SPDX-License-Identifier: LGPL-2.1-or-later
"""Find LUKS volumes, their UUIDs, device names and TPM tokens.

The udev database (pyudev) is the first source: it knows every block device's filesystem type, UUID and
/dev/disk/by-uuid link without opening the device. When there is no udev database (containers, test
sandboxes: no /run/udev/data), ``blkid`` probes the devices instead, and the result says so. Volumes named
on the command line (block devices or image files) are used as given, UUID from ``cryptsetup luksUUID``.
The tokens come from the LUKS2 header (``cryptsetup luksDump``), through tpmseal.luks.volume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from tpmseal.errors import TpmsealError

log = logging.getLogger("tpmseal.config")

UDEV_DB = "/run/udev/data"
SYSTEMD_TPM2 = "systemd-tpm2"


@dataclass
class LuksVolume:
    device: str  # device node or image file
    uuid: str  # lower case
    links: list[str] = field(default_factory=list)  # /dev/disk/by-* names udev knows
    token_types: list[str] = field(default_factory=list)  # TPM token types tpmseal manages entries for
    mapped_name: str | None = None  # /dev/mapper/NAME when open now
    boot: bool = False  # holds / or /usr of the running system: the initramfs must open it
    error: str | None = None  # the header could not be read

    @property
    def by_uuid(self) -> str:
        return f"/dev/disk/by-uuid/{self.uuid}"

    @property
    def managed(self) -> bool:
        return bool(self.token_types)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device, "uuid": self.uuid, "links": self.links, "token_types": self.token_types,
            "mapped_name": self.mapped_name, "boot": self.boot, "managed": self.managed, "error": self.error,
        }  # fmt: skip


@dataclass
class Discovery:
    volumes: list[LuksVolume]
    source: str  # "udev" | "blkid" | "arguments"
    notes: list[str] = field(default_factory=list)

    @property
    def examined(self) -> set[str]:
        return {v.uuid for v in self.volumes if v.error is None}


def tpm_token_types(device: str) -> list[str]:
    """The TPM token types on a volume that tpmseal writes entries for: parseable tpmseal tokens, systemd-tpm2."""
    from tpmseal.inventory import native_tokens
    from tpmseal.luks.tokens import NATIVE_TYPE
    from tpmseal.luks.volume import Volume

    header = Volume(device).header()
    types = []
    if native_tokens(header):
        types.append(NATIVE_TYPE)
    if any(t.type == SYSTEMD_TPM2 for t in header.tokens.values()):
        types.append(SYSTEMD_TPM2)
    return types


def _fill_tokens(vol: LuksVolume) -> None:
    try:
        vol.token_types = tpm_token_types(vol.device)
    except TpmsealError as e:
        vol.error = e.message


def _dm_names(sys_root: str = "/sys") -> dict[str, str]:
    """LUKS UUID -> mapping name of open dm-crypt devices, from sysfs (dm/uuid is CRYPT-LUKS2-HEX-NAME)."""
    out: dict[str, str] = {}
    block = os.path.join(sys_root, "block")
    try:
        names = os.listdir(block)
    except OSError:
        return out
    for dev in names:
        if not dev.startswith("dm-"):
            continue
        try:
            with open(os.path.join(block, dev, "dm", "uuid")) as f:
                dm_uuid = f.read().strip()
            with open(os.path.join(block, dev, "dm", "name")) as f:
                name = f.read().strip()
        except OSError:
            continue
        parts = dm_uuid.split("-")
        if len(parts) >= 3 and parts[0] == "CRYPT" and parts[1].startswith("LUKS") and len(parts[2]) == 32:
            h = parts[2].lower()
            out[f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"] = name
    return out


def _boot_uuids(sys_root: str = "/sys", mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """LUKS UUIDs under the filesystems mounted at / and /usr (walking dm slaves in sysfs)."""
    devs: list[str] = []
    try:
        with open(mountinfo) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4] in ("/", "/usr"):
                    devs.append(parts[2])
    except OSError:
        return set()
    found: set[str] = set()
    seen: set[str] = set()
    stack = [os.path.realpath(os.path.join(sys_root, "dev", "block", d)) for d in devs]
    while stack:
        node = stack.pop()
        if node in seen or not os.path.isdir(node):
            continue
        seen.add(node)
        try:
            with open(os.path.join(node, "dm", "uuid")) as f:
                dm_uuid = f.read().strip()
        except OSError:
            dm_uuid = ""
        parts = dm_uuid.split("-")
        if len(parts) >= 3 and parts[0] == "CRYPT" and parts[1].startswith("LUKS") and len(parts[2]) == 32:
            h = parts[2].lower()
            found.add(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        slaves = os.path.join(node, "slaves")
        if os.path.isdir(slaves):
            stack += [os.path.realpath(os.path.join(slaves, s)) for s in os.listdir(slaves)]
    return found


def _from_udev() -> list[LuksVolume]:
    import pyudev

    ctx = pyudev.Context()
    out = []
    for dev in ctx.list_devices(subsystem="block").match_property("ID_FS_TYPE", "crypto_LUKS"):
        uuid = str(dev.properties.get("ID_FS_UUID", "")).lower()
        if not uuid or dev.device_node is None:
            continue
        out.append(LuksVolume(str(dev.device_node), uuid, sorted(str(link) for link in dev.device_links)))
    return out


def _from_blkid() -> list[LuksVolume]:
    from tpmseal.proc import run

    r = run(["blkid", "-c", "/dev/null", "-t", "TYPE=crypto_LUKS", "-o", "device"], ok_codes=(0, 2))
    out = []
    for dev in r.stdout.split():
        u = run(["blkid", "-c", "/dev/null", "-s", "UUID", "-o", "value", dev], ok_codes=(0, 2)).stdout.strip()
        if u:
            out.append(LuksVolume(dev, u.lower()))
    return out


def _finish(vols: list[LuksVolume], live: bool) -> None:
    dm = _dm_names() if live else {}
    boot = _boot_uuids() if live else set()
    for v in vols:
        v.mapped_name = dm.get(v.uuid)
        v.boot = v.uuid in boot
        _fill_tokens(v)


def discover(root: str = "/", udev_db: str = UDEV_DB) -> Discovery:
    """Every LUKS volume of this machine. ``root`` other than / still probes this machine's devices (the
    tree is being prepared for them), but does not read which volumes hold / (that is this system's root)."""
    live = os.path.realpath(root) == "/"
    if os.path.isdir(udev_db) and os.listdir(udev_db):
        d = Discovery(_from_udev(), "udev")
    else:
        d = Discovery(
            _from_blkid(), "blkid",
            [f"no udev database ({udev_db} is missing or empty, as in a container): probed devices with blkid"],
        )  # fmt: skip
    _finish(d.volumes, live)
    return d


def given(devices: list[str], root: str = "/") -> Discovery:
    """Only the volumes named on the command line (block devices or LUKS2 image files)."""
    from tpmseal.luks.volume import Volume

    live = os.path.realpath(root) == "/"
    vols = []
    for dev in devices:
        vol = Volume(dev)
        vol.header()  # a clear error for a missing device or a non-LUKS2 file, before anything else
        vols.append(LuksVolume(dev, vol.uuid().lower()))
    _finish(vols, live)
    return Discovery(vols, "arguments")
