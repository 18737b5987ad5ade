# SPDX-License-Identifier: LGPL-2.1-or-later
"""Clean-up proves ownership (issue 17, item 1): a keyslot named by a crashed enrollment's marker is removed
only when it carries the fingerprint the marker recorded before the keyslot existed.

The attack: ``tpmseal enroll`` is SIGKILLed right after it wrote its pending marker, before its own
luksAddKey; then the admin adds a passphrase with plain ``cryptsetup luksAddKey``, which lands in the
lowest free keyslot — the very one the marker names. Neither ``tpmseal repair`` nor the next ``tpmseal
enroll`` may take it. Each test has a control: the ownership check replaced by the rule it replaced (trust
the marker; repair's "PBKDF2 is enroll's") deletes the admin's key.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, opens, run_cli

import tpmseal.enroll
import tpmseal.inventory
from tpmseal.enroll import clean_up_interrupted
from tpmseal.inventory import orphan_keyslots
from tpmseal.luks.tokens import PENDING_TYPE
from tpmseal.luks.volume import Header, Volume
from tpmseal.repair import repair

pytestmark = pytest.mark.tpm

ADMIN = b"the admin's new passphrase"
# how the admin adds a key: argon2id (cryptsetup's default, small here for speed), PBKDF2 as benchmarked
# (forced to 1000 for speed), and exactly systemd-cryptenroll's TPM keyslot parameters
ADMIN_KDFS = {
    "argon2id": ["--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4"],
    "pbkdf2": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    "pbkdf2-sha512-1000": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512"],
}


def killing_shim(d: Path, command: str, sig: int = signal.SIGKILL, delay: float = 0.0) -> Path:
    """``cryptsetup`` first on PATH: at the first ``cryptsetup COMMAND`` it signals its parent (tpmseal)
    before running the real one (delay 0), or notes that it started and runs it after ``delay`` seconds."""
    real = shutil.which("cryptsetup")
    assert real
    d.mkdir(parents=True, exist_ok=True)
    started = d / "started"
    script = d / "cryptsetup"
    if delay == 0:
        body = f'if [ "$1" = {command} ]; then kill -{sig} $PPID; exit 137; fi\n'
    else:
        body = f'if [ "$1" = {command} ]; then echo go > {started}; sleep {delay}; fi\n'
    script.write_text("#!/bin/sh\n" + body + f'exec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return started


def enroll_argv(img: Image, swtpm: Swtpm, key: Path | None = None) -> list[str]:
    return ["enroll", img.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(key or img.keyfile)]


def crash_at_marker(img: Image, swtpm: Swtpm, tmp_path: Path, *extra: str) -> int:
    """Run enroll (or enroll --recovery-key) and SIGKILL it between its marker and its luksAddKey; the
    keyslot the marker names."""
    killing_shim(tmp_path / "shim", "luksAddKey")
    env = {"PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}
    argv = enroll_argv(img, swtpm) if not extra else ["enroll", img.dev, *extra, "--unlock-key-file", str(img.keyfile)]
    p = run_cli(*argv, env=env, check=None)
    assert p.returncode == -signal.SIGKILL, p
    [marker] = [t for t in luks_dump(img.path)["tokens"].values() if t["type"] == PENDING_TYPE]  # type: ignore[union-attr]
    return int(marker["keyslot"])


def admin_adds_key(img: Image, kdf: str) -> int:
    """Plain cryptsetup luksAddKey, no keyslot given: it takes the lowest free one."""
    before = set(luks_dump(img.path)["keyslots"])  # type: ignore[arg-type]
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--batch-mode", *ADMIN_KDFS[kdf], "--key-file", str(img.keyfile), img.dev,
         "/dev/stdin"],
        input=ADMIN, check=True, capture_output=True,
    )  # fmt: skip
    [new] = set(luks_dump(img.path)["keyslots"]) - before  # type: ignore[arg-type]
    return int(new)


def trust_the_marker(header: Header) -> tuple[list[int], list[int]]:
    """The rule enroll's clean-up used before: every marked keyslot nobody claims is an orphan."""
    return orphan_keyslots(header), []


def pbkdf2_is_enrolls(header: Header) -> tuple[list[int], list[int]]:
    """The rule repair used before: a marked PBKDF2 keyslot is enroll's."""
    ks = orphan_keyslots(header)
    return [k for k in ks if header.keyslots[k].kdf == "pbkdf2"], [k for k in ks if header.keyslots[k].kdf != "pbkdf2"]


