# SPDX-License-Identifier: LGPL-2.1-or-later
"""User errors: one line, a hint, a documented exit code, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support import Image, Swtpm, luks_dump, opens, run_cli

pytestmark = pytest.mark.tpm


def assert_clean_error(p: subprocess.CompletedProcess[str], text: str) -> None:
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("tpmseal: error: ") and text in lines[0], p.stderr
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("tpmseal: hint: "))


def test_missing_device_is_a_volume_error(tmp_path: Path) -> None:
    p = run_cli("list", str(tmp_path / "nope.img"), "--no-tpm", check=3)
    assert_clean_error(p, "No such file")


def test_directory_is_not_a_volume(tmp_path: Path) -> None:
    assert_clean_error(run_cli("list", str(tmp_path), "--no-tpm", check=3), "not a block device")


def test_plain_file_is_not_luks(tmp_path: Path) -> None:
    f = tmp_path / "zero.img"
    f.write_bytes(bytes(1 << 20))
    assert_clean_error(run_cli("list", str(f), "--no-tpm", check=3), "not a LUKS volume")


def test_luks1_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    f = tmp_path / "luks1.img"
    f.write_bytes(bytes(8 << 20))
    subprocess.run(
        ["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode", "--iter-time", "1", "--key-file", "-", str(f)],
        input=b"pw", check=True, capture_output=True,
    )  # fmt: skip
    p = run_cli("list", str(f), "--no-tpm", check=3)
    assert_clean_error(p, "LUKS1")
    assert "cryptsetup convert" in p.stderr


def test_no_tpm_is_reported_with_exit_4(image: Image, tmp_path: Path) -> None:
    p = run_cli("enroll", image.dev, f"--tpm2-device=swtpm:path={tmp_path}/absent",
                "--unlock-key-file", str(image.keyfile), check=4)  # fmt: skip
    assert_clean_error(p, "cannot open TPM")
    assert sorted(luks_dump(image.path)["keyslots"]) == ["0"]  # type: ignore[arg-type]


def test_auto_device_without_tpm_device_node(image: Image) -> None:
    if os.path.exists("/dev/tpmrm0"):
        pytest.skip("this host has a TPM")  # not in CI's tier list: such a host needs no such test
    p = run_cli("enroll", image.dev, "--unlock-key-file", str(image.keyfile), check=4)
    assert_clean_error(p, "/dev/tpmrm0")


def test_no_free_keyslot(image: Image, swtpm: Swtpm) -> None:
    for slot in range(1, 32):
        subprocess.run(
            ["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
             "--key-file", str(image.keyfile), "--new-key-slot", str(slot), image.dev, str(image.keyfile)],
            check=True, capture_output=True,
        )  # fmt: skip
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile),
                check=3)  # fmt: skip
    assert_clean_error(p, "no free keyslot")


def test_cryptsetup_missing(image: Image, tmp_path: Path) -> None:
    import sys

    empty = tmp_path / "bin"
    empty.mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "tpmseal", "list", image.dev, "--no-tpm"],
        env={**os.environ, "PATH": str(empty)}, capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 9
    assert_clean_error(p, "cryptsetup is not installed")
    assert "cryptsetup-bin" in p.stderr


def test_bad_pcr_spec_is_a_usage_error(image: Image, swtpm: Swtpm) -> None:
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--tpm2-pcrs=7:sha256=abc",
                "--unlock-key-file", str(image.keyfile), check=2)  # fmt: skip
    assert_clean_error(p, "not a hex digest")


def test_test_unlock_without_tpm_token(image: Image, swtpm: Swtpm) -> None:
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=1)
    assert_clean_error(p, "has no TPM token")


# --- malformed tokens -------------------------------------------------------------------------

def enrolled_token(image: Image, swtpm: Swtpm) -> tuple[int, dict]:
    r = json.loads(run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file",
                           str(image.keyfile), "--json").stdout)  # fmt: skip
    return r["token"], luks_dump(image.path)["tokens"][str(r["token"])]  # type: ignore[index]


def replace_token(image: Image, token_id: int, data: dict) -> None:
    subprocess.run(
        ["cryptsetup", "token", "import", "--json-file", "-", "--token-id", str(token_id), "--token-replace",
         image.dev], input=json.dumps(data).encode(), check=True, capture_output=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "code", "text"),
    [
        (lambda t: t.update(version=3), 7, "version 3 is not supported"),
        (lambda t: t.pop("srk"), 7, "missing field(s) srk"),
        (lambda t: t.update(extra=1), 7, "unknown field(s) extra"),
        (lambda t: t["seals"][0].update(private="AAAA"), 7, "cannot be decoded"),
        (lambda t: t["seals"][0].update(private=t["seals"][0]["private"][:40]), 7, "cannot be decoded"),
        (lambda t: t["seals"][0].update(public="!!"), 7, "invalid base64"),
        (lambda t: t["seals"][0].update(pin="no"), 7, "expected true or false"),
        (lambda t: t["seals"][0].update(kind="from-the-future"), 7, "kind 'from-the-future' is not supported"),
        (lambda t: t["seals"][0]["pcrs"][0].update(value="00"), 7, "expected 32 bytes"),
        (lambda t: t.update(seals=[]), 7, "non-empty list"),
    ],
    ids=["version", "missing-srk", "unknown-field", "short-private", "truncated-private", "bad-base64",
         "pin-type", "unknown-kind", "pcr-size", "no-seals"],
)
def test_malformed_token_is_rejected_cleanly(image: Image, swtpm: Swtpm, mutate, code: int, text: str) -> None:
    token_id, data = enrolled_token(image, swtpm)
    mutate(data)
    replace_token(image, token_id, data)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=code)
    assert text in p.stdout and "Traceback" not in p.stderr
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    [tok] = [t for t in listing["tokens"] if t["token"] == token_id]
    if text != "cannot be decoded":  # that one parses; only the TPM object inside is broken
        assert text in tok["error"]
    assert opens(image.path, image.keyfile.read_bytes())
    assert swtpm.loaded_handles() == []
