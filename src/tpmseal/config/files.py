# SPDX-License-Identifier: LGPL-2.1-or-later
"""Files under a root directory, written atomically.

A write goes to a temporary file in the same directory, which is fsync'ed and renamed over the target;
then the directory is fsync'ed. A crash at any point leaves either the old file or the new one, never a
mix. The previous version is kept as ``NAME.tpmseal-bak`` (one copy). Mode and owner of an existing file are
kept. A file whose content would not change is not touched at all. Paths never leave the root: a target
that is a symbolic link, or whose directory resolves outside the root, is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass

from tpmseal.errors import TpmsealError

BACKUP_SUFFIX = ".tpmseal-bak"
TEMP_SUFFIX = ".tpmseal-new"

# Test hook: when set to "before-rename", the writer kills itself (SIGKILL, no cleanup) after the temporary
# file is written and fsync'ed but before the rename, so a test can show the old file survives intact.
FAULT_ENV = "TPMSEAL_CONFIG_FAULT"


class UnsafePath(TpmsealError):
    default_hint = "tpmseal writes only regular files inside --root; replace the link by a file, or check --root"


@dataclass(frozen=True)
class Target:
    """A file as the system sees it (``path``, e.g. /etc/crypttab) and where it is on disk under ``root``."""

    root: str
    path: str

    @property
    def real(self) -> str:
        return os.path.join(self.root, self.path.lstrip("/"))

    def read(self) -> bytes | None:
        check_inside(self)
        try:
            with open(self.real, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


def text_of(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def check_inside(t: Target) -> None:
    """Refuse a target that is a symlink or whose existing directory part resolves outside the root."""
    root = os.path.realpath(t.root)
    if os.path.islink(t.real):
        raise UnsafePath(f"{t.real} is a symbolic link; tpmseal does not write through links")
    d = os.path.dirname(t.real)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    real_dir = os.path.realpath(d)
    if os.path.commonpath([root, real_dir]) != root:
        raise UnsafePath(f"{t.real}: {d} resolves to {real_dir}, outside {root}")


def _fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_replace(path: str, data: bytes, mode: int, owner: tuple[int, int] | None, fault: bool) -> None:
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}{TEMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a writer that was killed; we hold the directory lock
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    if fault and os.environ.get(FAULT_ENV) == "before-rename":
        os.kill(os.getpid(), signal.SIGKILL)
    os.rename(tmp, path)
    _fsync_dir(d)


class ChangedMeanwhile(TpmsealError):
    default_hint = "someone else changed the file while tpmseal was working; look at it, then run again"


_ANY = object()


def atomic_write(t: Target, data: bytes, default_mode: int = 0o644, expect: object = _ANY) -> bool:
    """Write ``data`` to the target; return False (and touch nothing) when it already holds exactly that.

    ``expect``: the content (None: no file) the caller based ``data`` on; if the file differs now, refuse.
    """
    check_inside(t)
    path = t.real
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o755, exist_ok=True)
    check_inside(t)  # again: the directories now exist
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)  # one tpmseal writer per directory at a time
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        old: bytes | None = None
        if st is not None:
            with open(path, "rb") as f:
                old = f.read()
        if expect is not _ANY and old != expect:
            raise ChangedMeanwhile(f"{path} changed while tpmseal was working; nothing written")
        if old is not None and st is not None:
            if old == data:
                return False
            mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
            _write_replace(path + BACKUP_SUFFIX, old, mode, owner, fault=False)
        else:
            mode, owner = default_mode, None
        _write_replace(path, data, mode, owner, fault=True)
        return True
    finally:
        os.close(dfd)  # releases the lock
