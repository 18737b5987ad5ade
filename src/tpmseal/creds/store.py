# SPDX-License-Identifier: LGPL-2.1-or-later
"""Installed credentials and the drop-ins that wire a unit to them.

- the credential: ``/etc/tpmseal/creds/UNIT/NAME.cred`` (directories 0700, files 0600);
- the drop-in: ``/etc/systemd/system/UNIT.d/tpmseal-NAME.conf`` with ``LoadCredential=NAME:SOCKET``,
  rendered from ``templates/credential-dropin.conf.j2``.

Every write is atomic (a temporary file in the same directory, fsync, rename, fsync of the directory),
and ``root`` (``--root``) prefixes every path, for images and tests. No path leaves the root: a symbolic link
on the way (``etc/tpmseal`` or ``etc/systemd/system`` pointing out of an image) is refused, with the check
``config apply`` uses.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from tpmseal.config.files import Target, check_inside
from tpmseal.creds.envelope import UNIT_SECTIONS, check_name, check_unit
from tpmseal.errors import TpmsealError

STORE = "etc/tpmseal/creds"
UNIT_DIR = "etc/systemd/system"
SOCKET = "/run/tpmseal/creds.sock"


def credential_path(root: Path | str, unit: str, name: str) -> Path:
    return Path(root, STORE, check_unit(unit), f"{check_name(name)}.cred")


def dropin_path(root: Path | str, unit: str, name: str) -> Path:
    return Path(root, UNIT_DIR, f"{check_unit(unit)}.d", f"tpmseal-{check_name(name)}.conf")


def contained(root: Path | str, path: Path) -> None:
    """Refuse ``path`` when it is a symbolic link or a directory on its way resolves outside ``root``
    (the check of ``config apply``, tpmseal.config.files.check_inside). A root that does not exist yet holds
    no link: ``install`` checks again once it has made the directories."""
    if not os.path.isdir(root):
        return
    check_inside(Target(str(root), "/" + os.path.relpath(path, root)))


def atomic_write(path: Path, data: bytes | bytearray, mode: int) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    fd = -1
    tmp = path.with_name(f".#{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fchmod(fd, mode)  # the umask may have narrowed it
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def render_dropin(unit: str, name: str, cred_path: str, socket: str = SOCKET) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tpmseal.creds", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - a systemd unit file, not HTML
    )
    section = UNIT_SECTIONS[unit.rsplit(".", 1)[1]]
    return env.get_template("credential-dropin.conf.j2").render(
        unit=unit, name=name, section=section, socket=socket, credential_path=cred_path
    )


@dataclass(frozen=True)
class Installed:
    unit: str
    name: str
    credential: str
    dropin: str


def install(root: Path | str, unit: str, name: str, data: bytes) -> Installed:
    """Store the credential file for ``unit`` and write its drop-in (the caller has validated ``data``)."""
    unit = check_unit(unit)
    cred = credential_path(root, unit, name)
    dropin = dropin_path(root, unit, name)
    for p in (cred, dropin):
        contained(root, p)  # before a directory is made: a symlinked etc/tpmseal must not lead out
    for d, mode in ((cred.parent, 0o700), (dropin.parent, 0o755)):
        d.mkdir(parents=True, exist_ok=True, mode=mode)
    for p in (cred, dropin):
        contained(root, p)  # again, now that the directories exist
    atomic_write(cred, data, 0o600)
    shown = "/" + str(Path(STORE, unit, cred.name))
    atomic_write(dropin, render_dropin(unit, name, shown).encode(), 0o644)
    return Installed(unit, name, str(cred), str(dropin))


def uninstall(root: Path | str, unit: str, name: str) -> list[str]:
    """Remove the credential and its drop-in (and their directories once empty); the paths removed."""
    unit = check_unit(unit)
    removed = []
    for p in (dropin_path(root, unit, name), credential_path(root, unit, name)):
        contained(root, p)
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(p))
        fsync_dir(p.parent)
        with contextlib.suppress(OSError):
            p.parent.rmdir()  # only when empty
    if not removed:
        raise TpmsealError(f"no credential '{name}' is installed for {unit}", f"see {Path(root, STORE, unit)}")
    return removed
