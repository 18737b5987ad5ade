# SPDX-License-Identifier: LGPL-2.1-or-later
"""The real tpmseal processes that hold secrets are not dumpable, have no core limit above 0 and keep their
memory locked where the kernel allows it (tpmseal.hardening).

Checked from outside, as another process sees them:
- dumpability: the kernel gives the /proc/PID files of a non-dumpable process to root; so the process runs
  as ``nobody`` and /proc/PID must belong to uid 0 (a dumpable one's belongs to nobody: the control);
- the core limit: /proc/PID/limits (what ``prlimit --pid`` reads);
- locked memory: VmLck in /proc/PID/status (the size of its locked mappings) and, because pages are locked
  as they are touched (MCL_ONFAULT), the resident locked memory: ``Locked:`` of /proc/PID/smaps_rollup.
Each check has a control: the same command with ``hardening.harden`` replaced by a no-op shows the opposite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nobody import CLI, NOBODY, PYTHON, as_nobody, needs_root, nobody_dir, python_env

from tpmseal import hardening

pytestmark = pytest.mark.unit

NO_HARDENING = "import tpmseal.hardening as h; h.harden = lambda: h.State(); "
READ, READV, CLOCK_NANOSLEEP, ACCEPT4, POLL = 0, 19, 230, 288, 7


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with nobody_dir() as d:
        yield d


def start(
    cli: list[str], *, nobody: bool = True, harden: bool = True, memlock: str | None = None
) -> subprocess.Popen[bytes]:
    """``tpmseal CLI…`` as its own process (as nobody unless told not to), with stdin a pipe the test holds open."""
    argv = [PYTHON, "-c", ("" if harden else NO_HARDENING) + CLI, *cli]
    if nobody:
        argv = as_nobody(argv)
    limits = ["--core=unlimited"] + ([f"--memlock={memlock}"] if memlock else [])
    return subprocess.Popen(
        ["prlimit", *limits, *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(),
    )  # fmt: skip


def wait_in_syscall(p: subprocess.Popen[bytes], syscalls: set[int], timeout: float = 30.0) -> int:
    """The pid of the python process once it sits in one of ``syscalls`` (i.e. it is up and waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"exited {p.returncode}: {p.stderr.read().decode() if p.stderr else ''}")
        try:
            nr = Path(f"/proc/{p.pid}/syscall").read_text().split()[0]
            exe = os.readlink(f"/proc/{p.pid}/exe")
        except (OSError, IndexError):
            nr, exe = "", ""
        if "python" in exe and nr.isdigit() and int(nr) in syscalls:
            return p.pid
        time.sleep(0.05)
    raise AssertionError(f"process {p.pid} never waited in {syscalls}")


def proc_owner(pid: int) -> int:
    return os.stat(f"/proc/{pid}/status").st_uid


def core_limit(pid: int) -> str:
    """The soft core file size limit, the one a crash obeys."""
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max core file size"))
    return line.split()[4]


