#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Copy the system files into the Python package, so that a wheel (and ``pip install .``) carries them.

``src/tpmseal/_data/`` is a plain copy (no symbolic links) of:

    dracut/90tpmseal/*            -> _data/dracut/90tpmseal/
    systemd/*                     -> _data/systemd/
    man/*.rst, man/build.py       -> _data/man/
    contrib/completion/tpmseal.bash, _tpmseal -> _data/completion/

``tpmseal install-system-files`` installs from there. The copy is committed; tests/unit/test_install_files.py
fails when it differs from the sources, so run this script after editing any of them.

Usage: python contrib/sync-data.py [--check]   (--check: report differences, write nothing, exit 1 if any)
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "tpmseal" / "_data"

# (source directory, glob patterns, destination directory below _data)
SOURCES: list[tuple[str, tuple[str, ...], str]] = [
    ("dracut/90tpmseal", ("*",), "dracut/90tpmseal"),
    ("systemd", ("*",), "systemd"),
    ("man", ("*.rst", "build.py"), "man"),
    ("contrib/completion", ("tpmseal.bash", "_tpmseal"), "completion"),
]


def expected(root: Path = ROOT) -> dict[str, Path]:
    """What _data must hold: path relative to _data -> source file."""
    out: dict[str, Path] = {}
    for src, patterns, dest in SOURCES:
        for pattern in patterns:
            for f in sorted((root / src).glob(pattern)):
                if f.is_file() and not f.is_symlink() and f.suffix != ".pyc":
                    out[f"{dest}/{f.name}"] = f
    return out


def present(data: Path = DATA) -> set[str]:
    """What _data holds now (bytecode caches ignored)."""
    if not data.is_dir():
        return set()
    return {
        p.relative_to(data).as_posix()
        for p in data.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def differences(root: Path = ROOT, data: Path = DATA) -> list[str]:
    """Human-readable differences between the sources and _data; empty when in sync."""
    want = expected(root)
    have = present(data)
    out = [f"missing: {rel}" for rel in sorted(set(want) - have)]
    out += [f"stray: {rel}" for rel in sorted(have - set(want))]
    for rel in sorted(set(want) & have):
        src, dst = want[rel], data / rel
        if src.read_bytes() != dst.read_bytes():
            out.append(f"differs: {rel}")
        elif (src.stat().st_mode & 0o111 != 0) != (dst.stat().st_mode & 0o111 != 0):
            out.append(f"mode differs: {rel}")
    return out


def sync(root: Path = ROOT, data: Path = DATA) -> list[str]:
    """Makes _data equal to the sources; returns what it changed."""
    changed = differences(root, data)
    want = expected(root)
    for rel in present(data) - set(want):
        (data / rel).unlink()
    for rel, src in want.items():
        dst = data / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if src.stat().st_mode & 0o111 else 0o644)
    for d in sorted((p for p in data.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        print("usage: python contrib/sync-data.py [--check]", file=sys.stderr)
        return 2
    if args:
        diff = differences()
        for line in diff:
            print(f"sync-data: {line}")
        if diff:
            print("sync-data: src/tpmseal/_data is out of date: run 'python contrib/sync-data.py'", file=sys.stderr)
        return 1 if diff else 0
    for line in sync():
        print(f"sync-data: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
