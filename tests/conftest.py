# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared fixtures: a session swtpm on a private UNIX socket, fresh LUKS2 images, the skip rule.

A missing tool skips its tier locally; with TPMSEAL_REQUIRE_ALL=1 (CI) any skip fails the run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REQUIRE_ALL, Image, Swtpm, make_luks2, start_swtpm

os.environ.setdefault("TSS2_LOG", "all+none")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not REQUIRE_ALL:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        print(f"\nTPMSEAL_REQUIRE_ALL=1: {skipped} test(s) skipped; failing the run", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    t = start_swtpm(tmp_path_factory.mktemp("swtpm"))
    yield t
    t.stop()


@pytest.fixture
def other_swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    """A second, independent TPM (another machine)."""
    t = start_swtpm(tmp_path / "other-swtpm")
    yield t
    t.stop()


@pytest.fixture
def no_leaks(swtpm: Swtpm) -> Iterator[None]:
    """Fails a test that leaves a transient object or session loaded in the session swtpm."""
    assert swtpm.loaded_handles() == [], "TPM not clean before the test"
    yield
    left = swtpm.loaded_handles()
    assert left == [], f"test left TPM handles loaded: {left}"


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_luks2(tmp_path / "disk.img")