@pytest.mark.parametrize("kdf", list(ADMIN_KDFS))
def test_admin_key_in_the_marked_keyslot_survives_repair_and_enroll(
    kdf: str, image: Image, swtpm: Swtpm, tmp_path: Path
) -> None:
    marked = crash_at_marker(image, swtpm, tmp_path)
    assert admin_adds_key(image, kdf) == marked  # the admin's key lands in the very keyslot the marker names
    # the admin then drops the old passphrase: the new one is the only way in left
    subprocess.run(["cryptsetup", "luksKillSlot", "--batch-mode", image.dev, "0"], check=True, capture_output=True)
    assert sorted(luks_dump(image.path)["keyslots"]) == [str(marked)]  # type: ignore[arg-type]

    out = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert out["kept_keyslots"] == [marked] and out["removed_keyslots"] == []
    assert opens(image.path, ADMIN, marked)
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert {k["keyslot"]: k["kind"] for k in listing["keyslots"]} == {marked: "orphan"}

    admin_key = tmp_path / "admin.key"
    admin_key.write_bytes(ADMIN)
    r = json.loads(run_cli(*enroll_argv(image, swtpm, admin_key), "--json").stdout)
    assert r["cleaned_up"] == [] and r["keyslot"] != marked
    assert opens(image.path, ADMIN, marked)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
    again = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert again["removed_keyslots"] == [] and opens(image.path, ADMIN, marked)


