# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run tpmseal as another uid (``nobody``), as an attacker or an unprivileged caller would: needs root.

The interpreter of the test venv lives under /root (mode 0700), out of nobody's reach; the system
interpreter of the same minor version runs the same sources and site-packages instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tpmseal

NOBODY = pwd.getpwnam("nobody")
SRC = str(Path(tpmseal.__file__).resolve().parent.parent)
SITE = next(p for p in sys.path if p.endswith("site-packages"))
PYTHON = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin") or sys.executable
CLI = "import sys; from tpmseal.cli import main; sys.exit(main(sys.argv[1:]))"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as nobody")


def as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", *argv]


def python_env(**extra: str) -> dict[str, str]:
    """A small environment for a tpmseal child: sources and site-packages on PYTHONPATH, quiet TSS."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": f"{SRC}:{SITE}", "TSS2_LOG": "all+none", **extra}


def run_cli_as_nobody(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_nobody([PYTHON, "-c", CLI, *args]), capture_output=True, text=True, env=python_env(**(env or {})),
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@contextmanager
def nobody_dir() -> Iterator[Path]:
    """A fresh directory under /tmp owned by nobody (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="tpmseal-nobody-"))
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
