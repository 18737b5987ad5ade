# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash at every step: SIGKILL a tpmseal command at each step boundary, then check that nothing is lost.

Kill points are enumerated without product hooks:

- every external command: a ``cryptsetup`` shim first on PATH counts its invocations and, at invocation N,
  SIGKILLs its parent (the tpmseal process) either *before* running the real cryptsetup or *after* it
  returned (both boundaries of every header write and every read);
- every TPM command: the traffic goes through ``TpmProxy``, whose ``on_command`` callback SIGKILLs the
  tpmseal process once the response to command N has passed.

A calibration run (nothing killed) counts both. After each kill: the passphrase still opens the volume,
every TPM token bound to a keyslot unseals and opens it (the old token where the command keeps it; for
``--replace`` and ``migrate`` the old one or the proven new one), ``list`` reports every leftover (orphan
keyslot, marker, token bound to nothing), and ``repair`` removes them without touching a working key.

A SIGKILL can leave sessions loaded in swtpm, which has no resource manager (a kernel /dev/tpmrm0 flushes
them when the process dies): each kill is followed by ``tpm2_flushcontext``, as the kernel would do.

CI runs a sample of the kill points of each command (all cryptsetup boundaries of plain ``enroll``);
``TPMSEAL_LONG=1`` runs every one. Each test prints covered/survived counts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PASSPHRASE, Swtpm, make_luks2, opens, run_cli, start_swtpm

from tpmseal.inventory import ORPHAN, UNCONFIRMED, report, run_test_unlock
from tpmseal.luks.tokens import (
    CLEVIS_TYPE,
    NATIVE_TYPE,
    PENDING_TYPE,
    RECOVERY_TYPE,
    SYSTEMD_TPM2_TYPE,
    pending_marker,
)
from tpmseal.luks.volume import Volume
from tpmseal.repair import RepairResult, repair
from tpmseal.testing.tpmproxy import TpmCommand, TpmProxy

pytestmark = pytest.mark.tpm

LONG = os.environ.get("TPMSEAL_LONG", "") == "1"
KEY_TYPES = (NATIVE_TYPE, RECOVERY_TYPE, SYSTEMD_TPM2_TYPE, CLEVIS_TYPE)
TPM_TOKEN_TYPES = (NATIVE_TYPE, SYSTEMD_TPM2_TYPE, CLEVIS_TYPE)


@pytest.fixture(scope="module")
def crash_tpm() -> Iterator[Swtpm]:
    """A private swtpm: killed clients leave sessions behind, which must not disturb other tests."""
    d = Path(tempfile.mkdtemp(prefix="tsrel-", dir="/tmp"))
    t = start_swtpm(d)
    yield t
    t.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tsk-", dir="/tmp"))  # short: AF_UNIX paths are limited to 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def flush_all(t: Swtpm) -> None:
    for kind in ("-t", "-l", "-s"):
        subprocess.run(["tpm2_flushcontext", kind], env=t.env(), capture_output=True, check=False)


class Shim:
    """``cryptsetup`` on PATH: counts calls; at call N kills its parent before or after the real one."""

    def __init__(self, d: Path) -> None:
        real = shutil.which("cryptsetup")
        assert real
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.count_file = d / "count"
        self.ctl = d / "kill"
        script = d / "cryptsetup"
        script.write_text(
            "#!/bin/sh\n"
            f"C={self.count_file}\n"
            'n=$(( $(cat "$C" 2>/dev/null || echo 0) + 1 )); echo $n > "$C"\n'
            f'read -r at when < {self.ctl} 2>/dev/null || at=0\n'
            'if [ "$n" = "$at" ] && [ "$when" = before ]; then kill -9 $PPID; exit 137; fi\n'
            f'"{real}" "$@"; rc=$?\n'
            'if [ "$n" = "$at" ] && [ "$when" = after ]; then kill -9 $PPID; fi\n'
            "exit $rc\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        self.arm(0, "none")

    def arm(self, at: int, when: str) -> None:
        self.count_file.write_text("0\n")
        self.ctl.write_text(f"{at} {when}\n")

    @property
    def calls(self) -> int:
        return int(self.count_file.read_text().strip() or 0)


class Killer:
    """The proxy's on_command callback: SIGKILL the tpmseal process after TPM command N."""

    def __init__(self) -> None:
        self.at = 0
        self.seen = 0
        self.pid: int | None = None
        self.lock = threading.Lock()

    def arm(self, at: int) -> None:
        with self.lock:
            self.at, self.seen, self.pid = at, 0, None

    def __call__(self, cmd: TpmCommand) -> None:
        with self.lock:
            self.seen += 1
            if self.seen == self.at and self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)