@pytest.mark.parametrize("rule", [trust_the_marker, pbkdf2_is_enrolls], ids=["enroll-rule", "repair-rule"])
def test_control_the_old_rules_delete_the_admins_pbkdf2_key(
    rule: object, image: Image, swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marked = crash_at_marker(image, swtpm, tmp_path)
    assert admin_adds_key(image, "pbkdf2") == marked
    monkeypatch.setattr(tpmseal.inventory, "proven_orphans", rule)
    monkeypatch.setattr(tpmseal.enroll, "proven_orphans", rule)
    volume = Volume(image.dev)
    repair(volume)
    assert marked not in volume.header().keyslots and not opens(image.path, ADMIN)  # the hole, shown


def test_control_the_old_enroll_rule_deletes_an_argon2_key(
    image: Image, swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marked = crash_at_marker(image, swtpm, tmp_path)
    assert admin_adds_key(image, "argon2id") == marked
    monkeypatch.setattr(tpmseal.enroll, "proven_orphans", trust_the_marker)
    volume = Volume(image.dev)
    clean_up_interrupted(volume, volume.header())
    assert not opens(image.path, ADMIN)


def test_a_real_orphan_is_removed_and_never_the_last_keyslot(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    """The positive side: a keyslot our own luksAddKey added before the crash carries the fingerprint."""
    killing_shim(tmp_path / "shim", "token")  # luksAddKey ran; killed at the token import that replaces the marker
    shim = tmp_path / "shim" / "cryptsetup"
    text = shim.read_text().replace(
        'if [ "$1" = token ]', 'if [ "$1" = token ] && [ -e ' + str(tmp_path / "armed") + " ]"
    )
    text = text.replace("#!/bin/sh\n", f'#!/bin/sh\n[ "$1" = luksAddKey ] && touch {tmp_path / "armed"}\n')
    shim.write_text(text)
    p = run_cli(*enroll_argv(image, swtpm), env={"PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}, check=None)
    assert p.returncode == -signal.SIGKILL
    volume = Volume(image.dev)
    header = volume.header()
    assert orphan_keyslots(header) == [1] and header.keyslots[1].iterations not in (None, 1000)
    out = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert out["removed_keyslots"] == [1] and out["kept_keyslots"] == []
    assert luks_dump(image.path)["tokens"] == {} and opens(image.path, PASSPHRASE)
    # the same orphan as the only keyslot left: kept
    v2 = Volume(str(tmp_path / "only.img"))
    from support import make_luks2

    img2 = make_luks2(tmp_path / "only.img")
    from tpmseal.luks.tokens import pending_marker

    v2.import_token(pending_marker(1, 2222), 0)
    v2.add_keyslot(PASSPHRASE, b"lost", 1, 2222)
    subprocess.run(["cryptsetup", "luksKillSlot", "--batch-mode", img2.dev, "0"], check=True, capture_output=True)
    out = json.loads(run_cli("repair", img2.dev, "--json").stdout)
    assert out["removed_keyslots"] == [] and out["kept_keyslots"] == [1]
    assert sorted(luks_dump(img2.path)["keyslots"]) == ["1"]  # type: ignore[arg-type]


def test_clean_up_waits_for_the_unlock_key_to_be_proven(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    """A wrong unlock key: enroll fails and the header is exactly as it was, orphan included."""
    from tpmseal.luks.tokens import pending_marker

    volume = Volume(image.dev)
    volume.import_token(pending_marker(1, 3333), 0)
    volume.add_keyslot(PASSPHRASE, b"lost in a crash", 1, 3333)
    before = luks_dump(image.path)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"not the passphrase")
    p = run_cli(*enroll_argv(image, swtpm, wrong), check=None)
    assert p.returncode != 0 and "does not open" in p.stderr
    assert luks_dump(image.path) == before


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT-to-group"])
def test_interrupt_during_luksaddkey_rolls_back(how: str, image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) or SIGTERM while enroll's luksAddKey runs: cryptsetup is let
    finish (or dies of the SIGINT itself), then enroll takes back its keyslot and marker; exit 130."""
    started = killing_shim(tmp_path / "shim", "luksAddKey", delay=1.0)
    env = {**os.environ, "PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}
    before = luks_dump(image.path)
    p = subprocess.Popen(
        [sys.executable, "-m", "tpmseal", *enroll_argv(image, swtpm)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.02)
    if how == "SIGTERM":
        p.send_signal(signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    after = luks_dump(image.path)
    assert after["keyslots"].keys() == before["keyslots"].keys() and after["tokens"] == {}, after  # type: ignore[union-attr]
    assert opens(image.path, PASSPHRASE)
    # and the next admin key, wherever it lands, is safe
    k = admin_adds_key(image, "pbkdf2")
    json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert opens(image.path, ADMIN, k)


# --- item 2: a recovery key counts only once it has been shown -----------------------------------------------


def test_recovery_key_killed_before_it_was_shown_is_unconfirmed_and_repair_removes_it(
    image: Image, swtpm: Swtpm, tmp_path: Path
) -> None:
    killing_shim(tmp_path / "shim", "open")  # after its luksAddKey, at the test of the new key: before the print
    env = {"PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}
    p = run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile), env=env, check=None)
    assert p.returncode == -signal.SIGKILL and "recovery key" not in p.stdout.lower()
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert {k["keyslot"]: k["kind"] for k in listing["keyslots"]} == {0: "password", 1: "unconfirmed"}
    assert listing["orphan_keyslots"] == [1]
    assert "never shown" in run_cli("list", image.dev, "--no-tpm").stderr
    # not a way in: the passphrase cannot be wiped in its favour
    run_cli("wipe-slot", image.dev, "--wipe-slot=0", f"--tpm2-device={swtpm.tcti}", check=8)
    out = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert out["removed_keyslots"] == [1] and luks_dump(image.path)["tokens"] == {}
    assert opens(image.path, PASSPHRASE)


def test_recovery_key_is_confirmed_only_after_it_was_printed(image: Image, swtpm: Swtpm) -> None:
    r = run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile), "--json")
    key = json.loads(r.stdout)["recovery_key"].encode()
    dump = luks_dump(image.path)
    assert [t["type"] for t in dump["tokens"].values()] == ["systemd-recovery"]  # type: ignore[union-attr]
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert {k["keyslot"]: k["kind"] for k in listing["keyslots"]} == {0: "password", 1: "recovery"}
    assert opens(image.path, key, 1)
    out = run_cli("wipe-slot", image.dev, "--wipe-slot=0", f"--tpm2-device={swtpm.tcti}", "--json")
    assert json.loads(out.stdout)["wiped_keyslots"] == [0] and opens(image.path, key)


# --- item 3: a dead TPM slot is not called healthy -------------------------------------------------------------


def kill_key_material(img: Image, keyslot: int) -> None:
    """What luksKillSlot does before it rewrites the header: the keyslot's area is overwritten."""
    area = luks_dump(img.path)["keyslots"][str(keyslot)]["area"]  # type: ignore[index]
    with open(img.path, "r+b") as f:
        f.seek(int(area["offset"]))
        f.write(os.urandom(int(area["size"])))


def test_dead_tpm_slot_is_reported_by_list_doctor_and_repair(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    tpm = f"--tpm2-device={swtpm.tcti}"
    run_cli("enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile))
    kill_key_material(image, 1)
    p = run_cli("test-unlock", image.dev, tpm, check=None)
    assert p.returncode != 0 and "does not open" in p.stdout
    listing = json.loads(run_cli("list", image.dev, tpm, "--json").stdout)
    [tok] = listing["tokens"]
    assert tok["policy_satisfied"] is True and tok["opens_keyslot"] is False
    text = run_cli("list", image.dev, tpm)
    assert "DEAD" in text.stdout and "is dead" in text.stderr
    doc = json.loads(run_cli("doctor", image.dev, tpm, f"--root={tmp_path}", "--json", check=None).stdout)
    unseal = [c for c in doc["checks"] if c["check"] == "token-unseal"]
    assert unseal and all(c["status"] == "fail" for c in unseal), unseal
    out = json.loads(run_cli("repair", image.dev, tpm, "--json").stdout)
    assert list(out["dead_tokens"]) == ["0"] and out["removed_keyslots"] == []
    run_cli("wipe-slot", image.dev, "--wipe-slot=0", tpm, check=8)  # the dead slot is no way in
    assert opens(image.path, PASSPHRASE)


def test_control_a_pcr_check_alone_calls_the_dead_token_healthy(
    image: Image, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    kill_key_material(image, 1)
    monkeypatch.setattr(tpmseal.inventory, "_check_keys", lambda *a: None)
    volume = Volume(image.dev)
    [tok] = tpmseal.inventory.report(volume, volume.header(), swtpm.tcti).tokens
    assert tok.policy_satisfied is True and tok.opens_keyslot is None  # "PCRs match", nothing else known
