# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the VM tier: initramfs builds shared by the session, a vTPM per test, boots.

The tier needs qemu, dracut, swtpm, cryptsetup, a kernel in /boot and root (dracut modules
are copied into /usr/lib/dracut/modules.d). Without them it skips with the reason, unless
TPMSEAL_REQUIRE_ALL=1, where a missing piece fails instead.

Measurements (boot times, sizes, Python start-up in the guest) are collected with the
`vm_measure` fixture, printed at the end of the run and written to
<pytest basetemp>/vm-measurements.json.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import harness as h
import pytest
from vmdata import (
    GUEST_KEYFILE,
    KEYFILE_BYTES,
    PASSPHRASE,
    PROBE_MODULE,
    PROJECT,
    TPMSEAL_MODULE,
    VOLUME_NAME,
    VOLUME_UUID,
)

REQUIRE_ALL = os.environ.get("TPMSEAL_REQUIRE_ALL") == "1"

_measurements: dict[str, object] = {}


def _unavailable(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"VM tier required (TPMSEAL_REQUIRE_ALL=1) but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vm_ready() -> str:
    """Checks the host once; returns the kernel version the VMs boot."""
    missing = h.missing_prerequisites()
    if missing:
        _unavailable("VM tier unavailable: missing " + ", ".join(missing))
    kver = h.default_kernel_version()
    assert kver is not None
    return kver


@pytest.fixture(scope="session")
def vm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm-initramfs")


@pytest.fixture(scope="session")
def vm_guest_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, str], ...]:
    """Files --include'd into every test initramfs."""
    d = tmp_path_factory.mktemp("vm-guest-files")
    (d / "test.key").write_bytes(KEYFILE_BYTES)
    (d / "passphrase").write_bytes(PASSPHRASE)
    (d / "crypttab").write_text(f"{VOLUME_NAME} UUID={VOLUME_UUID} {GUEST_KEYFILE} luks\n")
    return (
        (d / "crypttab", "/etc/crypttab"),
        (d / "test.key", GUEST_KEYFILE),
        (d / "passphrase", "/etc/tpmsealprobe/passphrase"),
    )


@pytest.fixture(scope="session")
def vm_measure() -> Callable[[str, object], None]:
    def record(key: str, value: object) -> None:
        _measurements[key] = value

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _measurements:
        return
    terminalreporter.section("VM measurements")
    for key, value in sorted(_measurements.items()):
        terminalreporter.write_line(f"{key}: {value}")
    basetemp = terminalreporter.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    out = Path(basetemp) / "vm-measurements.json"
    out.write_text(json.dumps(_measurements, indent=2, sort_keys=True) + "\n")
    terminalreporter.write_line(f"(written to {out})")


def _build(spec: h.InitramfsSpec, cache: Path, measure: Callable[[str, object], None],
           label: str) -> h.Initramfs:
    try:
        initrd = h.build_initramfs(spec, cache)
    except h.HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    measure(f"initramfs.{label}.build_s", round(initrd.build_seconds, 1))
    measure(f"initramfs.{label}.bytes", initrd.size)
    return initrd


@pytest.fixture(scope="session")
def systemd_initramfs(vm_ready: str, vm_cache: Path, vm_guest_files: tuple[tuple[Path, str], ...],
                      vm_measure: Callable[[str, object], None]) -> h.Initramfs:
    """systemd flavour + the probe: keyfile, TPM2 (systemd's own) and passphrase scenarios."""
    spec = h.InitramfsSpec(flavour=h.Flavour.SYSTEMD, module_dirs=(PROBE_MODULE,),
                           includes=vm_guest_files, kver=vm_ready)
    return _build(spec, vm_cache, vm_measure, "systemd_probe")


@pytest.fixture(scope="session")
def shell_initramfs(vm_ready: str, vm_cache: Path, vm_guest_files: tuple[tuple[Path, str], ...],
                    vm_measure: Callable[[str, object], None]) -> h.Initramfs:
    """dracut's non-systemd flavour + the probe."""
    spec = h.InitramfsSpec(flavour=h.Flavour.SHELL, module_dirs=(PROBE_MODULE,),
                           includes=vm_guest_files, kver=vm_ready)
    return _build(spec, vm_cache, vm_measure, "shell_probe")


def _venv_cache_dir() -> Path:
    return Path(os.environ.get("TPMSEAL_VM_CACHE", "/var/cache/tpmseal-vm"))


