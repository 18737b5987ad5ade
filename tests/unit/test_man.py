# SPDX-License-Identifier: LGPL-2.1-or-later
"""The man pages in man/: they render to troff that groff accepts without a warning, and they cannot
drift from the command line: every subcommand of ``tpmseal.cli.build_parser()`` has a page that
documents every option it defines, and tpmseal(8) names every subcommand and every exit code."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from support import need

from tpmseal.cli import build_parser
from tpmseal.errors import ExitCode

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
SPDX = ".. SPDX-License-Identifier: LGPL-2.1-or-later"


def _load_build() -> ModuleType:
    """man/build.py is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("tpmseal_man_build", MAN / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
PAGES = build.pages(MAN)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers, discovered from the parser object rather than listed here."""
    group = parser._subparsers
    assert group is not None, "the parser has no subcommands"
    actions = [a for a in group._group_actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


def positional_metavars(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(action.metavar or action.dest)
        for action in parser._actions
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
    ]


SUBCOMMANDS = subcommands(build_parser())


def page_path(name: str) -> Path:
    return MAN / name


def section(text: str, title: str) -> str:
    """The body of a top-level section (title underlined with '=') of an rst page, or ''."""
    lines = text.splitlines()
    body: list[str] | None = None
    for i, line in enumerate(lines):
        underlined = i + 1 < len(lines) and re.fullmatch(r"=+", lines[i + 1]) is not None and line.strip() != ""
        if body is None:
            if underlined and line.strip() == title:
                body = []
            continue
        if underlined:
            break
        body.append(line)
    return "\n".join(body or [])


def option_terms(text: str) -> str:
    """The term lines of a page's OPTIONS list (``**--json**``, ``**-h**, **--help**``): an option counts
    as documented only where it is described, not where another option's text mentions it."""
    return "\n".join(line for line in section(text, "OPTIONS").splitlines() if line.startswith("**"))


def mentions(text: str, word: str) -> bool:
    """``word`` as a whole word or option: ``--force`` does not count inside ``--forced``."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_pages_found() -> None:
    names = {p.name for p in PAGES}
    assert {"tpmseal.8.rst", "tpmseal.7.rst", "tpmseal-token.5.rst"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_starts_with_spdx(page: Path) -> None:
    assert page.read_text(encoding="utf-8").splitlines()[0] == SPDX


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_without_warnings(page: Path, tmp_path: Path) -> None:
    # docutils: build.py stops at any warning (halt_level 2), so a broken page raises here
    out = build.render(page, tmp_path)
    name, sect = build.target_name(page).rsplit(".", 1)
    assert out == tmp_path / f"{name}.{sect}"
    troff = out.read_text(encoding="utf-8")
    assert f'.TH "{name}" "{sect}"' in troff, "title or :Manual section: does not match the file name"
    assert "\n.SH NAME\n" in troff

    need("groff")
    r = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-ww", "-z", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"groff warnings for {page.name}:\n{r.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_has_the_usual_sections(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    required = ["SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]
    if page.name.endswith(".8.rst"):
        required.append("OPTIONS")
    missing = [title for title in required if not section(text, title).strip()]
    assert not missing, f"{page.name} lacks section(s) {', '.join(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_references_point_to_existing_pages(page: Path) -> None:
    """Every ``**tpmseal...**\\ (N)`` reference names a page that exists."""
    text = page.read_text(encoding="utf-8")
    names = {build.target_name(p) for p in PAGES}
    refs = set(re.findall(r"\*\*(tpmseal[\w-]*)\*\*\\ \((\d)\)", text))
    dangling = sorted(f"{n}({s})" for n, s in refs if f"{n}.{s}" not in names)
    assert not dangling, f"{page.name} refers to missing page(s): {', '.join(dangling)}"


@pytest.mark.parametrize("sub", sorted(SUBCOMMANDS))
def test_subcommand_page_documents_every_option(sub: str) -> None:
    page = page_path(f"tpmseal-{sub}.8.rst")
    assert page.exists(), f"subcommand '{sub}' has no man page {page.name}"
    text = page.read_text(encoding="utf-8")
    parser = SUBCOMMANDS[sub]
    undocumented = [o for o in option_strings(parser) if not mentions(option_terms(text), o)]
    assert not undocumented, f"{page.name}: OPTIONS does not document {', '.join(undocumented)}"
    options = section(text, "OPTIONS")
    for metavar in positional_metavars(parser):
        assert re.search(rf"^\*{re.escape(metavar)}\*$", options, re.MULTILINE), (
            f"{page.name}: OPTIONS does not describe {metavar}"
        )
    synopsis = section(text, "SYNOPSIS")
    assert mentions(synopsis, f"tpmseal {sub}"), f"{page.name}: SYNOPSIS does not show 'tpmseal {sub}'"


# pages of programs and services that are not subcommands (the credential server's page)
NOT_SUBCOMMANDS = {"credd"}


def test_no_page_for_a_subcommand_that_does_not_exist() -> None:
    stray = [
        p.name
        for p in PAGES
        if p.name.startswith("tpmseal-") and p.name.endswith(".8.rst")
        and p.name.removeprefix("tpmseal-").removesuffix(".8.rst") not in {*SUBCOMMANDS, *NOT_SUBCOMMANDS}
    ]  # fmt: skip
    assert not stray, f"man pages for commands the CLI does not have: {', '.join(stray)}"


def test_main_page_names_every_subcommand_and_global_option() -> None:
    text = page_path("tpmseal.8.rst").read_text(encoding="utf-8")
    for sub in SUBCOMMANDS:
        assert mentions(section(text, "COMMANDS"), sub), f"tpmseal.8: COMMANDS does not describe '{sub}'"
        assert mentions(section(text, "SYNOPSIS"), sub), f"tpmseal.8: SYNOPSIS does not show '{sub}'"
        assert f"**tpmseal-{sub}**\\ (8)" in section(text, "SEE ALSO"), f"tpmseal.8: SEE ALSO lacks tpmseal-{sub}(8)"
    undocumented = [o for o in option_strings(build_parser()) if not mentions(option_terms(text), o)]
    assert not undocumented, f"tpmseal.8: OPTIONS does not document {', '.join(undocumented)}"


def _normalize(text: str) -> str:
    return " ".join(text.replace("`", "").replace("*", "").split())


def test_exit_status_matches_readme_and_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$", readme, re.MULTILINE)
    assert len(rows) >= 10, "README.md exit code table not found"
    documented = _normalize(section(page_path("tpmseal.8.rst").read_text(encoding="utf-8"), "EXIT STATUS"))
    missing = [f"{code} {meaning}" for code, meaning in rows if f"{code} {_normalize(meaning)}" not in documented]
    assert not missing, "tpmseal.8 EXIT STATUS differs from README.md for:\n" + "\n".join(missing)
    codes = {int(code) for code, _ in rows}
    undocumented = sorted(int(c) for c in ExitCode if int(c) not in codes)
    assert not undocumented, f"exit codes in tpmseal.errors.ExitCode but not documented: {undocumented}"


def test_build_script(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(MAN / "build.py"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(build.target_name(p) for p in PAGES)
