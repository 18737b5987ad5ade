# SPDX-License-Identifier: LGPL-2.1-or-later
"""wipe-slot (and enroll --wipe-slot): never removes the last working way in."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, opens, run_cli

pytestmark = pytest.mark.tpm


def enroll(img: Image, swtpm: Swtpm, *extra: str) -> dict:
    return json.loads(run_cli(
        "enroll", img.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(img.keyfile), "--json", *extra
    ).stdout)  # fmt: skip


def wipe(img: Image, swtpm: Swtpm, spec: str, *extra: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    return run_cli("wipe-slot", img.dev, f"--tpm2-device={swtpm.tcti}", f"--wipe-slot={spec}", *extra, check=check)


def keyslots(img: Image) -> list[int]:
    return sorted(int(k) for k in luks_dump(img.path)["keyslots"])  # type: ignore[union-attr]


def test_wipe_refuses_last_keyslot(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "0", check=8)
    assert "no working passphrase" in p.stderr and "--force" in p.stderr
    assert keyslots(image) == [0] and opens(image.path, PASSPHRASE)


def test_wipe_all_is_refused_without_force(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    wipe(image, swtpm, "all", check=8)
    assert keyslots(image) == [0, 1]


def test_wipe_password_allowed_when_tpm_slot_works(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    out = json.loads(wipe(image, swtpm, "password", "--json").stdout)
    assert out["wiped_keyslots"] == [0]
    assert keyslots(image) == [1] and not opens(image.path, PASSPHRASE)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_tpm_slot_whose_pcrs_changed_does_not_count_as_working(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    swtpm.extend(7, b"pcr 7 moved")
    wipe(image, swtpm, "password", check=8)
    assert keyslots(image) == [0, 1] and opens(image.path, PASSPHRASE)


def test_wipe_tpm2_removes_keyslot_and_token_together(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    wipe(image, swtpm, "tpm2")
    dump = luks_dump(image.path)
    assert sorted(dump["keyslots"]) == ["0"] and dump["tokens"] == {}  # type: ignore[arg-type]


def test_wipe_by_index_list(image: Image, swtpm: Swtpm) -> None:
    for _ in range(2):
        run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    assert keyslots(image) == [0, 1, 2]
    wipe(image, swtpm, "1,2")
    dump = luks_dump(image.path)
    assert sorted(dump["keyslots"]) == ["0"] and dump["tokens"] == {}  # type: ignore[arg-type]


def test_wipe_unused_index_is_a_usage_error(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "5", check=2)
    assert "not in use" in p.stderr


def test_wipe_empty_removes_only_empty_passphrase_slots(image: Image, swtpm: Swtpm) -> None:
    # keyslot 1 gets an empty passphrase (cryptsetup reads the new one as a line from stdin)
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", str(image.path)],
        input=PASSPHRASE + b"\n\n", check=True, capture_output=True,
    )  # fmt: skip
    run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    assert keyslots(image) == [0, 1, 2]
    wipe(image, swtpm, "empty")
    assert keyslots(image) == [0, 2]


def test_wipe_force_removes_the_last_slot_loudly(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "0", "--force")
    assert "WARNING" in p.stderr and "--force" in p.stderr
    assert keyslots(image) == []


def test_enroll_wipe_slot_password_runs_after_the_new_slot_is_proven(image: Image, swtpm: Swtpm) -> None:
    r = enroll(image, swtpm, "--wipe-slot=password")
    assert r["wiped_keyslots"] == [0] and keyslots(image) == [r["keyslot"]]
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_enroll_wipe_all_keeps_the_new_slot(image: Image, swtpm: Swtpm) -> None:
    run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    r = enroll(image, swtpm, "--wipe-slot=all")
    assert sorted(r["wiped_keyslots"]) == [0, 1] and keyslots(image) == [r["keyslot"]]


def test_pin_token_counts_as_working_only_while_its_pcrs_hold(image: Image, swtpm: Swtpm) -> None:
    swtpm.clear_lockout()
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=b"2468\n")  # fmt: skip
    swtpm.extend(7, b"pcr 7 moved under a PIN token")
    wipe(image, swtpm, "password", check=8)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "PCR(s) 7 differ" in p.stdout  # and no PIN was asked for (stdin is empty)
    assert keyslots(image) == [0, 1]
