#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Render the man pages: every ``man/NAME.SECTION.rst`` becomes troff ``OUTDIR/NAME.SECTION``.

Usage: ``python man/build.py [OUTDIR]`` (default: ``build/man`` at the top of the source tree).
A docutils warning or error stops the build, so a broken page never ships half rendered.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

MAN_DIR = Path(__file__).resolve().parent
DEFAULT_OUTDIR = MAN_DIR.parent / "build" / "man"

# Docutils settings: no config files from the environment, UTF-8 in and out, and stop at warnings.
SETTINGS = {
    "_disable_config": True,
    "input_encoding": "utf-8",
    "output_encoding": "utf-8",
    "report_level": 2,
    "halt_level": 2,
}


def pages(man_dir: Path = MAN_DIR) -> list[Path]:
    """The page sources, sorted: ``tpmseal.8.rst``, ``tpmseal-enroll.8.rst``, ..."""
    return sorted(man_dir.glob("*.rst"))


def target_name(source: Path) -> str:
    """``tpmseal-enroll.8.rst`` -> ``tpmseal-enroll.8``."""
    return source.name.removesuffix(".rst")


def to_troff(source: Path) -> bytes:
    """One page as troff. Raises docutils' SystemMessage on any warning in the source."""
    from docutils.core import publish_string
    from docutils.writers import manpage

    troff = publish_string(
        source.read_text(encoding="utf-8"),
        source_path=str(source),
        writer=manpage.Writer(),
        settings_overrides=dict(SETTINGS),
    )
    # The docutils writer titles the generated NAME section "Name"; every other heading is upper case.
    troff = troff.replace(b"\n.SH Name\n", b"\n.SH NAME\n", 1)
    if TEST_CITATION.search(troff):
        troff = TEST_CITATION.sub(_breakable, troff)
        troff = troff.replace(b"\n.SH NAME\n", b"\n.ad l\n.SH NAME\n", 1)
    return troff


# A test cited as ``tpm/test_x.py::test_name`` (tpmseal(7)) is longer than a man page line: let troff break it
# after "/", "::" and "_" (\: is an invisible break point), and set such a page ragged right (.ad l), since a
# line holding one piece of a name cannot be justified.
TEST_CITATION = re.compile(rb"\\fB((?:tpm|vm|unit)/test_\w+\.py::test_\w+)\\fP")


def _breakable(m: re.Match[bytes]) -> bytes:
    r"""Break points (``\:``) after "/", "::" and "_", and no hyphenation (``\%``) of any piece."""
    brk = b"\\:\\%"
    text = m.group(1).replace(b"_", b"_" + brk).replace(b"::", b"::" + brk).replace(b"/", b"/" + brk)
    return b"\\fB\\%" + text + b"\\fP"


def render(source: Path, outdir: Path) -> Path:
    """Render one page to troff in ``outdir``; returns the written file."""
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / target_name(source)
    target.write_bytes(to_troff(source))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python man/build.py [OUTDIR]", file=sys.stderr)
        return 2
    outdir = Path(args[0]) if args else DEFAULT_OUTDIR
    sources = pages()
    if not sources:
        print(f"no pages found in {MAN_DIR}", file=sys.stderr)
        return 1
    from docutils.utils import SystemMessage

    for source in sources:
        try:
            print(render(source, outdir))
        except SystemMessage as e:
            print(f"man/build.py: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
