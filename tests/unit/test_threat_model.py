# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal(7) names a test for each security claim: every ``file::test`` it cites exists, and the threat-model
table cites at least one test in every row that claims something stops an attack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "tpmseal.7.rst"
CITE = re.compile(r"``((?:tpm|vm|unit)/test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)``")


def citations(text: str) -> list[tuple[str, str]]:
    return CITE.findall(text)


def test_every_cited_test_exists() -> None:
    cited = citations(PAGE.read_text(encoding="utf-8"))
    assert len(cited) >= 20
    missing = []
    for path, name in cited:
        src = ROOT / "tests" / path
        if not src.exists() or not re.search(rf"^def {name}\(", src.read_text(encoding="utf-8"), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_a_made_up_citation_would_be_caught() -> None:
    """The control: the checker sees a citation of a test that does not exist."""
    [(path, name)] = citations("see ``tpm/test_enroll.py::test_that_was_never_written``")
    assert not re.search(rf"^def {name}\(", (ROOT / "tests" / path).read_text(encoding="utf-8"), re.MULTILINE)


def test_threat_table_rows_that_claim_protection_cite_a_test() -> None:
    text = PAGE.read_text(encoding="utf-8")
    table = text.split(".. list-table::", 1)[1].split("\nWhat to bind against each attacker", 1)[0]
    rows = [r for r in re.split(r"\n   \* - ", table)[2:]]  # [0]: options, [1]: the header row
    assert len(rows) >= 15
    for row in rows:
        cells = re.split(r"\n     - ", row)
        assert len(cells) == 3, row
        stops_nothing = cells[1].lstrip().startswith("Nothing")
        assert citations(cells[2]) or (stops_nothing and "not tested" in cells[2]), row