@dataclass
class Scenario:
    name: str
    argv: Callable[[Path, str], list[str]]  # (image, tcti) -> tpmseal arguments
    prepare: Callable[[Path, Swtpm], None]  # makes the template image
    stdin: bytes = b""
    # keyslots whose loss is the command's purpose (wipe-slot): may be gone after a kill
    may_go: frozenset[int] = frozenset()
    passphrase_may_go: bool = False
    extra_keys: dict[int, bytes] = field(default_factory=dict)  # keyslot -> passphrase that must keep working


def _enroll_native(img: Path, t: Swtpm, *extra: str) -> None:
    run_cli("enroll", str(img), f"--tpm2-device={t.tcti}", "--unlock-key-file", str(img.with_suffix(".key")), *extra)


def prep_plain(img: Path, t: Swtpm) -> None:
    pass


def prep_native(img: Path, t: Swtpm) -> None:
    _enroll_native(img, t)


def prep_systemd(img: Path, t: Swtpm) -> None:
    _enroll_native(img, t, "--token-type=systemd-tpm2")


SECOND = b"second passphrase, to be wiped"


def prep_wipe(img: Path, t: Swtpm) -> None:
    _enroll_native(img, t)  # keyslot 1: TPM
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--key-file", str(img.with_suffix(".key")), "--new-key-slot", "2", str(img), "/dev/stdin"],
        input=SECOND, check=True, capture_output=True,
    )  # fmt: skip


def key_args(img: Path, tcti: str) -> list[str]:
    return [f"--tpm2-device={tcti}", "--unlock-key-file", str(img.with_suffix(".key"))]


SCENARIOS = {
    "enroll": Scenario("enroll", lambda i, t: ["enroll", str(i), *key_args(i, t)], prep_plain),
    "enroll-replace": Scenario(
        "enroll-replace", lambda i, t: ["enroll", str(i), *key_args(i, t), "--replace"], prep_native
    ),
    "enroll-recovery": Scenario(
        "enroll-recovery", lambda i, t: ["enroll", str(i), "--recovery-key", *key_args(i, t)[1:]], prep_plain
    ),
    "wipe-slot": Scenario(
        "wipe-slot",
        lambda i, t: ["wipe-slot", str(i), "--wipe-slot=2", f"--tpm2-device={t}"],
        prep_wipe,
        may_go=frozenset({2}),
    ),
    "migrate": Scenario(
        "migrate", lambda i, t: ["migrate", str(i), "--from=systemd-tpm2", f"--tpm2-device={t}"], prep_systemd
    ),
}


@dataclass
class Outcome:
    covered: int = 0
    survived: int = 0
    completed: int = 0  # ran to the end before the kill landed (the last TPM command)
    failures: list[str] = field(default_factory=list)


