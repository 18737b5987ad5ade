# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal install-system-files``: put the files that live outside the Python package where the system
looks for them: the dracut module, the systemd units, the man pages (rendered and gzip'd) and the shell
completions.

They ship inside the package, in ``tpmseal/_data/`` (a copy of ``dracut/``, ``systemd/``, ``man/`` and
``contrib/completion/`` made by ``contrib/sync-data.py``), so a wheel or ``pip install`` has them. Only argparse
is imported at module level: ``tpmseal --help`` builds this parser.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

DATA = Path(__file__).resolve().parent / "_data"


@dataclass(frozen=True)
class Item:
    """One file to install: where it comes from, where it goes below the prefix, and how."""

    kind: str  # dracut, systemd, man, completion
    source: Path
    dest: PurePosixPath  # relative to the prefix, e.g. lib/systemd/system/tpmseal-credd.socket
    mode: int
    render: str = "copy"  # copy, or man (rst -> troff -> gzip)


@dataclass(frozen=True)
class Done:
    kind: str
    path: str
    changed: bool


def _mode(source: Path) -> int:
    # dracut only loads a module whose module-setup.sh is executable; otherwise keep the source's x bit
    if source.name == "module-setup.sh" or source.stat().st_mode & 0o111:
        return 0o755
    return 0o644


def items(data: Path = DATA) -> list[Item]:
    """Everything ``install-system-files`` installs, in a fixed order."""
    if not (data / "dracut").is_dir():
        from tpmseal.errors import TpmsealError

        raise TpmsealError(
            f"the packaged system files are missing ({data})",
            "in a source tree, run 'python contrib/sync-data.py'; otherwise reinstall tpmseal",
        )
    out: list[Item] = []
    for f in sorted((data / "dracut" / "90tpmseal").iterdir()):
        if f.is_file() and f.suffix != ".pyc":
            out.append(Item("dracut", f, PurePosixPath("lib/dracut/modules.d/90tpmseal", f.name), _mode(f)))
    systemd = data / "systemd"
    if systemd.is_dir():
        for f in sorted(systemd.iterdir()):
            if f.is_file():
                out.append(Item("systemd", f, PurePosixPath("lib/systemd/system", f.name), 0o644))
    for f in sorted((data / "man").glob("*.rst")):
        name = f.name.removesuffix(".rst")  # tpmseal-enroll.8
        section = name.rsplit(".", 1)[1]
        out.append(Item("man", f, PurePosixPath(f"share/man/man{section}", name + ".gz"), 0o644, "man"))
    comp = data / "completion"
    for name, dest in (
        ("tpmseal.bash", "share/bash-completion/completions/tpmseal"),
        ("_tpmseal", "share/zsh/vendor-completions/_tpmseal"),
    ):
        out.append(Item("completion", comp / name, PurePosixPath(dest), 0o644))
    missing = [str(i.source.relative_to(data)) for i in out if not i.source.is_file()]
    if missing or not any(i.kind == "man" for i in out):
        from tpmseal.errors import TpmsealError

        raise TpmsealError(
            f"the packaged system files in {data} are incomplete (missing: {', '.join(missing) or 'man pages'})",
            "the package was built without its data files (see docs/packaging.md); reinstall tpmseal",
        )
    return out


def _man_builder(data: Path) -> Any:
    """man/build.py (shipped as ``_data/man/build.py``): the one place that knows how pages are rendered."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tpmseal_man_build", data / "man" / "build.py")
    if spec is None or spec.loader is None:  # pragma: no cover - the file is part of the package
        raise ImportError("man/build.py")
    module = importlib.util.module_from_spec(spec)
    # no __pycache__ inside the installed package (it may be read-only, and a wheel must not carry one)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def content(item: Item, data: Path = DATA) -> bytes:
    """The bytes installed for ``item``: the file itself, or for a man page its troff, gzip'd reproducibly."""
    if item.render != "man":
        return item.source.read_bytes()
    import gzip
    import importlib.util

    if importlib.util.find_spec("docutils") is None:
        from tpmseal.errors import MissingTool

        raise MissingTool(
            "rendering the man pages needs docutils, which is not installed", "pip install 'docutils>=0.20'"
        )
    troff: bytes = _man_builder(data).to_troff(item.source)
    # mtime=0 and no file name: the same page always gives the same bytes (reproducible packages)
    return gzip.compress(troff, compresslevel=9, mtime=0)


def _write(path: Path, data: bytes, mode: int) -> bool:
    """Writes ``path`` atomically (temp file and rename) unless it already holds ``data`` with ``mode``."""
    import os
    import stat

    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and (st.st_mode & 0o7777) == mode and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tpmseal-new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask must not narrow it
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def install(root: str | Path = "/", prefix: str = "/usr", data: Path = DATA) -> list[Done]:
    """Installs every item below ``root``/``prefix``; returns what was done (``changed`` False: up to date)."""
    from tpmseal.errors import UsageError

    pre = PurePosixPath(prefix)
    if not pre.is_absolute() or ".." in pre.parts:
        raise UsageError(f"--prefix {prefix}: must be an absolute path without '..'")
    rootp = Path(root)
    if not rootp.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    base = rootp / pre.relative_to("/")
    todo = [(item, content(item, data)) for item in items(data)]  # render everything before writing anything
    done: list[Done] = []
    for item, data_bytes in todo:
        target = base / item.dest
        changed = _write(target, data_bytes, item.mode)
        done.append(Done(item.kind, str(target), changed))
    return done


def cmd_install_system_files(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tpmseal.cliopts import print_json as _print_json

    done = install(args.root, args.prefix)
    if args.json:
        _print_json({"root": args.root, "prefix": args.prefix, "files": [asdict(d) for d in done]})
        return 0
    for d in done:
        print(f"{'installed' if d.changed else 'up to date'}: {d.path}")
    if not any(d.changed for d in done):
        print("nothing to change: every system file is up to date")
    elif str(args.root) == "/":
        print("run 'systemctl daemon-reload' for the units; rebuild the initramfs (dracut --force) to use the module")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tpmseal install-system-files`` to the top-level parser's subparsers."""
    p = sub.add_parser(
        "install-system-files",
        help="install the dracut module, systemd units, man pages and shell completions",
        description="Copy the files tpmseal ships outside its Python package to where the system finds them: "
        "PREFIX/lib/dracut/modules.d/90tpmseal, PREFIX/lib/systemd/system, PREFIX/share/man, and the bash and "
        "zsh completion directories. Files already up to date are left alone.",
    )
    p.add_argument("--root", default="/", metavar="DIR", help="install into this tree (default /), e.g. a staging dir")
    p.add_argument("--prefix", default="/usr", metavar="DIR", help="installation prefix inside the root (default /usr)")
    p.add_argument("--json", action="store_true", help="print JSON: every file and whether it changed")
    p.set_defaults(func=cmd_install_system_files)
