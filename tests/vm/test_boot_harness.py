# SPDX-License-Identifier: LGPL-2.1-or-later
"""Real boots under qemu (TCG) with a vTPM: each test judges by the probe's console markers.

The probe (tests/vm/modules/99tpmsealprobe) runs after the volumes are unlocked, checks
/dev/mapper/<name>, writes and reads back a marker through it, prints TPMSEALPROBE: lines
and powers the VM off. No marker means failure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import harness as h
import pytest
from vmdata import (
    PASSPHRASE,
    PROBE_MODULE,
    TPMSEAL_MODULE,
    VOLUME_NAME,
    VOLUME_UUID,
)

pytestmark = pytest.mark.vm

RunVm = Callable[..., h.BootResult]
Measure = Callable[[str, object], None]

# the keyfile line of the crypttab inside the initramfs opens the volume
CRYPTTAB_ARGS = f"rd.luks.uuid={VOLUME_UUID} root=/dev/mapper/{VOLUME_NAME}"
# ignore that crypttab: the volume is named on the command line and opened another way
NO_CRYPTTAB_ARGS = (f"rd.luks.crypttab=no rd.luks.name={VOLUME_UUID}={VOLUME_NAME} "
                    f"root=/dev/mapper/{VOLUME_NAME}")


def assert_unlocked(result: h.BootResult, name: str = VOLUME_NAME) -> h.ConsoleLine:
    """The volume is active and a marker written through it reads back; returns the unlock line."""
    unlocked = result.marker(f"UNLOCKED {name}")
    assert unlocked is not None, f"volume {name} not unlocked\n{result.summary()}"
    assert result.marker(f"RW_OK {name}") is not None, f"read/write through {name} failed\n{result.summary()}"
    assert result.marker("DONE") is not None, f"probe did not finish\n{result.summary()}"
    assert not result.timed_out, result.summary()
    return unlocked


def test_keyfile_unlock_systemd_flavour(systemd_initramfs: h.Initramfs, luks_image: h.LuksImage,
                                        run_vm: RunVm, vm_measure: Measure) -> None:
    result = run_vm("keyfile", h.VmConfig(initrd=systemd_initramfs.path, disks=[luks_image.path],
                                          cmdline=CRYPTTAB_ARGS, kver=systemd_initramfs.kver))
    line = assert_unlocked(result)
    vm_measure("boot.systemd_keyfile.unlock_s", round(line.t, 2))
    vm_measure("boot.systemd_keyfile.wall_s", round(result.wall, 2))


def test_keyfile_unlock_shell_flavour(shell_initramfs: h.Initramfs, luks_image: h.LuksImage,
                                      run_vm: RunVm, vm_measure: Measure) -> None:
    result = run_vm("keyfile-shell", h.VmConfig(initrd=shell_initramfs.path, disks=[luks_image.path],
                                                cmdline=CRYPTTAB_ARGS, kver=shell_initramfs.kver))
    line = assert_unlocked(result)
    vm_measure("boot.shell_keyfile.unlock_s", round(line.t, 2))
    vm_measure("boot.shell_keyfile.wall_s", round(result.wall, 2))


def test_vtpm_visible_and_pcrs_read(systemd_initramfs: h.Initramfs, luks_image: h.LuksImage,
                                    vtpm: Path, run_vm: RunVm) -> None:
    result = run_vm("vtpm", h.VmConfig(initrd=systemd_initramfs.path, disks=[luks_image.path],
                                       cmdline=CRYPTTAB_ARGS, tpm_state=vtpm,
                                       kver=systemd_initramfs.kver))
    assert_unlocked(result)
    devices = result.marker("TPM devices:")
    assert devices is not None and "/dev/tpmrm0" in devices.text, result.summary()
    pcrs = {}
    for m in result.markers:
        found = re.fullmatch(r"PCR (\d+) : 0x([0-9A-F]{64})", m.text)
        if found:
            pcrs[int(found.group(1))] = found.group(2)
    assert sorted(pcrs) == list(range(8)), result.summary()
    # SeaBIOS measured the boot: PCR 0 is not the all-zero reset value
    assert pcrs[0] != "0" * 64


def test_systemd_tpm2_enroll_in_guest_then_unattended_unlock(
    systemd_initramfs: h.Initramfs, luks_image: h.LuksImage, vtpm: Path, run_vm: RunVm,
    vm_measure: Measure,
) -> None:
    """Reference path: stock systemd-cryptenroll in the guest, then systemd-cryptsetup unseals."""
    def config(args: str) -> h.VmConfig:
        return h.VmConfig(initrd=systemd_initramfs.path, disks=[luks_image.path], cmdline=args,
                          tpm_state=vtpm, kver=systemd_initramfs.kver)

    enroll = run_vm("enroll", config(
        f"{CRYPTTAB_ARGS} tpmsealprobe.mode=enroll tpmsealprobe.enroll=/dev/vda"))
    assert_unlocked(enroll)
    ok = enroll.marker("ENROLL_OK")
    assert ok is not None, enroll.summary()
    assert "systemd-tpm2" in h.luks_token_types(luks_image.path)
    vm_measure("boot.systemd_tpm2.enroll_in_guest_ms", int(ok.text.split("ms=")[1]))

    unlock = run_vm("tpm2-unlock", config(
        f"{NO_CRYPTTAB_ARGS} rd.luks.options=tpm2-device=auto,headless=true"))
    line = assert_unlocked(unlock)
    # boot start (qemu start) to the volume being open, unattended
    vm_measure("boot.systemd_tpm2.unlock_s", round(line.t, 2))
    vm_measure("boot.systemd_tpm2.wall_s", round(unlock.wall, 2))


def test_passphrase_typed_at_console_prompt(systemd_initramfs: h.Initramfs, tmp_path: Path,
                                            run_vm: RunVm, vm_measure: Measure) -> None:
    """TPM refuses → a human types the passphrase: no token, no key file, the harness types."""
    image = h.make_luks_image(tmp_path / "bare.img", PASSPHRASE, uuid=VOLUME_UUID)
    config = h.VmConfig(initrd=systemd_initramfs.path, disks=[image.path], cmdline=NO_CRYPTTAB_ARGS,
                        kver=systemd_initramfs.kver)
    with h.Vm(config, tmp_path / "passphrase.log") as vm:
        prompt = vm.expect(r"Please enter passphrase for disk", timeout=90)
        vm.wait_quiet()
        vm.send(PASSPHRASE + b"\n")
        result = vm.wait()
    line = assert_unlocked(result)
    vm_measure("boot.passphrase.prompt_s", round(prompt.t, 2))
    vm_measure("boot.passphrase.unlock_after_typing_s", round(line.t - prompt.t, 2))


def test_python_and_tpm2_pytss_in_initramfs(python_initramfs: h.Initramfs, systemd_initramfs: h.Initramfs,
                                            luks_image: h.LuksImage, vtpm: Path, run_vm: RunVm,
                                            vm_measure: Measure) -> None:
    """dracut/90tpmseal: the interpreter, the import closure and tpm2-pytss work against /dev/tpmrm0."""
    with_py, without = python_initramfs.path, systemd_initramfs.path
    for label, path in (("with_tpmseal", with_py), ("without_tpmseal", without)):
        vm_measure(f"size.{label}.raw_bytes", path.stat().st_size)
        vm_measure(f"size.{label}.zstd_bytes", h.compressed_size(path))

    result = run_vm("python", h.VmConfig(initrd=with_py, disks=[luks_image.path], tpm_state=vtpm,
                                         cmdline=f"{CRYPTTAB_ARGS} tpmsealprobe.mode=python",
                                         kver=python_initramfs.kver))
    assert_unlocked(result)
    assert result.marker("PY_TPM_OK") is not None, result.summary()
    pcr7 = result.marker("PY_PCR7 sha256")
    shell_pcr7 = result.marker("PCR 7 : 0x")
    assert pcr7 is not None and shell_pcr7 is not None, result.summary()
    # Python (tpm2-pytss) and tpm2-tools read the same PCR 7
    assert pcr7.text.split()[2] == shell_pcr7.text.split("0x")[1].lower()
    entries = [m.text for m in result.markers if m.text.startswith("PY_ENTRY")]
    assert entries and all(e.startswith("PY_ENTRY_OK") for e in entries), result.summary()
    for m in result.markers:
        if m.text.startswith(("PY_START", "PY_IMPORT", "PY_PCR7", "PY_PROBE_PROCESS")):
            key, *words = m.text.split()
            fields = dict(w.split("=", 1) for w in words if "=" in w)
            name = f"guest.{key.lower()}" + (f".run{fields.pop('run')}" if "run" in fields else "")
            fields.pop("rc", None)
            vm_measure(name + "_ms", fields.pop("ms"))
            for part, value in fields.items():
                vm_measure(f"{name}.{part}_ms", value)


def test_initramfs_python_is_only_the_import_closure(python_initramfs: h.Initramfs,
                                                     vm_measure: Measure) -> None:
    """No whole stdlib: only what the unlock path imports (plus tpm2-tss libraries)."""
    files = h.initramfs_files(python_initramfs.path)
    names = list(files)
    py_files = [n for n in names if n.endswith(".py")]
    for unwanted in ("/tkinter/", "/idlelib/", "/unittest/", "/test/", "/pydoc_data/", "/ensurepip/",
                     "/site-packages/pip/", "/jinja2/"):
        assert not [n for n in py_files if unwanted in f"/{n}"], (
            f"{unwanted} in the initramfs: the unlock path must not import it at module level")
    for wanted in ("usr/lib/tpmseal/site/tpm2_pytss/ESAPI.py", "usr/lib/tpmseal/site/tpmseal/cli.py",
                   "usr/lib/tpmseal/site/tpm2_pytss/policy.py", "usr/bin/tpmseal",
                   "usr/lib/tpmseal/python3"):
        assert wanted in names, f"{wanted} missing from the initramfs"
    assert any("libtss2-tcti-device.so" in n for n in names)
    vm_measure("closure.python_files", len(py_files))
    for label, prefix in (("site", "usr/lib/tpmseal/site/"), ("stdlib", "usr/lib/python3")):
        vm_measure(f"closure.{label}_bytes", sum(v for k, v in files.items() if k.startswith(prefix)))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_dracut_shell_passes_shellcheck() -> None:
    scripts = [TPMSEAL_MODULE / "module-setup.sh", PROBE_MODULE / "module-setup.sh"]
    scripts += sorted(p for p in PROBE_MODULE.glob("*.sh") if p.name != "module-setup.sh")
    proc = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_harness_result_parsing(tmp_path: Path) -> None:
    """Markers, times and prompt lines come out of a BootResult as the tests expect."""
    lines = [h.ConsoleLine(1.0, "[ 1.0] kernel"), h.ConsoleLine(2.5, "TPMSEALPROBE: UNLOCKED x uptime=2")]
    r = h.BootResult(log="", lines=lines, wall=3.0, returncode=0, timed_out=False,
                     log_path=tmp_path / "x.log", cmdline="")
    assert r.marker("UNLOCKED x") == h.ConsoleLine(2.5, "UNLOCKED x uptime=2")
    assert r.time_to(r"kernel") == 1.0
    assert r.time_to(r"nothing") is None
    assert json.dumps([m.text for m in r.markers])
