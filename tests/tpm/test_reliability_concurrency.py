# SPDX-License-Identifier: LGPL-2.1-or-later
"""Concurrency: commands that change one volume at the same time serialize on the volume lock.

A ``cryptsetup`` shim on PATH slows every call down and logs when it starts and ends and for which tpmseal
process, so two commands started together really overlap in time; the log then shows that their header
accesses did not interleave, and the final header shows that no keyslot or token was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, opens, run_cli

from tpmseal.lock import volume_lock

pytestmark = pytest.mark.tpm

SECOND = b"another passphrase"


def slow_shim(d: Path, delay: float = 0.15) -> Path:
    real = shutil.which("cryptsetup")
    assert real
    d.mkdir()
    log = d / "calls.log"
    shim = d / "cryptsetup"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "start $PPID" >> {log}\n'
        f"sleep {delay}\n"
        f'"{real}" "$@"; rc=$?\n'
        f'echo "end $PPID" >> {log}\n'
        "exit $rc\n"
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return log


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tpmseal", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def runs_of(log: Path) -> list[int]:
    """The pids in the order their cryptsetup runs happened; asserts no two runs overlapped."""
    owner: int | None = None
    order: list[int] = []
    for line in log.read_text().splitlines():
        what, pid = line.split()
        if what == "start":
            assert owner is None, f"cryptsetup runs of {owner} and {pid} overlapped: the lock did not hold"
            owner = int(pid)
            if not order or order[-1] != owner:
                order.append(owner)
        else:
            assert owner == int(pid)
            owner = None
    return order


def env_for(tmp_path: Path, log: Path) -> dict[str, str]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return {**os.environ, "PATH": f"{log.parent}:{os.environ['PATH']}", "TPMSEAL_RUNTIME_DIR": str(run)}


def test_enroll_and_recovery_enroll_at_once_serialize_and_both_land(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    log = slow_shim(tmp_path / "shim")
    env = env_for(tmp_path, log)
    a = start(["enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile)], env)
    time.sleep(0.3)  # inside its lock by now, or about to be
    b = start(["enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile), "--json"], env)
    ra, rb = finish(a), finish(b)
    assert ra[0] == 0, ra
    assert rb[0] == 0, rb
    order = runs_of(log)
    assert len(order) == 2, f"the two commands' cryptsetup calls interleaved: {order}"
    recovery = json.loads(rb[1])["recovery_key"].encode()
    dump = luks_dump(image.path)
    types = sorted(t["type"] for t in dump["tokens"].values())  # type: ignore[union-attr]
    assert types == ["systemd-recovery", "tpmseal-tpm2"]
    assert sorted(dump["keyslots"]) == ["0", "1", "2"]  # type: ignore[arg-type]
    assert opens(image.path, PASSPHRASE) and opens(image.path, recovery)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_enroll_and_wipe_slot_at_once_serialize_and_lose_nothing(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--key-file", str(image.keyfile), "--new-key-slot", "1", image.dev, "/dev/stdin"],
        input=SECOND, check=True, capture_output=True,
    )  # fmt: skip
    log = slow_shim(tmp_path / "shim")
    env = env_for(tmp_path, log)
    a = start(["enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile)], env)
    time.sleep(0.3)
    b = start(["wipe-slot", image.dev, "--wipe-slot=1", f"--tpm2-device={swtpm.tcti}", "--json"], env)
    ra, rb = finish(a), finish(b)
    assert ra[0] == 0, ra
    assert rb[0] == 0, rb
    assert json.loads(rb[1])["wiped_keyslots"] == [1]
    assert len(runs_of(log)) == 2
    dump = luks_dump(image.path)
    tokens = list(dump["tokens"].values())  # type: ignore[union-attr]
    assert [t["type"] for t in tokens] == ["tpmseal-tpm2"]
    assert set(dump["keyslots"]) == {"0", *tokens[0]["keyslots"]}  # type: ignore[arg-type]
    assert opens(image.path, PASSPHRASE) and not opens(image.path, SECOND)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_two_enrolls_at_once_give_one_token_and_a_clear_refusal(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    log = slow_shim(tmp_path / "shim", delay=0.05)
    env = env_for(tmp_path, log)
    argv = ["enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile)]
    a, b = start(argv, env), start(argv, env)
    results = sorted([finish(a)[0], finish(b)[0]])
    assert results == [0, 8]  # the second one saw the first one's token: "use --replace"
    assert len(runs_of(log)) == 2
    dump = luks_dump(image.path)
    assert [t["type"] for t in dump["tokens"].values()] == ["tpmseal-tpm2"]  # type: ignore[union-attr]
    assert len(dump["keyslots"]) == 2  # type: ignore[arg-type]
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


@pytest.mark.parametrize(
    "args",
    [
        ["enroll", "{dev}", "--unlock-key-file", "{key}", "--tpm2-device=swtpm:path=/nonexistent"],
        ["enroll", "{dev}", "--recovery-key", "--unlock-key-file", "{key}"],
        ["wipe-slot", "{dev}", "--wipe-slot=0", "--tpm2-device=swtpm:path=/nonexistent"],
        ["migrate", "{dev}", "--from=systemd-tpm2", "--tpm2-device=swtpm:path=/nonexistent"],
        ["repair", "{dev}"],
    ],
    ids=lambda a: a[0] + ("-recovery" if "--recovery-key" in a else ""),
)
def test_every_changing_command_takes_the_volume_lock_and_reports_busy(
    args: list[str], image: Image, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    env = {"TPMSEAL_RUNTIME_DIR": str(run), "TPMSEAL_LOCK_TIMEOUT": "0.5"}
    argv = [a.format(dev=image.dev, key=image.keyfile) for a in args]
    before = luks_dump(image.path)
    old = os.environ.get("TPMSEAL_RUNTIME_DIR")
    os.environ["TPMSEAL_RUNTIME_DIR"] = str(run)
    try:
        with volume_lock(image.dev, timeout=1):
            t0 = time.monotonic()
            r = run_cli(*argv, env=env, check=None)
            took = time.monotonic() - t0
    finally:
        if old is None:
            os.environ.pop("TPMSEAL_RUNTIME_DIR")
        else:
            os.environ["TPMSEAL_RUNTIME_DIR"] = old
    assert r.returncode == 1 and "busy" in r.stderr, (r.returncode, r.stderr)
    assert took < 20
    assert luks_dump(image.path) == before


# --- issue 17, item 4: readers see a consistent header; other writers are detected and named ---------------


def test_test_unlock_during_enroll_replace_never_prints_a_false_failure(
    image: Image, swtpm: Swtpm, tmp_path: Path
) -> None:
    tpm = f"--tpm2-device={swtpm.tcti}"
    run_cli("enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile))
    log = slow_shim(tmp_path / "shim", delay=0.1)
    env = env_for(tmp_path, log)
    reader_env = {**env, "PATH": os.environ["PATH"]}  # the reader's own cryptsetup calls are not slowed
    writer = start(["enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile), "--replace"], env)
    outs = []
    while writer.poll() is None or not outs:
        r = subprocess.run(
            [sys.executable, "-m", "tpmseal", "test-unlock", image.dev, tpm], env=reader_env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        outs.append((r.returncode, r.stdout, r.stderr))
    assert finish(writer)[0] == 0
    for rc, out, err in outs:
        assert rc == 0 and "FAILED" not in out and "ok" in out, (rc, out, err)


def test_readers_wait_for_a_writer(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    """Deterministic half of the test above: test-unlock and list do not run while the write lock is held."""
    tpm = f"--tpm2-device={swtpm.tcti}"
    run_cli("enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile))
    run = tmp_path / "run"
    env = {**os.environ, "TPMSEAL_RUNTIME_DIR": str(run)}
    old = os.environ.get("TPMSEAL_RUNTIME_DIR")
    os.environ["TPMSEAL_RUNTIME_DIR"] = str(run)
    try:
        with volume_lock(image.dev):
            readers = [start(["test-unlock", image.dev, tpm], env), start(["list", image.dev, tpm], env),
                       start(["doctor", image.dev, tpm, "--json"], env), start(["unlock", image.dev, tpm], env)]
            time.sleep(1.5)
            assert [p.poll() for p in readers] == [None, None, None, None]  # still waiting
    finally:
        if old is None:
            os.environ.pop("TPMSEAL_RUNTIME_DIR")
        else:
            os.environ["TPMSEAL_RUNTIME_DIR"] = old
    codes = [finish(p) for p in readers]
    assert [c[0] for c in codes[:2]] == [0, 0]
    assert "unseal" in str(codes[2]) and "busy" not in str(codes[2]), codes[2]  # doctor ran its checks
    assert "busy" not in str(codes[3]), codes[3]  # unlock got past the lock (mapping fails: no device-mapper)


def racing_shim(d: Path, at: str, then: str, when: str = "after") -> None:
    """cryptsetup first on PATH: right after (or before) tpmseal's first ``cryptsetup AT``, "another
    program" runs ``THEN`` against the same header (a shell snippet; $DEV is the volume)."""
    real = shutil.which("cryptsetup")
    assert real
    d.mkdir()
    done = d / "raced"
    script = d / "cryptsetup"
    race = f'if [ "$1" = {at} ] && [ ! -e {done} ]; then touch {done}; CS="{real}"; {then}; fi\n'
    script.write_text(
        "#!/bin/sh\n"
        'for a; do DEV="$a"; done\n'
        + (race if when == "before" else "")
        + f'"{real}" "$@"; rc=$?\n'
        + (race if when == "after" else "")
        + "exit $rc\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize(
    ("at", "when", "says"),
    [
        ("token", "after", ["written by another program while tpmseal wrote its marker", "sequence id"]),
        ("luksAddKey", "before", ["filled by another program", "Key slot 1 is full"]),
    ],
    ids=["after-the-marker", "before-luksaddkey"],
)
def test_a_key_added_by_another_program_between_steps_is_reported_as_such(
    at: str, when: str, says: list[str], image: Image, swtpm: Swtpm, tmp_path: Path
) -> None:
    """Another program's luksAddKey lands in the keyslot tpmseal's marker names, between marker and luksAddKey."""
    (tmp_path / "other.key").write_bytes(SECOND)
    racing_shim(
        tmp_path / "shim", at,
        f'"$CS" luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file {image.keyfile} '
        f'"$DEV" {tmp_path / "other.key"}', when,
    )  # fmt: skip
    env = {"PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile),
                env=env, check=3)  # fmt: skip
    assert all(s in p.stderr for s in says), p.stderr
    assert opens(image.path, SECOND, 1) and opens(image.path, PASSPHRASE, 0)
    out = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert out["kept_keyslots"] == [1] and opens(image.path, SECOND, 1)


