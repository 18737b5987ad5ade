# SPDX-License-Identifier: LGPL-2.1-or-later
"""One writer per volume: an advisory lock keyed by the volume's device and inode."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tpmseal.errors import TpmsealError, VolumeError

DEFAULT_TIMEOUT = 30.0


class VolumeBusy(TpmsealError):
    default_hint = "another tpmseal is changing this volume; try again when it has finished"


class UnsafeLockDir(TpmsealError):
    default_hint = (
        "the lock directory must be a real directory owned by you (root: /run/tpmseal) and writable by no one "
        "else; remove it, or point TPMSEAL_RUNTIME_DIR at a private directory"
    )


def _candidates() -> list[str]:
    """Where this uid keeps its locks: never a directory another uid could own or share.

    ``$TPMSEAL_RUNTIME_DIR`` if set; root: /run/tpmseal; anyone else: ``$XDG_RUNTIME_DIR/tpmseal``, else a
    per-uid ``tpmseal-UID`` in the temporary directory. Every one is checked by ``_open_lock_dir``.
    """
    env = os.environ.get("TPMSEAL_RUNTIME_DIR")
    if env:
        return [env]
    uid = os.geteuid()
    if uid == 0:
        return ["/run/tpmseal"]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    dirs = [os.path.join(xdg, "tpmseal")] if xdg and os.path.isabs(xdg) else []
    return [*dirs, os.path.join(tempfile.gettempdir(), f"tpmseal-{uid}")]


def _check_owned(st: os.stat_result, what: str) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeLockDir(f"{what} belongs to uid {st.st_uid}, not to uid {uid}; not using it")
    if st.st_mode & 0o022:
        raise UnsafeLockDir(f"{what} is writable by group or others (mode {st.st_mode & 0o7777:o}); not using it")


def _open_lock_dir() -> tuple[str, int]:
    """The lock directory and an O_DIRECTORY fd of it; created 0700 if absent, refused if it is a symbolic
    link, not ours, or writable by others. A clear error, never a traceback, when none is usable."""
    problems: list[str] = []
    override = bool(os.environ.get("TPMSEAL_RUNTIME_DIR"))
    for d in _candidates():
        try:
            if override:  # only a directory asked for by name gets its parents made
                os.makedirs(os.path.dirname(d) or "/", exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            why = "it is a symbolic link" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
            problems.append(f"{d}: {why}")
            continue
        try:
            _check_owned(os.fstat(fd), d)
        except UnsafeLockDir as e:
            os.close(fd)
            problems.append(e.message)
            continue
        return d, fd
    raise UnsafeLockDir(f"no usable directory for the volume lock ({'; '.join(problems)})")


def _lock_dir() -> str:
    """The checked lock directory (kept for callers that want its name)."""
    d, fd = _open_lock_dir()
    os.close(fd)
    return d


def _open_lock_file(name: str) -> int:
    """The lock file ``name`` in the lock directory: no link followed, ours, a regular file."""
    _d, dfd = _open_lock_dir()
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except OSError as e:
            why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise UnsafeLockDir(f"cannot open the lock file {name}: {why}") from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeLockDir(f"the lock file {name} is not a regular file")
        _check_owned(st, f"the lock file {name}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _hold(path: str, operation: int, timeout: float | None, busy: str) -> Iterator[None]:
    if timeout is None:
        try:
            timeout = float(os.environ.get("TPMSEAL_LOCK_TIMEOUT", "") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    try:
        st = os.stat(path)
    except OSError as e:
        raise VolumeError(f"{path}: {e.strerror}") from None
    fd = _open_lock_file(f"volume-{st.st_dev}-{st.st_ino}.lock")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise VolumeBusy(f"{path} is busy ({busy} for {timeout:.0f}s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@contextmanager
def volume_lock(path: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the volume's lock; wait up to ``timeout`` seconds (default: $TPMSEAL_LOCK_TIMEOUT, else 30)."""
    with _hold(path, fcntl.LOCK_EX, timeout, "locked by another tpmseal"):
        yield


@contextmanager
def volume_read_lock(path: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the volume's lock shared (readers: list, test-unlock): no tpmseal writer runs meanwhile, so a
    reader never sees a header halfway through an enroll or a wipe. Same lock file and wait as
    ``volume_lock``."""
    with _hold(path, fcntl.LOCK_SH, timeout, "being changed by another tpmseal"):
        yield