@pytest.fixture(scope="session")
def tpmseal_python(vm_ready: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of Debian's /usr/bin/python3.11 with tpmseal installed: TPMSEAL_PYTHON for dracut.

    Kept across sessions in $TPMSEAL_VM_CACHE (default /var/cache/tpmseal-vm); tpmseal is
    reinstalled from the checkout each session.
    """
    base = "/usr/bin/python3.11"
    if not os.access(base, os.X_OK) or shutil.which("zstd") is None:
        _unavailable(f"Python-in-initramfs tests need {base} (python3-venv) and zstd")
    log = tmp_path_factory.mktemp("venv") / "pip.log"
    try:
        return h.ensure_tpmseal_venv(_venv_cache_dir() / "venv-py311", PROJECT, base, log)
    except (h.HarnessError, OSError) as exc:
        pytest.fail(f"cannot prepare the tpmseal venv: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def python_initramfs(systemd_initramfs: h.Initramfs, tpmseal_python: Path, vm_cache: Path,
                     vm_guest_files: tuple[tuple[Path, str], ...],
                     vm_measure: Callable[[str, object], None]) -> h.Initramfs:
    """systemd flavour + the probe + dracut/90tpmseal (Python, tpm2-pytss, tpmseal)."""
    spec = h.InitramfsSpec(flavour=h.Flavour.SYSTEMD, module_dirs=(PROBE_MODULE, TPMSEAL_MODULE),
                           includes=vm_guest_files, kver=systemd_initramfs.kver,
                           env=(("TPMSEAL_PYTHON", str(tpmseal_python)),))
    return _build(spec, vm_cache, vm_measure, "systemd_probe_tpmseal")


@pytest.fixture(scope="session")
def vm_pcr7(systemd_initramfs: h.Initramfs, tmp_path_factory: pytest.TempPathFactory) -> str:
    """PCR 7 (sha256) as the VM's firmware leaves it, read by the probe in one boot."""
    d = tmp_path_factory.mktemp("pcr-probe")
    state = d / "vtpm"
    h.swtpm_setup(state)
    image = h.make_luks_image(d / "disk.img", PASSPHRASE, uuid=VOLUME_UUID)
    config = h.VmConfig(initrd=systemd_initramfs.path, disks=[image.path], tpm_state=state,
                        cmdline="rd.luks.crypttab=no rd.luks=0 tpmsealprobe.names=", kver=systemd_initramfs.kver)
    result = h.boot(config, d / "pcr.log")
    line = result.marker("PCR 7 : 0x")
    assert line is not None, result.summary()
    value = line.text.split("0x", 1)[1].strip().lower()
    assert len(value) == 64 and value != "0" * 64
    return value


@pytest.fixture(scope="session")
def shell_tpmseal_initramfs(shell_initramfs: h.Initramfs, tpmseal_python: Path, vm_cache: Path,
                            vm_guest_files: tuple[tuple[Path, str], ...],
                            vm_measure: Callable[[str, object], None]) -> h.Initramfs:
    spec = h.InitramfsSpec(flavour=h.Flavour.SHELL, module_dirs=(PROBE_MODULE, TPMSEAL_MODULE),
                           includes=vm_guest_files, kver=shell_initramfs.kver,
                           env=(("TPMSEAL_PYTHON", str(tpmseal_python)),))
    initrd = h.build_initramfs(spec, vm_cache)
    vm_measure("initramfs.shell_probe_tpmseal.bytes", initrd.size)
    return initrd


@pytest.fixture
def luks_image(tmp_path: Path) -> h.LuksImage:
    """A 32 MiB LUKS2 image with the fixed UUID: passphrase keyslot + key file keyslot."""
    keyfile = tmp_path / "test.key"
    keyfile.write_bytes(KEYFILE_BYTES)
    return h.make_luks_image(tmp_path / "disk.img", PASSPHRASE, uuid=VOLUME_UUID, keyfile=keyfile)


@pytest.fixture
def vtpm(vm_ready: str, tmp_path: Path) -> Path:
    """A fresh swtpm state directory; each boot starts its own swtpm on it."""
    state = tmp_path / "vtpm"
    h.swtpm_setup(state)
    return state


@pytest.fixture
def run_vm(tmp_path: Path) -> Iterator[Callable[..., h.BootResult]]:
    """run_vm(name, VmConfig, answers=None) -> BootResult; the log goes to tmp_path/name.log."""

    def run(name: str, config: h.VmConfig, answers: dict[str, str] | None = None) -> h.BootResult:
        return h.boot(config, tmp_path / f"{name}.log", answers=answers)

    yield run
