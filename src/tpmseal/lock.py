# SPDX-License-Identifier: LGPL-2.1-or-later
"""One writer per volume: an advisory lock keyed by the volume's device and inode."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tpmseal.errors import TpmsealError, VolumeError

DEFAULT_TIMEOUT = 30.0


class VolumeBusy(TpmsealError):
    default_hint = "another tpmseal is changing this volume; try again when it has finished"


def _lock_dir() -> str:
    for d in (
        os.environ.get("TPMSEAL_RUNTIME_DIR"),
        "/run/tpmseal",
        os.path.join(tempfile.gettempdir(), "tpmseal"),
    ):
        if not d:
            continue
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            return d
        except OSError:
            continue
    raise TpmsealError("no writable runtime directory for the volume lock")


@contextmanager
def volume_lock(path: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the volume's lock; wait up to ``timeout`` seconds (default: $TPMSEAL_LOCK_TIMEOUT, else 30)."""
    if timeout is None:
        try:
            timeout = float(os.environ.get("TPMSEAL_LOCK_TIMEOUT", "") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    try:
        st = os.stat(path)
    except OSError as e:
        raise VolumeError(f"{path}: {e.strerror}") from None
    lock_path = os.path.join(_lock_dir(), f"volume-{st.st_dev}-{st.st_ino}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise VolumeBusy(f"{path} is busy (locked by another tpmseal for {timeout:.0f}s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@contextmanager
def volume_read_lock(path: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the volume's lock shared (readers: list, test-unlock): no tpmseal writer runs meanwhile, so a
    reader never sees a header halfway through an enroll or a wipe. Same lock file and wait as
    ``volume_lock`` (kept apart from it only so that the two can be merged into one helper later)."""
    if timeout is None:
        try:
            timeout = float(os.environ.get("TPMSEAL_LOCK_TIMEOUT", "") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    try:
        st = os.stat(path)
    except OSError as e:
        raise VolumeError(f"{path}: {e.strerror}") from None
    fd = os.open(os.path.join(_lock_dir(), f"volume-{st.st_dev}-{st.st_ino}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise VolumeBusy(f"{path} is busy (being changed by another tpmseal for {timeout:.0f}s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
