# SPDX-License-Identifier: LGPL-2.1-or-later
"""The initramfs gets only the import closure of the entry modules named in dracut/90tpmseal/module-setup.sh.
A module that a boot command imports lazily (inside a function) is invisible to that closure, so it must be
named there. This static check follows every tpmseal import (lazy ones too) from the commands the
initramfs runs, and fails when one would be missing in the guest (ModuleNotFoundError at boot)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
MODULE_SETUP = ROOT / "dracut" / "90tpmseal" / "module-setup.sh"
# what the initramfs runs: the agent (systemd flavour), unlock (shell flavour), measure-volumes, and
# test-unlock and doctor (used by the VM tests' probe, and by an admin in an emergency shell)
BOOT_HANDLERS = {
    "tpmseal.cli": ("cmd_askpass_agent", "cmd_unlock", "cmd_measure_volumes", "cmd_test_unlock", "_pin_source"),
    "tpmseal.doctor.command": ("cmd_doctor",),
    "tpmseal.doctor": ("run_doctor", "_tpm_facts"),  # a package: its functions are named explicitly
}


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def imports(node: ast.AST, current: str) -> set[str]:
    """tpmseal modules imported anywhere below ``node``."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("tpmseal"):
            out.add(n.module)
            out |= {f"{n.module}.{a.name}" for a in n.names if module_file(f"{n.module}.{a.name}")}
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("tpmseal")}
    return {m for m in out if module_file(m)}


def top_level_imports(name: str) -> set[str]:
    path = module_file(name)
    assert path is not None, name
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for stmt in tree.body:  # module level only (TYPE_CHECKING blocks never run)
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            continue
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            out |= imports(stmt, name)
    # a package's parents are imported first
    parts = name.split(".")
    out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def closure(start: set[str], follow) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(follow(m) - seen)
    return seen


def all_imports(name: str) -> set[str]:
    path = module_file(name)
    assert path is not None, name
    parts = name.split(".")
    return imports(ast.parse(path.read_text()), name) | {".".join(parts[:i]) for i in range(1, len(parts))}


def listed_entries() -> set[str]:
    text = MODULE_SETUP.read_text()
    names: set[str] = set()
    for var in ("TPMSEAL_PY_REQUIRE", "TPMSEAL_PY_OPTIONAL"):
        m = re.search(rf'^{var}="([^"]*)"', text, re.M)
        assert m, var
        names |= set(m.group(1).split())
    return {n for n in names if n.startswith("tpmseal")}


# The CLI and the modules that only register other commands: at boot just their module-level code runs
# (their handlers are not the boot commands), so only their top-level imports are followed.
TOP_LEVEL_ONLY = {
    "tpmseal.cli", "tpmseal.config.command", "tpmseal.creds.command", "tpmseal.repair",
    "tpmseal.install_files", "tpmseal.doctor.command", "tpmseal.update.command",
}  # fmt: skip


# Lazy imports in functions that never run at boot: (module, lazily imported module) -> why.
NOT_AT_BOOT = {
    ("tpmseal.update.signed", "tpmseal.enroll"): "enroll_signed runs at enrollment, on the running system",
    ("tpmseal.update.signed", "tpmseal.wipe"): "only reseal and enroll_signed remove keyslots",
    ("tpmseal.update.signed", "tpmseal.update.description"): "enroll_signed signs the seal description",
    ("tpmseal.inventory", "tpmseal.update.description"): "seal_infos runs for 'list', on the running system",
    ("tpmseal.interop.systemd_tpm2", "tpmseal.enroll"): "enroll_systemd_tpm2 runs at enrollment",
}


def boot_imports(name: str) -> set[str]:
    path = module_file(name)
    if name in TOP_LEVEL_ONLY or (path is not None and path.name == "__init__.py"):
        return top_level_imports(name)  # a package's functions are not the boot path; its body runs
    return {m for m in all_imports(name) if (name, m) not in NOT_AT_BOOT}


def test_every_module_the_boot_commands_import_is_in_the_initramfs() -> None:
    lazily: set[str] = set()
    for module, names in BOOT_HANDLERS.items():
        path = module_file(module)
        assert path is not None, module
        tree = ast.parse(path.read_text())
        handlers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        assert {h.name for h in handlers} == set(names), module
        lazily |= set().union(*(imports(h, module) for h in handlers))
    needed = closure(lazily | {"tpmseal.cli"}, boot_imports)
    installed = closure(listed_entries(), top_level_imports)
    missing = sorted(needed - installed)
    assert not missing, f"add to TPMSEAL_PY_OPTIONAL in {MODULE_SETUP.name}: {' '.join(missing)}"


def test_the_check_sees_lazy_imports_but_not_type_checking_ones() -> None:
    tree = ast.parse("def f():\n    from tpmseal.inventory import report\n")
    assert "tpmseal.inventory" in imports(tree, "x")
    top = top_level_imports("tpmseal.cli")
    assert "tpmseal.errors" in top and "tpmseal.inventory" not in top  # lazy in cli
    assert "tpmseal.wipe" not in top  # imported only under TYPE_CHECKING there