def run_killable(argv: list[str], env: dict[str, str], killer: Killer | None) -> int:
    p = subprocess.Popen(
        [sys.executable, "-m", "tpmseal", *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    if killer is not None:
        with killer.lock:
            killer.pid = p.pid
    try:
        p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"tpmseal {' '.join(argv)} hung") from None
    return p.returncode


def tpm_tokens_ok(img: Path, tcti: str) -> dict[int, bool]:
    """token id -> whether it unseals and opens its keyslot(s), for every TPM token bound to a keyslot."""
    v = Volume(str(img))
    results = run_test_unlock(v, v.header(), tcti, only=lambda t: bool(t.keyslots))
    return {r.token: r.ok for r in results}


def check_after_kill(
    sc: Scenario, img: Path, tcti: str, before: dict[str, object], repairs: list[RepairResult] | None = None
) -> list[str]:
    """The invariants after a kill; returns what broke (empty: survived). ``repairs`` collects what repair did."""
    problems: list[str] = []
    v = Volume(str(img))
    header = v.header()
    if not (sc.passphrase_may_go or opens(img, PASSPHRASE)):
        problems.append("the passphrase no longer opens the volume")
    # The keyslot wipe-slot was asked to remove may be gone, intact, or — killed inside cryptsetup's
    # luksKillSlot, which wipes the key material before it rewrites the header — present but dead: that
    # is cryptsetup's own intermediate state (issue 17, item 3), not a lost key (the admin asked for it to
    # go), and the rerun below must finish removing it. Every other key is checked as before.
    ok = tpm_tokens_ok(img, tcti)
    broken = [t for t, good in ok.items() if not good]
    if broken:
        problems.append(f"TPM token(s) {broken} bound to a keyslot do not open it")
    if before["tpm_tokens"] and not any(ok.values()):
        problems.append("no TPM token opens the volume any more (one did before)")
    # every leftover is reported by list
    rep = report(v, header, None)
    listed_unbound = {t.token for t in rep.tokens if not t.keyslots}
    claimed = {k for t in header.tokens.values() if t.type != PENDING_TYPE for k in t.keyslots}
    added = set(header.keyslots) - set(before["keyslots"])  # type: ignore[arg-type]
    unclaimed_new = {k for k in added if k not in claimed}
    if unclaimed_new - set(rep.orphan_keyslots):
        problems.append(f"new keyslot(s) {sorted(unclaimed_new)} without token not reported as orphans")
    for t in header.tokens.values():
        if t.type == PENDING_TYPE and t.id not in rep.orphan_tokens:
            problems.append(f"marker token {t.id} not reported")
        if t.type in KEY_TYPES and not t.keyslots and t.id not in listed_unbound | set(rep.orphan_tokens):
            problems.append(f"token {t.id} bound to no keyslot not reported")
    # repair cleans up, and keeps every working key
    res = repair(v)
    if repairs is not None:
        repairs.append(res)
    header = v.header()
    rep = report(v, header, None)
    left = {k.keyslot: k.kind for k in rep.keyslots if k.kind in (ORPHAN, UNCONFIRMED)}
    if left:
        problems.append(f"repair left orphan or unconfirmed keyslot(s) {left}")
    if rep.orphan_keyslots or rep.orphan_tokens or any(t.type in KEY_TYPES and not t.keyslots for t in rep.tokens):
        problems.append(f"repair left orphans: {rep.orphan_keyslots} {rep.orphan_tokens}")
    if any(k not in claimed for k in set(header.keyslots) & added):
        problems.append("repair left an unclaimed new keyslot")
    if not (sc.passphrase_may_go or opens(img, PASSPHRASE)):
        problems.append("the passphrase no longer opens the volume after repair")
    after_ok = tpm_tokens_ok(img, tcti)
    if {t for t, g in ok.items() if g} - {t for t, g in after_ok.items() if g}:
        problems.append(f"repair broke a working TPM token ({res.actions})")
    if not all(after_ok.values()):
        problems.append(f"a dead TPM token is left after repair: {after_ok}")
    return problems


def snapshot(img: Path, tcti: str) -> dict[str, object]:
    header = Volume(str(img)).header()
    return {"keyslots": sorted(header.keyslots), "tpm_tokens": [t for t, ok in tpm_tokens_ok(img, tcti).items() if ok]}


def pick(points: list[tuple[str, int, str]], budget: int) -> list[tuple[str, int, str]]:
    """All points in long mode; else an even spread of at most ``budget``, always with the first and last."""
    if LONG or len(points) <= budget:
        return points
    if budget <= 1:
        return points[len(points) // 2 :][:budget]
    step = (len(points) - 1) / (budget - 1)
    return [points[round(i * step)] for i in range(budget)]


# CI budget per scenario: (cryptsetup kill points, TPM kill points)
BUDGET = {
    "enroll": (99, 2),
    "enroll-replace": (4, 2),
    "enroll-recovery": (4, 0),
    "wipe-slot": (3, 1),
    "migrate": (4, 2),
}


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture (the figures belong in the CI log)."""
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capman is None or reporter is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("\n" + line)


def crash_every_step(sc: Scenario, t: Swtpm, work: Path, request: pytest.FixtureRequest) -> Outcome:
    d = work / sc.name
    d.mkdir()
    template = d / "template.img"
    make_luks2(template)
    sc.prepare(template, t)
    flush_all(t)
    shim = Shim(d / "shim")
    killer = Killer()
    proxy_sock = d / "p"
    runtime = d / "run"
    runtime.mkdir()
    env = {
        **os.environ,
        "PATH": f"{shim.dir}:{os.environ['PATH']}",
        "TPMSEAL_RUNTIME_DIR": str(runtime),
        "TSS2_LOG": "all+none",
    }
    img = d / "disk.img"
    key = d / "disk.key"
    key.write_bytes(PASSPHRASE)
    outcome = Outcome()
    with TpmProxy(t.sock, proxy_sock, on_command=killer) as proxy:
        tcti = f"swtpm:path={proxy_sock}"
        argv = sc.argv(img, tcti)

        shutil.copyfile(template, img)
        state = snapshot(img, t.tcti)

        def fresh() -> dict[str, object]:
            shutil.copyfile(template, img)
            return state

        # calibration: nothing killed
        fresh()
        shim.arm(0, "none")
        killer.arm(0)
        proxy.reset()
        rc = run_killable(argv, env, killer)
        assert rc == 0, f"calibration run of {sc.name} failed with {rc}"
        n_calls, n_tpm = shim.calls, proxy.count()
        assert n_calls >= 2
        cs_points = [("cryptsetup", i, w) for i in range(1, n_calls + 1) for w in ("before", "after")]
        tpm_points = [("tpm", i, "after") for i in range(1, n_tpm + 1)]
        b_cs, b_tpm = BUDGET[sc.name]
        points = pick(cs_points, b_cs) + (pick(tpm_points, b_tpm) if b_tpm or LONG else [])
        for kind, n, when in points:
            before = fresh()
            if kind == "cryptsetup":
                shim.arm(n, when)
                killer.arm(0)
            else:
                shim.arm(0, "none")
                killer.arm(n)
            rc = run_killable(argv, env, killer)
            flush_all(t)
            shim.arm(0, "none")
            killer.arm(0)
            label = f"{sc.name}: kill {when} {kind} call {n}"
            if rc == 0:  # the last response passed and the process finished before the signal landed
                outcome.completed += 1
                continue
            if rc != -signal.SIGKILL:
                outcome.failures.append(f"{label}: not killed (exit {rc})")
                continue
            outcome.covered += 1
            problems = check_after_kill(sc, img, t.tcti, before)
            if problems:
                outcome.failures.append(f"{label}: {'; '.join(problems)}")
            else:
                outcome.survived += 1
        say(
            request,
            f"crash suite, {sc.name}: {n_calls} cryptsetup calls x 2 boundaries + {n_tpm} TPM commands = "
            f"{len(cs_points) + len(tpm_points)} kill points; covered {outcome.covered}, survived {outcome.survived}"
            f"{f', finished before the kill {outcome.completed}' if outcome.completed else ''}"
        )
    return outcome


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sigkill_at_every_step_loses_no_key_and_repair_cleans_up(
    name: str, crash_tpm: Swtpm, work: Path, request: pytest.FixtureRequest
) -> None:
    outcome = crash_every_step(SCENARIOS[name], crash_tpm, work, request)
    assert not outcome.failures, "\n".join(outcome.failures)
    assert outcome.covered == outcome.survived > 0


def test_repair_cli_removes_marker_orphan_and_unbound_tokens(crash_tpm: Swtpm, work: Path) -> None:
    img = make_luks2(work / "repair.img")
    v = Volume(img.dev)
    v.import_token(pending_marker(3, 4321), 0)
    v.add_keyslot(PASSPHRASE, b"a key lost in a crash", 3, 4321)  # with the marker's fingerprint, as enroll does
    v.import_token({"type": PENDING_TYPE, "keyslots": [], "version": 1, "keyslot": "5", "started": "x"}, 1)
    v.import_token({"type": RECOVERY_TYPE, "keyslots": []}, 2)
    listing = json.loads(run_cli("list", img.dev, "--no-tpm", "--json").stdout)
    assert listing["orphan_keyslots"] == [3] and listing["orphan_tokens"] == [0, 1, 2]
    out = json.loads(run_cli("repair", img.dev, "--json").stdout)
    assert out["removed_keyslots"] == [3] and out["removed_tokens"] == [0, 1, 2] and out["kept_keyslots"] == []
    listing = json.loads(run_cli("list", img.dev, "--no-tpm", "--json").stdout)
    assert listing["orphan_keyslots"] == [] and listing["orphan_tokens"] == [] and listing["tokens"] == []
    assert opens(img.path, PASSPHRASE)
    assert "nothing to repair" in run_cli("repair", img.dev).stdout


def test_repair_keeps_a_marked_keyslot_that_is_not_provably_an_orphan(work: Path) -> None:
    """A marker that names an argon2 keyslot (an admin's passphrase added after a crash) does not get it killed."""
    img = make_luks2(work / "keep.img")
    v = Volume(img.dev)
    v.import_token({"type": PENDING_TYPE, "keyslots": [], "version": 1, "keyslot": "1", "started": "x"}, 0)
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
         "--pbkdf-memory", "32", "--key-file", str(img.keyfile), "--new-key-slot", "1", img.dev, "/dev/stdin"],
        input=b"admin passphrase", check=True, capture_output=True,
    )  # fmt: skip
    r = run_cli("repair", img.dev, "--json")
    out = json.loads(r.stdout)
    assert out["kept_keyslots"] == [1] and out["removed_keyslots"] == [] and out["removed_tokens"] == []
    assert opens(img.path, b"admin passphrase", 1)


def test_repair_waits_for_the_volume_lock(work: Path) -> None:
    from tpmseal.lock import volume_lock

    img = make_luks2(work / "lock.img")
    runtime = work / "lockrun"
    env = {"TPMSEAL_RUNTIME_DIR": str(runtime), "TPMSEAL_LOCK_TIMEOUT": "0.5"}
    old = os.environ.get("TPMSEAL_RUNTIME_DIR")
    os.environ["TPMSEAL_RUNTIME_DIR"] = str(runtime)
    try:
        with volume_lock(img.dev):
            r = run_cli("repair", img.dev, env=env, check=1)
    finally:
        if old is None:
            os.environ.pop("TPMSEAL_RUNTIME_DIR")
        else:
            os.environ["TPMSEAL_RUNTIME_DIR"] = old
    assert "busy" in r.stderr


# --- random-time kills (issue 17): process-group SIGKILL at a uniformly random moment of the command -----------

KILL_RUNS = int(os.environ.get("TPMSEAL_KILL_RUNS", "0") or 0)  # long mode: this many kills in all (>= 200)
CI_KILLS = {"enroll": 2, "enroll-replace": 2, "enroll-recovery": 2, "wipe-slot": 2, "migrate": 2}


@dataclass
class RandomOutcome:
    kills: int = 0
    mid_command: int = 0  # the process died of the signal (not finished first)
    survived: int = 0
    repaired: int = 0  # repair removed something
    left_for_admin: int = 0  # repair kept something and said so
    failures: list[str] = field(default_factory=list)


def signature(img: Path) -> tuple[tuple[str, ...], int]:
    header = Volume(str(img)).header()
    return tuple(sorted(t.type for t in header.tokens.values())), len(header.keyslots)


def run_in_group(argv: list[str], env: dict[str, str], kill_after: float | None) -> tuple[int, float]:
    """Run tpmseal in its own process group; SIGKILL the whole group after ``kill_after`` seconds."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "tpmseal", *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    if kill_after is not None:
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    try:
        p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError(f"tpmseal {' '.join(argv)} hung") from None
    return p.returncode, time.monotonic() - t0


def kill_at_random_times(sc: Scenario, t: Swtpm, work: Path, runs: int, rng: random.Random) -> RandomOutcome:
    d = work / f"random-{sc.name}"
    d.mkdir()
    template = d / "template.img"
    make_luks2(template)
    sc.prepare(template, t)
    flush_all(t)
    img = d / "disk.img"
    img.with_suffix(".key").write_bytes(PASSPHRASE)
    runtime = d / "run"
    runtime.mkdir()
    env = {**os.environ, "TPMSEAL_RUNTIME_DIR": str(runtime), "TSS2_LOG": "all+none"}
    argv = sc.argv(img, t.tcti)
    # the serial orders: the command once, and twice
    shutil.copyfile(template, img)
    state = snapshot(img, t.tcti)
    rc1, duration = run_in_group(argv, env, None)
    assert rc1 == 0, f"{sc.name}: calibration run failed ({rc1})"
    once = signature(img)
    rc2, _ = run_in_group(argv, env, None)
    twice = signature(img)
    serial = {(0, once), (rc2, twice)}
    out = RandomOutcome()
    for i in range(runs):
        shutil.copyfile(template, img)
        delay = rng.uniform(0, duration)
        rc, _ = run_in_group(argv, env, delay)
        flush_all(t)
        out.kills += 1
        label = f"{sc.name}: kill {i} at {delay:.3f}s of {duration:.3f}s"
        if rc == 0:  # finished before the signal: a plain success, still checked below
            pass
        elif rc == -signal.SIGKILL:
            out.mid_command += 1
        else:
            out.failures.append(f"{label}: exit {rc}")
            continue
        repairs: list[RepairResult] = []
        problems = check_after_kill(sc, img, t.tcti, state, repairs)
        if repairs and (repairs[0].removed_keyslots or repairs[0].removed_tokens):
            out.repaired += 1
        if repairs and repairs[0].kept_keyslots:
            out.left_for_admin += 1
        rerun_rc, _ = run_in_group(argv, env, None)
        flush_all(t)
        if (rerun_rc, signature(img)) not in serial:
            problems.append(f"the rerun gave exit {rerun_rc} and {signature(img)}, a serial order {sorted(serial)}")
        if problems:
            out.failures.append(f"{label}: {'; '.join(problems)}")
        else:
            out.survived += 1
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sigkill_at_random_times_loses_no_key_and_repair_cleans_up(
    name: str, crash_tpm: Swtpm, work: Path, request: pytest.FixtureRequest
) -> None:
    runs = -(-KILL_RUNS // len(SCENARIOS)) if KILL_RUNS else CI_KILLS[name]
    seed = int(os.environ.get("TPMSEAL_KILL_SEED", "") or random.SystemRandom().randrange(1 << 32))
    out = kill_at_random_times(SCENARIOS[name], crash_tpm, work, runs, random.Random(seed))
    say(
        request,
        f"random kills, {name} (seed {seed}): {out.kills} kills, {out.mid_command} mid-command, survived "
        f"{out.survived}, repaired {out.repaired}, left for the admin {out.left_for_admin}",
    )
    assert not out.failures, f"seed {seed}:\n" + "\n".join(out.failures)
    assert out.survived == out.kills
