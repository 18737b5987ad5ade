# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep secrets out of core dumps, debuggers and swap.

``harden()`` is called once, early, by the command line before any subcommand runs (every tpmseal command
may hold a passphrase, a PIN, an unsealed key or a credential) and so covers the ask-password agent,
``tpmseal unlock`` and ``tpmseal creds serve`` too. It

- makes the process non-dumpable (``PR_SET_DUMPABLE`` 0): no core file, and another process of the same
  uid can no longer ptrace it or read ``/proc/PID/mem``; its ``/proc/PID`` files belong to root;
- sets the soft ``RLIMIT_CORE`` to 0 (what a crash obeys), inherited by the programs it runs; the hard
  limit stays, so a test or caller running tpmseal in-process can still raise the limit for its other children;
- locks its memory (``mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)``: pages are locked as they are touched,
  so nothing it holds goes to swap) when the kernel allows it without a limit that could make a later
  allocation fail: with ``CAP_IPC_LOCK`` (root) or an unlimited ``RLIMIT_MEMLOCK``. Otherwise memory stays
  unlocked, and one debug line says so; nothing here ever fails a command or the boot.

Memory locks are not inherited by ``fork()``: a child forked by Python (the agent's per-request child) locks
itself again through an at-fork hook. ``execve()`` makes a program dumpable again; it is its own business
(cryptsetup locks its own memory). ``ctypes`` is imported at module level so that the initramfs's import
closure (dracut/90tpmseal/python-closure.py) ships it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("tpmseal")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
CAP_IPC_LOCK = 14


@dataclass
class State:
    dumpable_off: bool = False
    core_off: bool = False
    memory_locked: bool = False
    why_not_locked: str = ""


_state: State | None = None
_fork_hook = False


def _libc() -> ctypes.CDLL | None:
    """The C library already loaded into this process (no file lookup, no program run)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def _has_cap_ipc_lock() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _lock_memory(libc: ctypes.CDLL) -> tuple[bool, str]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and not _has_cap_ipc_lock():
        return False, f"RLIMIT_MEMLOCK is {soft} bytes and there is no CAP_IPC_LOCK"
    mlockall = libc.mlockall
    if mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return True, ""
    if mlockall(MCL_CURRENT | MCL_FUTURE) == 0:  # a kernel older than 4.4 has no MCL_ONFAULT
        return True, ""
    return False, f"mlockall: {_errno_text()}"


def _relock_in_child() -> None:
    libc = _libc()
    if libc is not None and _state is not None and _state.memory_locked:
        ok, why = _lock_memory(libc)
        if not ok:
            log.debug("memory of the child %d not locked (%s)", os.getpid(), why)


def harden() -> State:
    """Make this process non-dumpable, without core files, and lock its memory where allowed. Idempotent;
    never raises."""
    global _state, _fork_hook
    if _state is not None:
        return _state
    st = State()
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        st.core_off = True
    libc = _libc()
    if libc is None:
        st.why_not_locked = "no libc"
        log.debug("process hardening unavailable (libc not found): core dumps are only limited by RLIMIT_CORE")
        _state = st
        return st
    prctl = libc.prctl
    st.dumpable_off = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    if not st.dumpable_off:
        log.debug("PR_SET_DUMPABLE failed: %s", _errno_text())
    st.memory_locked, st.why_not_locked = _lock_memory(libc)
    if not st.memory_locked:
        log.debug("memory not locked (%s): secrets in this process could be written to swap", st.why_not_locked)
    if not _fork_hook:
        os.register_at_fork(after_in_child=_relock_in_child)
        _fork_hook = True
    _state = st
    return st


def dumpable() -> int:
    """PR_GET_DUMPABLE of this process (for tests and doctor); -1 when it cannot be read."""
    libc = _libc()
    if libc is None:
        return -1
    return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
