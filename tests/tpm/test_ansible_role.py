# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Ansible role contrib/ansible/roles/tpmseal, run for real with ansible-playbook on localhost against a
LUKS2 image file and the test swtpm: the first run enrolls, installs a credential, writes crypttab and the
system files; a second run changes nothing; a --check run changes nothing, and on a fresh volume reports
what it would do without doing it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Image, Swtpm, luks_dump, need, run_cli

pytestmark = pytest.mark.tpm

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "contrib" / "ansible" / "roles"
BIN = Path(sys.executable).parent


def ansible_playbook() -> str:
    """ansible-playbook next to this interpreter (the venv), else on PATH."""
    local = BIN / "ansible-playbook"
    if local.exists():
        return str(local)
    need("ansible-playbook")
    return "ansible-playbook"


def tpmseal_bin() -> str:
    local = BIN / "tpmseal"
    if local.exists():
        return str(local)
    need("tpmseal")
    return "tpmseal"


def play(tmp: Path, variables: dict[str, object], *extra: str) -> tuple[int, str, float]:
    """Runs the role once; returns the recap's changed count, the output and the time taken."""
    playbook = tmp / "site.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n    - tpmseal\n")
    (tmp / "vars.json").write_text(json.dumps(variables))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "LC_ALL": "C.UTF-8",
        "TSS2_LOG": "all+none",
    }
    start = time.monotonic()
    r = subprocess.run(
        [ansible_playbook(), "-c", "local", "-i", "localhost,", "-e", f"@{tmp / 'vars.json'}",
         "-e", f"ansible_python_interpreter={sys.executable}", *extra, str(playbook)],
        capture_output=True, text=True, env=env, cwd=tmp,
    )  # fmt: skip
    took = time.monotonic() - start
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    m = re.search(r"^localhost\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", r.stdout, re.MULTILINE)
    assert m, f"no recap in:\n{out}"
    return int(m[1]), out, took


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tokens(image: Image) -> list[dict[str, object]]:
    return list(luks_dump(image.path)["tokens"].values())  # type: ignore[union-attr]


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    return root


def base_vars(swtpm: Swtpm, root: Path, images: list[Image]) -> dict[str, object]:
    return {
        "tpmseal_install_method": "none",
        "tpmseal_bin": tpmseal_bin(),
        "tpmseal_tpm2_device": swtpm.tcti,
        "tpmseal_root": str(root),
        "tpmseal_volumes": [{"device": i.dev, "pcrs": "7", "unlock_key_file": str(i.keyfile)} for i in images],
        "tpmseal_config_volumes": [i.dev for i in images],
        "tpmseal_regenerate_initramfs": False,
        "tpmseal_daemon_reload": False,
    }


def test_role_is_idempotent_and_check_mode_changes_nothing(
    swtpm: Swtpm, image: Image, scratch_root: Path, tmp_path: Path
) -> None:
    ansible_playbook()
    secret = tmp_path / "db-password"
    secret.write_bytes(b"s3cret\n")  # a test value
    cred = tmp_path / "db-password.cred"
    run_cli(
        "creds", "encrypt", "db-password", str(secret), str(cred), "--unit=app.service",
        f"--tpm2-device={swtpm.tcti}",
    )  # fmt: skip
    variables = {
        **base_vars(swtpm, scratch_root, [image]),
        "tpmseal_credentials": [{"unit": "app.service", "name": "db-password", "file": str(cred)}],
    }

    changed, out, first = play(tmp_path, variables)
    assert changed >= 4, out  # system files, enroll, credential, config
    toks = [t for t in tokens(image) if t.get("type") == "tpmseal-tpm2"]
    assert len(toks) == 1, toks
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
    assert (scratch_root / "usr/lib/dracut/modules.d/90tpmseal/module-setup.sh").exists()
    assert (scratch_root / "usr/share/man/man8/tpmseal-enroll.8.gz").exists()
    assert (scratch_root / "etc/tpmseal/creds/app.service/db-password.cred").read_bytes() == cred.read_bytes()
    assert (scratch_root / "etc/systemd/system/app.service.d/tpmseal-db-password.conf").exists()
    crypttab = (scratch_root / "etc/crypttab").read_text()
    assert "# tpmseal: managed" in crypttab

    header = luks_dump(image.path)
    files = tree_digest(scratch_root)
    changed, out, second = play(tmp_path, variables)
    assert changed == 0, out
    assert luks_dump(image.path) == header
    assert tree_digest(scratch_root) == files

    changed, out, check = play(tmp_path, variables, "--check")
    assert changed == 0, out
    assert luks_dump(image.path) == header
    assert tree_digest(scratch_root) == files
    print(f"\nansible role: first run {first:.1f}s, second {second:.1f}s, --check {check:.1f}s")


def test_check_mode_on_a_fresh_volume_reports_but_does_not_enroll(
    swtpm: Swtpm, image: Image, scratch_root: Path, tmp_path: Path
) -> None:
    ansible_playbook()
    header = luks_dump(image.path)
    changed, out, _ = play(tmp_path, base_vars(swtpm, scratch_root, [image]), "--check")
    # would enroll (config diff cannot foresee the crypttab entry of a token that does not exist yet)
    assert changed == 1, out
    assert f"would enroll {image.dev}" in out
    assert luks_dump(image.path) == header
    assert not (scratch_root / "etc/crypttab").exists()
    assert not (scratch_root / "usr").exists(), "check mode must not install system files"
    shutil.rmtree(tmp_path / "ansible-home", ignore_errors=True)