def test_a_header_write_by_another_program_during_luksaddkey_stops_enroll(
    image: Image, swtpm: Swtpm, tmp_path: Path
) -> None:
    """Another program writes the header right after tpmseal's luksAddKey: tpmseal stops before its token
    goes in; its keyslot carries the marker's fingerprint, so repair removes it."""
    racing_shim(
        tmp_path / "shim", "luksAddKey",
        'echo \'{"type":"other-tool","keyslots":[]}\' | "$CS" token import --json-file - "$DEV"',
    )  # fmt: skip
    env = {"PATH": f"{tmp_path / 'shim'}:{os.environ['PATH']}"}
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile),
                env=env, check=3)  # fmt: skip
    assert "written by another program" in p.stderr, p.stderr
    out = json.loads(run_cli("repair", image.dev, "--json").stdout)
    assert out["removed_keyslots"] == [1] and opens(image.path, PASSPHRASE)
    types = [t["type"] for t in luks_dump(image.path)["tokens"].values()]  # type: ignore[union-attr]
    assert types == ["other-tool"]  # the other program's token is not tpmseal's to remove


def test_a_child_killed_by_a_signal_is_reported_as_killed(image: Image, tmp_path: Path) -> None:
    real = shutil.which("cryptsetup")
    d = tmp_path / "shim"
    d.mkdir()
    (d / "cryptsetup").write_text(f'#!/bin/sh\n[ "$1" = luksDump ] && kill -9 $$\nexec "{real}" "$@"\n')
    (d / "cryptsetup").chmod(0o755)
    p = run_cli("list", image.dev, "--no-tpm", env={"PATH": f"{d}:{os.environ['PATH']}"}, check=None)
    assert p.returncode != 0 and "killed by signal 9 (SIGKILL)" in p.stderr, p.stderr
