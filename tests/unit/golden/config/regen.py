#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Regenerate the golden files of tests/unit/test_config.py from the inputs here.

Run after a deliberate change to the output format, then review the diff before committing:

    /work/venv/bin/python tests/unit/golden/config/regen.py && git diff tests/unit/golden/config/

The test imports ``cases()`` from this file, so the scenario is defined once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tpmseal.config.crypttab import merge, parse
from tpmseal.config.discover import LuksVolume
from tpmseal.config.plan import entry_options
from tpmseal.config.render import BootVolume, Templates

HERE = Path(__file__).resolve().parent

# The machine of the golden scenario (what discovery would find):
VOLUMES = [
    # the root volume, open as "cryptroot", with both token kinds: its managed entry gets updated
    LuksVolume(
        "/dev/nvme0n1p3",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        token_types=["tpmseal-tpm2", "systemd-tpm2"],
        mapped_name="cryptroot",
        boot=True,
    ),
    # a new data volume with a tpmseal token: a new entry at the end
    LuksVolume("/dev/sdb1", "bbbbbbbb-1111-2222-3333-444444444444", token_types=["tpmseal-tpm2"]),
    # the admin's own line for "home" already covers this one: left alone
    LuksVolume("/dev/sda2", "0f5e9a44-1c2b-4d6e-8f90-123456789abc", token_types=["tpmseal-tpm2"]),
    # its TPM token was wiped: its managed entry goes
    LuksVolume("/dev/sdc1", "99999999-8888-7777-6666-555555555555", token_types=[]),
    # (12121212-… is not attached now: its managed entry stays)
]


def crypttab_case() -> str:
    tpl = Templates("/nonexistent-root")  # packaged templates only
    tab = parse((HERE / "crypttab.input").read_text(), "crypttab.input")
    names = {ln.entry.uuid(): ln.entry.name for ln in tab.managed() if ln.entry is not None}
    from tpmseal.config.crypttab import Wanted

    wanted = []
    for v in VOLUMES:
        if v.managed:
            name = v.mapped_name or names.get(v.uuid) or f"luks-{v.uuid}"
            wanted.append(Wanted(v.uuid, name, tpl.entry(name, v.uuid, entry_options(v)), (v.device, v.by_uuid)))
    return merge(tab, wanted, {v.uuid for v in VOLUMES}, "crypttab.input").text


def grub_case() -> str:
    tpl = Templates("/nonexistent-root")
    boot = [
        BootVolume("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "cryptroot", ("discard", "tpm2-device=auto")),
        BootVolume("cccccccc-1111-2222-3333-444444444444", "cryptusr", ("discard",)),
    ]
    return tpl.grub(boot)


def grub_empty_case() -> str:
    return Templates("/nonexistent-root").grub([])


def cases() -> dict[str, str]:
    """golden file name -> the output it must hold."""
    return {
        "crypttab.expected": crypttab_case(),
        "grub-tpmseal.cfg.expected": grub_case(),
        "grub-tpmseal-empty.cfg.expected": grub_empty_case(),
    }


def main() -> int:
    for name, text in cases().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
