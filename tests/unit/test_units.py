# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every systemd unit tpmseal ships (systemd/ and the dracut module) points its Documentation= at man pages
that exist in man/, so 'systemctl help UNIT' always finds one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
UNIT_SUFFIXES = {".service", ".socket", ".path", ".timer", ".target", ".mount", ".automount", ".slice", ".scope"}
UNITS = sorted(
    p
    for d in (ROOT / "systemd", ROOT / "dracut" / "90tpmseal")
    if d.is_dir()
    for p in d.iterdir()
    if p.suffix in UNIT_SUFFIXES
)
PAGES = {p.name.removesuffix(".rst") for p in (ROOT / "man").glob("*.rst")}


def documentation(text: str) -> list[str]:
    """The URIs of every Documentation= line of the [Unit] section (space-separated, may repeat)."""
    uris: list[str] = []
    section = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s
        elif section == "[Unit]" and s.startswith("Documentation="):
            uris += s.removeprefix("Documentation=").split()
    return uris


def test_units_found() -> None:
    names = {p.name for p in UNITS}
    assert {"tpmseal-askpass.service", "tpmseal-askpass.path", "tpmseal-measure.service"} <= names


def test_documentation_parser() -> None:
    text = "[Unit]\nDocumentation=man:a(8) man:b(5)\nDocumentation=man:c(7)\n[Service]\nDocumentation=man:x(1)\n"
    assert documentation(text) == ["man:a(8)", "man:b(5)", "man:c(7)"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_unit_documentation_points_to_existing_man_page(unit: Path) -> None:
    uris = documentation(unit.read_text(encoding="utf-8"))
    pages = [u for u in uris if u.startswith("man:")]
    assert pages, f"{unit.name}: no Documentation=man:... in [Unit]"
    for uri in pages:
        m = re.fullmatch(r"man:([\w.-]+)\((\d)\)", uri)
        assert m, f"{unit.name}: malformed Documentation URI {uri!r} (expected man:NAME(SECTION))"
        assert f"{m[1]}.{m[2]}" in PAGES, f"{unit.name}: {uri} has no page man/{m[1]}.{m[2]}.rst"
