# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kernel command line: a GRUB drop-in, or /etc/kernel/cmdline for BLS / kernel-install systems.

GRUB: tpmseal owns ``/etc/default/grub.d/tpmseal.cfg`` entirely; it appends ``rd.luks.*`` options to
``GRUB_CMDLINE_LINUX`` (grub-mkconfig sources grub.d/*.cfg after /etc/default/grub).
kernel-install: ``/etc/kernel/cmdline`` is the whole command line and has no room for a marker, so tpmseal
only replaces the ``rd.luks.uuid=U``, ``rd.luks.name=U=…`` and ``rd.luks.options=U=…`` words of the volumes
it writes options for, appending them at the end; every other word stays as it is, in order.
"""

from __future__ import annotations

import os
import re

GRUB_DROPIN = "/etc/default/grub.d/tpmseal.cfg"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
LUKS_WORD = re.compile(r"rd\.luks\.(?:uuid|name|options)=(?:UUID=)?(?P<uuid>[0-9a-fA-F-]{36})(?:=.*)?\Z")
BIN_DIRS = ("usr/sbin", "usr/bin", "sbin", "bin")
BLS_DIRS = ("boot/loader/entries", "efi/loader/entries", "boot/efi/loader/entries")


def have(root: str, prog: str) -> bool:
    """Whether ``prog`` is installed in the tree (not on our PATH: under --root the tree is what counts)."""
    return any(os.access(os.path.join(root, d, prog), os.X_OK) for d in BIN_DIRS)


def detect(root: str) -> str | None:
    """Return "kernel-install" when /etc/kernel/cmdline or a BLS entries directory exists, "grub" when GRUB's
    defaults exist, else None."""
    if any(os.path.isdir(os.path.join(root, d)) for d in BLS_DIRS) or os.path.isfile(
        os.path.join(root, KERNEL_CMDLINE.lstrip("/"))
    ):
        return "kernel-install"
    if os.path.exists(os.path.join(root, "etc/default/grub")) or os.path.isdir(
        os.path.join(root, "etc/default/grub.d")
    ):
        return "grub"
    return None


def split_words(text: str) -> list[str]:
    """Kernel command line words; double quotes group (``foo="a b"`` is one word), as the kernel parses."""
    return re.findall(r'(?:[^\s"]+|"[^"]*")+', text)


def word_uuid(word: str) -> str | None:
    m = LUKS_WORD.match(word)
    return m.group("uuid").lower() if m else None


def luks_words(text: str | None) -> list[str]:
    """The rd.luks.* words anywhere in a text, also inside a quoted shell assignment (the GRUB drop-in)."""
    return re.findall(r"rd\.luks\.[a-z]+=[^\s\"']+", text or "")


def listed_uuids(text: str | None) -> set[str]:
    """UUIDs named by rd.luks.uuid= in a drop-in or command line."""
    return {u for w in luks_words(text) if w.startswith("rd.luks.uuid=") and (u := word_uuid(w))}


def merge_cmdline(text: str, words: list[str]) -> str:
    """Replace the rd.luks.* words of the UUIDs in ``words`` by ``words`` (appended); keep everything else."""
    ours = {u for w in words if (u := word_uuid(w))}
    old = split_words(text)
    if [w for w in old if word_uuid(w) in ours] == words:
        return text  # already there: leave the file byte for byte
    return " ".join([w for w in old if word_uuid(w) not in ours] + words) + "\n"


def proc_cmdline() -> str:
    """The running kernel's command line without the boot loader's own words, to seed /etc/kernel/cmdline."""
    with open("/proc/cmdline") as f:
        words = split_words(f.read())
    return " ".join(w for w in words if not w.startswith(("BOOT_IMAGE=", "initrd="))) + "\n"


def kernels(root: str) -> list[str]:
    d = os.path.join(root, "usr/lib/modules")
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    return [k for k in names if os.path.isfile(os.path.join(d, k, "vmlinuz"))]


def regenerate_commands(
    root: str, loader: str | None, crypttab_changed: bool, cmdline_changed: bool
) -> list[list[str]]:
    """What must run so the next boot sees the change: the initramfs holds a copy of /etc/crypttab, and the
    boot loader's configuration holds the command line."""
    cmds: list[list[str]] = []
    if loader == "kernel-install":
        if crypttab_changed or cmdline_changed:
            ks = kernels(root)
            cmds += [["kernel-install", "add", k, f"/usr/lib/modules/{k}/vmlinuz"] for k in ks]
            if not ks:
                cmds.append(["kernel-install", "add", "KERNEL-VERSION", "/usr/lib/modules/KERNEL-VERSION/vmlinuz"])
        return cmds
    if crypttab_changed:
        if not have(root, "dracut") and have(root, "update-initramfs"):
            cmds.append(["update-initramfs", "-u", "-k", "all"])
        else:
            cmds.append(["dracut", "--regenerate-all", "--force"])
    if cmdline_changed and loader == "grub":
        if have(root, "update-grub"):
            cmds.append(["update-grub"])
        elif have(root, "grub2-mkconfig"):
            cmds.append(["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"])
        else:
            cmds.append(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
    return cmds