def vmlck_kb(pid: int) -> int:
    """Locked memory in kB: the smaller of VmLck (locked mappings) and resident locked pages."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmLck:"))
    resident = next(x for x in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if x.startswith("Locked:"))
    return min(int(line.split()[1]), int(resident.split()[1]))


def stop(p: subprocess.Popen[bytes]) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode()


def encrypt_blocked_on_secret(out: Path, **kw: object) -> tuple[subprocess.Popen[bytes], int]:
    """``tpmseal creds encrypt`` waiting for its secret on stdin."""
    p = start(["--debug", "creds", "encrypt", "db", "-", str(out)], **kw)  # type: ignore[arg-type]
    return p, wait_in_syscall(p, {READ})


def test_a_command_blocked_on_its_secret_is_not_dumpable_and_has_no_core_limit(shared_dir: Path) -> None:
    needs_root()
    p, pid = encrypt_blocked_on_secret(shared_dir / "db.cred")
    try:
        assert proc_owner(pid) == 0  # non-dumpable: its /proc files belong to root although it runs as nobody
        assert core_limit(pid) == "0"
    finally:
        stop(p)


def test_control_without_hardening_the_same_command_is_dumpable_with_a_core_limit(shared_dir: Path) -> None:
    needs_root()
    p, pid = encrypt_blocked_on_secret(shared_dir / "db.cred", harden=False)
    try:
        assert proc_owner(pid) == NOBODY.pw_uid
        assert core_limit(pid) == "unlimited"
        assert vmlck_kb(pid) == 0
    finally:
        stop(p)


def test_memory_is_locked_with_cap_ipc_lock_and_not_without_hardening(shared_dir: Path) -> None:
    needs_root()  # root has CAP_IPC_LOCK: RLIMIT_MEMLOCK does not bound it
    p, pid = encrypt_blocked_on_secret(shared_dir / "a.cred", nobody=False)
    try:
        locked = vmlck_kb(pid)
    finally:
        stop(p)
    p, pid = encrypt_blocked_on_secret(shared_dir / "b.cred", nobody=False, harden=False)
    try:
        control = vmlck_kb(pid)
    finally:
        stop(p)
    assert locked > 1000, locked  # the touched part of the interpreter: several MB resident and locked
    assert control == 0


def test_a_low_memlock_limit_degrades_to_unlocked_memory_with_a_debug_line_and_the_command_still_runs(
    shared_dir: Path,
) -> None:
    needs_root()
    p, pid = encrypt_blocked_on_secret(shared_dir / "db.cred", memlock="65536")
    assert vmlck_kb(pid) == 0
    assert proc_owner(pid) == 0  # the rest of the hardening holds
    assert p.stdin is not None
    p.stdin.write(b"s3cret")
    p.stdin.close()
    p.wait(timeout=60)
    err = p.stderr.read().decode() if p.stderr else ""
    assert "memory not locked (RLIMIT_MEMLOCK is 65536 bytes and there is no CAP_IPC_LOCK)" in err
    assert "tpmseal: error:" in err
    assert p.returncode == 4, err  # it went on to open the (missing) TPM: exit 4, not a crash


def test_the_askpass_agent_is_not_dumpable_and_as_root_locks_its_memory(shared_dir: Path) -> None:
    needs_root()
    ask = shared_dir / "ask"
    ask.mkdir()
    agent = ["askpass-agent", f"--ask-dir={ask}", "--idle-exit=60"]
    p = start(agent)
    try:
        pid = wait_in_syscall(p, {CLOCK_NANOSLEEP})
        assert proc_owner(pid) == 0 and core_limit(pid) == "0"
    finally:
        stop(p)
    p = start(agent, nobody=False)
    try:
        pid = wait_in_syscall(p, {CLOCK_NANOSLEEP})
        assert vmlck_kb(pid) > 1000 and core_limit(pid) == "0"
    finally:
        stop(p)
    p = start(agent, harden=False)  # control
    try:
        pid = wait_in_syscall(p, {CLOCK_NANOSLEEP})
        assert proc_owner(pid) == NOBODY.pw_uid and core_limit(pid) != "0"
    finally:
        stop(p)


def test_the_credential_server_is_not_dumpable_and_as_root_locks_its_memory(shared_dir: Path) -> None:
    needs_root()
    waits = {ACCEPT4, POLL, 232, 23, 270, CLOCK_NANOSLEEP, 202}  # accept4, poll, epoll_wait, select, pselect, futex

    def serve(name: str, **kw: object) -> tuple[subprocess.Popen[bytes], int]:
        p = start(["creds", "serve", f"--socket={shared_dir / name}", f"--root={shared_dir}"], **kw)  # type: ignore[arg-type]
        return p, wait_in_syscall(p, waits)

    p, pid = serve("a.sock")
    try:
        assert proc_owner(pid) == 0 and core_limit(pid) == "0"
    finally:
        stop(p)
    p, pid = serve("b.sock", nobody=False)
    try:
        assert vmlck_kb(pid) > 1000
    finally:
        stop(p)
    p, pid = serve("c.sock", harden=False)  # control
    try:
        assert proc_owner(pid) == NOBODY.pw_uid and vmlck_kb(pid) == 0
    finally:
        stop(p)


def test_a_child_forked_after_hardening_locks_its_memory_again() -> None:
    needs_root()
    code = (
        "import os; from tpmseal import hardening\n"
        "assert hardening.harden().memory_locked\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    s = open('/proc/self/status').read()\n"
        "    kb = int(s.split('VmLck:')[1].split()[0])\n"
        "    os._exit(0 if kb > 0 and hardening.dumpable() == 0 else 1)\n"
        "_, st = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(st))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_main_hardens_before_the_subcommand_reads_anything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tpmseal import cli

    class Hardened(Exception):
        pass

    def harden() -> hardening.State:
        raise Hardened

    cred = tmp_path / "missing.cred"
    assert cli.main(["creds", "inspect", str(cred)]) != 0  # control: the command itself runs and fails
    monkeypatch.setattr(hardening, "harden", harden)
    with pytest.raises(Hardened):  # hardening came first, before the command looked at the file
        cli.main(["creds", "inspect", str(cred)])


def test_enroll_blocked_on_the_volume_passphrase_is_hardened(shared_dir: Path) -> None:
    needs_root()
    from support import make_luks2

    image = make_luks2(shared_dir / "disk.img")
    os.chown(image.path, NOBODY.pw_uid, NOBODY.pw_gid)
    p = start(["enroll", image.dev], nobody=False)
    try:
        pid = wait_in_syscall(p, {READ, READV})  # prompt.ask reads with readv
        assert vmlck_kb(pid) > 1000 and core_limit(pid) == "0"
    finally:
        stop(p)
    env_tmp = shared_dir / "tmp"
    env_tmp.mkdir()
    os.chown(env_tmp, NOBODY.pw_uid, NOBODY.pw_gid)
    p = subprocess.Popen(
        ["prlimit", "--core=unlimited", *as_nobody([PYTHON, "-c", CLI, "enroll", image.dev])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(TMPDIR=str(env_tmp)),
    )  # fmt: skip
    try:
        pid = wait_in_syscall(p, {READ, READV})  # prompt.ask reads with readv
        assert proc_owner(pid) == 0 and core_limit(pid) == "0"
    finally:
        stop(p)
