# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal install-system-files`` and the copy of the system files inside the package (src/tpmseal/_data):
the copy equals the sources, everything lands where the system looks for it, a second run changes nothing,
``man`` reads the installed pages, and a built wheel carries the files."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from support import need, run_cli

from tpmseal import install_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_data = _load(ROOT / "contrib" / "sync-data.py", "tpmseal_sync_data")
man_build = _load(ROOT / "man" / "build.py", "tpmseal_man_build_test")


def test_packaged_data_is_in_sync_with_the_sources() -> None:
    diff = sync_data.differences()
    assert not diff, "src/tpmseal/_data is out of date: run 'python contrib/sync-data.py'\n" + "\n".join(diff)


def test_sync_check_mode() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "contrib" / "sync-data.py"), "--check"], capture_output=True)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_data_dir_has_no_symlinks() -> None:
    links = [str(p) for p in install_files.DATA.rglob("*") if p.is_symlink()]
    assert not links, f"symbolic links do not survive every wheel/sdist path: {links}"


def test_every_source_file_is_installed() -> None:
    dests = {str(i.dest) for i in install_files.items()}
    for f in (ROOT / "dracut" / "90tpmseal").iterdir():
        assert f"lib/dracut/modules.d/90tpmseal/{f.name}" in dests
    for f in (ROOT / "systemd").glob("*"):
        assert f"lib/systemd/system/{f.name}" in dests
    for f in (ROOT / "man").glob("*.rst"):
        name = f.name.removesuffix(".rst")
        assert f"share/man/man{name.rsplit('.', 1)[1]}/{name}.gz" in dests
    assert "share/bash-completion/completions/tpmseal" in dests
    assert "share/zsh/vendor-completions/_tpmseal" in dests


def test_install_into_a_root(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # an admin's tight umask must not make the files unreadable
    try:
        done = install_files.install(tmp_path, "/usr")
    finally:
        os.umask(old_umask)
    assert done and all(d.changed for d in done)
    usr = tmp_path / "usr"
    setup = usr / "lib/dracut/modules.d/90tpmseal/module-setup.sh"
    assert setup.stat().st_mode & 0o777 == 0o755
    assert setup.read_bytes() == (ROOT / "dracut/90tpmseal/module-setup.sh").read_bytes()
    unit = usr / "lib/systemd/system/tpmseal-askpass.service"
    assert not unit.exists(), "initramfs-only units belong to the dracut module, not the system's unit dir"
    for f in (ROOT / "systemd").glob("*"):
        installed = usr / "lib/systemd/system" / f.name
        assert installed.read_bytes() == f.read_bytes()
        assert installed.stat().st_mode & 0o777 == 0o644
    page = usr / "share/man/man8/tpmseal-enroll.8.gz"
    assert gzip.decompress(page.read_bytes()) == man_build.to_troff(ROOT / "man/tpmseal-enroll.8.rst")
    assert (usr / "share/man/man5/tpmseal-token.5.gz").exists()
    assert (usr / "share/man/man7/tpmseal.7.gz").exists()
    bash = usr / "share/bash-completion/completions/tpmseal"
    assert bash.read_bytes() == (ROOT / "contrib/completion/tpmseal.bash").read_bytes()
    assert (usr / "share/zsh/vendor-completions/_tpmseal").read_text().startswith("#compdef tpmseal\n")
    assert not list(tmp_path.rglob(".*.tpmseal-new")), "temporary files left behind"

    again = install_files.install(tmp_path, "/usr")
    assert [d.path for d in again] == [d.path for d in done]
    assert not any(d.changed for d in again), "a second run must change nothing"


def test_reproducible_man_pages(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        install_files.install(tmp_path / d, "/usr")
    a = (tmp_path / "a/usr/share/man/man8/tpmseal.8.gz").read_bytes()
    b = (tmp_path / "b/usr/share/man/man8/tpmseal.8.gz").read_bytes()
    assert a == b


def test_changed_file_is_rewritten(tmp_path: Path) -> None:
    install_files.install(tmp_path, "/usr/local")
    target = tmp_path / "usr/local/lib/systemd/system/tpmseal-credd.socket"
    target.write_text("edited\n")
    target.chmod(0o600)
    done = {d.path: d.changed for d in install_files.install(tmp_path, "/usr/local")}
    assert done[str(target)] is True
    assert sum(done.values()) == 1
    assert target.read_bytes() == (ROOT / "systemd/tpmseal-credd.socket").read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644


def test_cli_json(tmp_path: Path) -> None:
    r = run_cli("install-system-files", "--root", str(tmp_path), "--prefix", "/opt/tpmseal", "--json")
    out = json.loads(r.stdout)
    assert out["prefix"] == "/opt/tpmseal"
    paths = {f["path"] for f in out["files"]}
    assert str(tmp_path / "opt/tpmseal/share/man/man8/tpmseal-install-system-files.8.gz") in paths
    assert all(f["changed"] for f in out["files"])
    assert {f["kind"] for f in out["files"]} == {"dracut", "systemd", "man", "completion"}
    r = run_cli("install-system-files", "--root", str(tmp_path), "--prefix", "/opt/tpmseal")
    assert "nothing to change" in r.stdout


@pytest.mark.parametrize("prefix", ["usr", "/usr/../etc"])
def test_bad_prefix_is_a_usage_error(tmp_path: Path, prefix: str) -> None:
    r = run_cli("install-system-files", "--root", str(tmp_path), "--prefix", prefix, check=2)
    assert "--prefix" in r.stderr
    assert not any(tmp_path.iterdir())


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    run_cli("install-system-files", "--root", str(tmp_path / "nope"), check=2)


def test_man_reads_the_installed_pages(tmp_path: Path) -> None:
    need("man")
    install_files.install(tmp_path, "/usr")
    mandir = tmp_path / "usr/share/man"
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}
    for argv, extra in (
        (["man", "-M", str(mandir), "tpmseal-enroll"], {}),
        (["man", "tpmseal-enroll"], {"MANPATH": str(mandir)}),
        (["man", "-M", str(mandir), "5", "tpmseal-token"], {}),
    ):
        r = subprocess.run(argv, capture_output=True, text=True, env={**env, **extra})
        assert r.returncode == 0, f"{argv}: {r.stderr}"
        name = argv[-1]
        assert name in r.stdout.splitlines()[0], r.stdout[:300]
        assert "SYNOPSIS" in r.stdout


def test_wheel_carries_the_data(tmp_path: Path) -> None:
    """Builds a wheel from a copy of the tree (the work tree stays clean) and looks inside."""
    src = tmp_path / "src-tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("tpmseal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"tpmseal/_data/{rel}" for rel in sync_data.expected()}
    missing = sorted(want - names)
    assert not missing, f"the wheel lacks {len(missing)} data file(s), e.g. {missing[:3]} (pyproject package-data)"
    assert not [n for n in names if "_data/" in n and "__pycache__" in n]
    info = zipfile.ZipFile(wheel).getinfo("tpmseal/_data/dracut/90tpmseal/module-setup.sh")
    assert (info.external_attr >> 16) & 0o111, "module-setup.sh lost its executable bit in the wheel"
