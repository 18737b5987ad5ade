# SPDX-License-Identifier: LGPL-2.1-or-later
"""From the volumes found to the files as they should be: a Plan, which ``show`` prints, ``diff`` compares
and ``apply`` writes. Nothing here runs a program or writes a file except ``apply_plan``."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from tpmseal.config import bootloader
from tpmseal.config.crypttab import Wanted, merge, parse
from tpmseal.config.discover import SYSTEMD_TPM2, Discovery, LuksVolume
from tpmseal.config.files import BACKUP_SUFFIX, Target, atomic_write, bytes_of, text_of
from tpmseal.config.render import BootVolume, Templates

CRYPTTAB = "/etc/crypttab"
BASE_OPTIONS = ("luks", "discard")


@dataclass
class FileChange:
    path: str  # as the booted system sees it
    old: str | None
    new: str
    default_mode: int = 0o644

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=f"a{self.path}" if self.old is not None else "/dev/null",
                tofile=f"b{self.path}",
            )
        )


@dataclass
class VolumeStatus:
    device: str
    uuid: str
    name: str | None
    options: list[str]
    token_types: list[str]
    boot: bool
    status: str


@dataclass
class Plan:
    root: str
    discovery: Discovery
    bootloader: str | None
    files: list[FileChange] = field(default_factory=list)
    volumes: list[VolumeStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    regenerate: list[list[str]] = field(default_factory=list)
    cmdline: list[str] = field(default_factory=list)  # the rd.luks.* options tpmseal wants

    @property
    def live(self) -> bool:
        return os.path.realpath(self.root) == "/"

    def changed(self) -> list[FileChange]:
        return [f for f in self.files if f.changed]

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "discovery": self.discovery.source,
            "bootloader": self.bootloader,
            "volumes": [vars(v) for v in self.volumes],
            "files": [{"path": f.path, "exists": f.old is not None, "changed": f.changed} for f in self.files],
            "kernel_cmdline": self.cmdline,
            "regenerate": self.regenerate,
            "notes": self.notes,
        }


def entry_options(vol: LuksVolume) -> list[str]:
    opts = list(BASE_OPTIONS)
    if SYSTEMD_TPM2 in vol.token_types:
        opts.append("tpm2-device=auto")  # the stock systemd-cryptsetup path for systemd-tpm2 tokens
    return opts


def _boot_volumes_in(text: str | None) -> dict[str, BootVolume]:
    """The volumes an existing drop-in or command line lists (to keep those not examined this time)."""
    out: dict[str, BootVolume] = {}
    if not text:
        return out
    words = bootloader.luks_words(text)
    for u in bootloader.listed_uuids(text):
        name, options = f"luks-{u}", tuple[str, ...]()
        for w in words:
            if bootloader.word_uuid(w) != u:
                continue
            value = w.split("=", 1)[1].removeprefix("UUID=")
            if w.startswith("rd.luks.name="):
                name = value.split("=", 1)[1] if "=" in value else name
            elif w.startswith("rd.luks.options=") and "=" in value:
                options = tuple(o for o in value.split("=", 1)[1].split(",") if o)
        out[u] = BootVolume(u, name, options)
    return out


def make_plan(root: str, disc: Discovery, templates: Templates | None = None) -> Plan:
    tpl = templates or Templates(root)
    plan = Plan(root, disc, bootloader.detect(root), notes=list(disc.notes))
    ct = Target(root, CRYPTTAB)
    old = text_of(ct.read())
    tab = parse(old or "", ct.real)
    names = {ln.entry.uuid(): ln.entry.name for ln in tab.managed() if ln.entry is not None}
    managed = [v for v in disc.volumes if v.managed and v.error is None]
    chosen: dict[str, tuple[str, list[str]]] = {}
    wanted = []
    for v in managed:
        name = v.mapped_name or names.get(v.uuid) or f"luks-{v.uuid}"
        opts = entry_options(v)
        chosen[v.uuid] = (name, opts)
        wanted.append(Wanted(v.uuid, name, tpl.entry(name, v.uuid, opts), (v.device, v.by_uuid, *v.links)))
    res = merge(tab, wanted, disc.examined, ct.real)
    plan.notes += res.notes
    if old is not None or res.text:
        plan.files.append(FileChange(CRYPTTAB, old, res.text))

    for v in disc.volumes:
        got = chosen.get(v.uuid)
        shown: str | None = got[0] if got is not None else None
        opts = got[1] if got is not None else []
        if v.error:
            status = f"unreadable: {v.error}"
        elif not v.managed:
            status = "no TPM token: not managed"
        elif v.uuid in res.admin_names:
            shown = res.admin_names[v.uuid]
            chosen[v.uuid] = (shown, opts)  # the kernel command line must use the admin's name
            status = "the admin's own crypttab line covers it"
        else:
            status = "managed"
        plan.volumes.append(VolumeStatus(v.device, v.uuid, shown, opts, v.token_types, v.boot, status))

    _plan_cmdline(plan, tpl, chosen, managed)
    crypttab_changed = any(f.changed and f.path == CRYPTTAB for f in plan.files)
    cmdline_changed = any(f.changed and f.path != CRYPTTAB for f in plan.files)
    plan.regenerate = bootloader.regenerate_commands(root, plan.bootloader, crypttab_changed, cmdline_changed)
    return plan


def _plan_cmdline(
    plan: Plan, tpl: Templates, chosen: dict[str, tuple[str, list[str]]], managed: list[LuksVolume]
) -> None:
    root, loader = plan.root, plan.bootloader
    path = bootloader.GRUB_DROPIN if loader == "grub" else bootloader.KERNEL_CMDLINE
    target = Target(root, path)
    old = text_of(target.read()) if loader else None
    listed = _boot_volumes_in(old) if loader == "grub" else {}
    before = bootloader.listed_uuids(old)
    boot: dict[str, BootVolume] = {}
    for v in managed:
        if v.boot or v.uuid in before:
            name, opts = chosen[v.uuid]
            boot[v.uuid] = BootVolume(v.uuid, name, tuple(o for o in opts if o != "luks"))
    for u, bv in listed.items():
        if u not in plan.discovery.examined:
            boot.setdefault(u, bv)  # not looked at this time: keep as it was
    vols = sorted(boot.values(), key=lambda b: (b.name, b.uuid))
    plan.cmdline = tpl.cmdline_words(vols) if vols else []
    if loader == "grub":
        if old is not None or vols:
            plan.files.append(FileChange(path, old, tpl.grub(vols)))
    elif loader == "kernel-install":
        if not vols:
            return
        if old is None:
            if not plan.live:
                plan.notes.append(
                    f"{path} does not exist under {root}: create it with the whole kernel command line, "
                    f"then run again (tpmseal would add: {' '.join(plan.cmdline)})"
                )
                return
            seed = bootloader.proc_cmdline()
        else:
            seed = old
        plan.files.append(FileChange(path, old, bootloader.merge_cmdline(seed, plan.cmdline)))
    elif vols:
        plan.notes.append(
            "no GRUB (/etc/default/grub) or kernel-install (/etc/kernel/cmdline, loader/entries) configuration "
            f"found: add these to the kernel command line yourself: {' '.join(plan.cmdline)}"
        )


def apply_plan(plan: Plan) -> list[str]:
    """Write every file that changes; return one line per file written."""
    out = []
    for f in plan.changed():
        t = Target(plan.root, f.path)
        expect = bytes_of(f.old) if f.old is not None else None
        if atomic_write(t, bytes_of(f.new), f.default_mode, expect=expect):
            shown = t.real if not plan.live else f.path
            if f.old is None:
                out.append(f"created {shown}")
            else:
                out.append(f"wrote {shown} (previous version: {shown}{BACKUP_SUFFIX})")
    return out
