# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal config on a real LUKS2 image enrolled with the real swtpm, in a --root tree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import Image, Swtpm, run_cli

from tpmseal.config.crypttab import MARKER

pytestmark = pytest.mark.tpm

ADMIN = (
    "# /etc/crypttab of the admin\n"
    "swap\t/dev/sda3\t/dev/urandom\tswap,cipher=aes-xts-plain64\n"
    "\n"
    "usb  UUID=0f5e9a44-1c2b-4d6e-8f90-123456789abc  /media/usb\\040stick/key  luks,x-systemd.device-timeout=0\n"
)


def enroll(img: Image, swtpm: Swtpm, *extra: str) -> None:
    run_cli("enroll", img.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(img.keyfile), *extra)


def uuid_of(img: Image) -> str:
    return subprocess.run(
        ["cryptsetup", "luksUUID", img.dev], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "crypttab").write_text(ADMIN)
    return r


def test_enrolled_volume_diff_shows_the_line_apply_writes_it_second_apply_changes_nothing(
    image: Image, swtpm: Swtpm, root: Path
) -> None:
    enroll(image, swtpm, "--tpm2-pcrs=7")
    uuid = uuid_of(image)
    line = f"luks-{uuid} UUID={uuid} none luks,discard"
    diff = run_cli("config", "diff", "--root", str(root), image.dev).stdout
    assert f"+{MARKER}\n+{line}\n" in diff
    assert (root / "etc/crypttab").read_text() == ADMIN  # diff writes nothing

    out = run_cli("config", "apply", "--root", str(root), image.dev).stdout
    assert f"wrote {root}/etc/crypttab" in out and "not run (--root" in out
    text = (root / "etc/crypttab").read_text()
    assert text == ADMIN + f"{MARKER}\n{line}\n"  # the admin's lines byte for byte, then ours
    assert (root / "etc/crypttab.tpmseal-bak").read_text() == ADMIN

    again = run_cli("config", "apply", "--root", str(root), image.dev).stdout
    assert "nothing to change" in again
    assert (root / "etc/crypttab").read_text() == text


def test_show_reports_the_token_and_volume_without_token_is_not_managed(
    image: Image, swtpm: Swtpm, root: Path, tmp_path: Path
) -> None:
    from support import make_luks2

    plain = make_luks2(tmp_path / "plain.img")
    enroll(image, swtpm, "--tpm2-pcrs=7")
    j = json.loads(run_cli("config", "show", "--json", "--root", str(root), image.dev, plain.dev).stdout)
    by_dev = {v["device"]: v for v in j["volumes"]}
    assert by_dev[image.dev]["token_types"] == ["tpmseal-tpm2"] and by_dev[image.dev]["status"] == "managed"
    assert by_dev[plain.dev]["status"] == "no TPM token: not managed" and j["discovery"] == "arguments"


def test_wiping_the_tpm_slot_removes_only_the_managed_line(image: Image, swtpm: Swtpm, root: Path) -> None:
    enroll(image, swtpm, "--tpm2-pcrs=7")
    run_cli("config", "apply", "--root", str(root), image.dev)
    assert MARKER in (root / "etc/crypttab").read_text()
    run_cli("wipe-slot", image.dev, "--wipe-slot=tpm2", f"--tpm2-device={swtpm.tcti}")
    run_cli("config", "apply", "--root", str(root), image.dev)
    assert (root / "etc/crypttab").read_text() == ADMIN


def test_systemd_tpm2_token_entry_gets_tpm2_device_auto(image: Image, swtpm: Swtpm, root: Path) -> None:
    enroll(image, swtpm, "--tpm2-pcrs=7", "--token-type=systemd-tpm2")
    run_cli("config", "apply", "--root", str(root), image.dev)
    assert f"UUID={uuid_of(image)} none luks,discard,tpm2-device=auto\n" in (root / "etc/crypttab").read_text()


def test_update_config_for_writes_the_entry_and_returns_what_it_did(image: Image, swtpm: Swtpm, root: Path) -> None:
    from tpmseal.config import update_config_for

    enroll(image, swtpm, "--tpm2-pcrs=7")
    lines = update_config_for(image.dev, str(root))
    assert lines[0] == f"wrote {root}/etc/crypttab (previous version: {root}/etc/crypttab.tpmseal-bak)"
    assert "run: dracut --regenerate-all --force" in lines
    assert update_config_for(image.dev, str(root)) == []
