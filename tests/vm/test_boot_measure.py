# SPDX-License-Identifier: LGPL-2.1-or-later
"""The boot measurement fails closed (issue 16, attack 4).

A volume is unlocked from its PCR 15-bound token; then a test-only step (tests/vm/modules/99tpmsealprobe,
tpmsealprobe.break=) breaks the measurement on purpose before tpmseal runs it: it unbinds the TPM's driver
(the TPM disappears: no /dev/tpm*, no /sys/class/tpm) or deletes the device nodes. "Code running after the
unlock" is the probe: it brings the TPM back (rebinds the driver, or mknods the node from sysfs) and asks
the TPM for the volume's key through its own token (`tpmseal test-unlock`).

Fixed behaviour: the TPM disappeared -> the boot stops (powers off) before the probe runs; only the node
disappeared -> tpmseal measures through a node of its own made from sysfs, the boot goes on, and the TPM
refuses the key (PCR 15 differs). Control: the same break against the old unit/hook (skipped when
/dev/tpmrm0 is absent, errors ignored) lets the probe unseal the key.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import harness as h
import pytest
from test_boot_harness import assert_unlocked
from test_boot_unlock import SHELL_ARGS, SHELL_NAME, SYSTEMD_ARGS, enrolled_image
from vmdata import PROBE_MODULE, TPMSEAL_MODULE

pytestmark = pytest.mark.vm

Measure = Callable[[str, object], None]

# generous: six jobs share two cores; every test judges by markers, never by time
TIMEOUT = 400
ATTACK = "tpmsealprobe.mode=rebind,attack tpmsealprobe.victim=/dev/vda"
STOPPED = r"tpmseal: .*PCR 15 was not extended.*stopping the boot"

# The measurement as shipped before the fix, kept verbatim for the controls.
OLD_MEASURE_UNIT = """\
[Unit]
Description=Measure the unlocked volumes into PCR 15 (tpmseal volume binding)
Documentation=man:tpmseal-measure-volumes(8)
DefaultDependencies=no
After=cryptsetup.target
Before=dracut-pre-mount.service initrd-root-fs.target sysroot.mount initrd-switch-root.target
Conflicts=shutdown.target
ConditionPathExists=/dev/tpmrm0

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/tpmseal measure-volumes --tpm2-device=auto
StandardOutput=journal+console
StandardError=journal+console
Environment=TSS2_LOG=all+none
"""
OLD_MEASURE_HOOK = """\
#!/bin/sh
if [ -e /dev/tpmrm0 ]; then
    TSS2_LOG=all+none /usr/bin/tpmseal measure-volumes --tpm2-device=auto 2>&1 | while read -r _line; do
        echo "$_line" > /dev/console
    done
fi
"""


EMERGENCY_HOOK = 'inst_hook emergency 00 "$moddir/tpmseal-measure.sh"'


def old_module(dest: Path) -> Path:
    """dracut/90tpmseal with the measurement unit and hook of before the fix, and no emergency hook."""
    mod = dest / TPMSEAL_MODULE.name
    if not mod.exists():
        shutil.copytree(TPMSEAL_MODULE, mod, ignore=shutil.ignore_patterns("__pycache__"))
        (mod / "tpmseal-measure.service").write_text(OLD_MEASURE_UNIT)
        (mod / "tpmseal-measure.sh").write_text(OLD_MEASURE_HOOK)
        setup = (mod / "module-setup.sh").read_text()
        assert EMERGENCY_HOOK in setup
        (mod / "module-setup.sh").write_text(setup.replace(EMERGENCY_HOOK, ":"))
    return mod


def _build(flavour: h.Flavour, tpmseal_module: Path, kver: str, tpmseal_python: Path, vm_cache: Path,
           files: tuple[tuple[Path, str], ...]) -> h.Initramfs:
    spec = h.InitramfsSpec(flavour=flavour, module_dirs=(PROBE_MODULE, tpmseal_module), includes=files,
                           kver=kver, env=(("TPMSEAL_PYTHON", str(tpmseal_python)),))
    return h.build_initramfs(spec, vm_cache)


@pytest.fixture(scope="session")
def old_python_initramfs(python_initramfs: h.Initramfs, tpmseal_python: Path, vm_cache: Path,
                         vm_guest_files: tuple[tuple[Path, str], ...],
                         tmp_path_factory: pytest.TempPathFactory) -> h.Initramfs:
    mod = old_module(tmp_path_factory.mktemp("old-module"))
    return _build(h.Flavour.SYSTEMD, mod, python_initramfs.kver, tpmseal_python, vm_cache, vm_guest_files)


@pytest.fixture(scope="session")
def old_shell_tpmseal_initramfs(shell_tpmseal_initramfs: h.Initramfs, tpmseal_python: Path, vm_cache: Path,
                                vm_guest_files: tuple[tuple[Path, str], ...],
                                tmp_path_factory: pytest.TempPathFactory) -> h.Initramfs:
    mod = old_module(tmp_path_factory.mktemp("old-module-shell"))
    return _build(h.Flavour.SHELL, mod, shell_tpmseal_initramfs.kver, tpmseal_python, vm_cache, vm_guest_files)


def broken_boot(initrd: h.Initramfs, image: Path, vtpm: Path, args: str, breaking: str, log: Path) -> h.BootResult:
    config = h.VmConfig(initrd=initrd.path, disks=[image], tpm_state=vtpm, kver=initrd.kver, timeout=TIMEOUT,
                        cmdline=f"{args} tpmsealprobe.break={breaking} {ATTACK}")
    return h.boot(config, log)


def assert_stopped_before_root(result: h.BootResult) -> None:
    """The volume was opened from the TPM, the break happened, then the boot stopped: loud, no hang, and
    nothing after the unlock ran (no probe marker after the break)."""
    assert result.time_to(r"tpmseal: .* unlocked with token 0") is not None, result.summary()
    assert result.marker("BREAK unbind") is not None, result.summary()
    assert result.time_to(STOPPED) is not None, result.summary()
    assert not result.timed_out, result.summary()
    ran = [m.text for m in result.markers if m.text.startswith(("START", "UNLOCKED", "REBIND", "ATTACK", "DONE"))]
    assert ran == [], result.summary()


def assert_key_unsealed_after_unlock(result: h.BootResult, name: str) -> None:
    assert_unlocked(result, name)
    assert result.marker("BREAK unbind") is not None, result.summary()
    rebind = result.marker("REBIND unbind")
    assert rebind is not None and "/dev/tpmrm0" in rebind.text, result.summary()
    assert result.marker("ATTACK_UNSEALED") is not None, result.summary()


def test_tpm_gone_before_measurement_stops_the_boot(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                   tmp_path: Path, vm_measure: Measure) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = broken_boot(python_initramfs, image, vtpm, SYSTEMD_ARGS, "unbind", tmp_path / "unbind.log")
    assert_stopped_before_root(result)
    vm_measure("boot.measure_fail_closed.stop_s", round(result.time_to(STOPPED) or 0, 2))
    vm_measure("boot.measure_fail_closed.wall_s", round(result.wall, 2))


def test_tpm_gone_before_measurement_old_unit_leaves_key_unsealable(
    old_python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str, tmp_path: Path
) -> None:
    """Control: the unit of before the fix is skipped without /dev/tpmrm0, the boot goes on, and code
    running after the unlock gets the key from the TPM (PCR 15 still at zero)."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = broken_boot(old_python_initramfs, image, vtpm, SYSTEMD_ARGS, "unbind", tmp_path / "unbind-old.log")
    assert_key_unsealed_after_unlock(result, "tpmsealtest")


def test_shell_flavour_tpm_gone_before_measurement_stops_the_boot(
    shell_tpmseal_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str, tmp_path: Path, vm_measure: Measure
) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = broken_boot(shell_tpmseal_initramfs, image, vtpm, SHELL_ARGS, "unbind", tmp_path / "shell-unbind.log")
    assert_stopped_before_root(result)
    vm_measure("boot.measure_fail_closed_shell.stop_s", round(result.time_to(STOPPED) or 0, 2))


def test_shell_flavour_tpm_gone_old_hook_leaves_key_unsealable(
    old_shell_tpmseal_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str, tmp_path: Path
) -> None:
    """Control for the non-systemd hook of before the fix."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = broken_boot(old_shell_tpmseal_initramfs, image, vtpm, SHELL_ARGS, "unbind",
                         tmp_path / "shell-unbind-old.log")
    assert_key_unsealed_after_unlock(result, SHELL_NAME)


def test_device_node_removed_still_measured_and_key_refused(python_initramfs: h.Initramfs, vtpm: Path,
                                                           vm_pcr7: str, tmp_path: Path) -> None:
    """Only /dev/tpmrm0 and /dev/tpm0 are deleted (the driver stays): the measurement goes through a node
    of its own made from sysfs, the boot goes on, and the key is refused to the code after the unlock,
    which recreates the node."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = broken_boot(python_initramfs, image, vtpm, SYSTEMD_ARGS, "rmnode", tmp_path / "rmnode.log")
    assert_unlocked(result)
    assert result.marker("BREAK rmnode; TPM devices left: none") is not None, result.summary()
    assert result.time_to(r"tpmseal: measured .*PCR 15") is not None, result.summary()
    rebind = result.marker("REBIND rmnode")
    assert rebind is not None and "/dev/tpmrm0" in rebind.text, result.summary()
    assert result.marker("ATTACK_REFUSED") is not None, result.summary()
    assert result.time_to(r"attack: .*PCR\(s\) 15 differ") is not None, result.summary()


def emergency_shell_attack(initrd: h.Initramfs, image: Path, vtpm: Path, log: Path) -> h.BootResult:
    """Unlock from the bound token, then isolate emergency.target before the measurement (allowing the
    shell: rd.shell=1 after the harness's rd.shell=0, the last one counts) and, at the shell, ask the
    TPM for the key through the volume's token."""
    config = h.VmConfig(initrd=initrd.path, disks=[image], tpm_state=vtpm, kver=initrd.kver, timeout=TIMEOUT,
                        cmdline=f"{SYSTEMD_ARGS} tpmsealprobe.break=emergency rd.shell=1")
    with h.Vm(config, log) as vm:
        vm.expect(r"TPMSEALPROBE: BREAK emergency", timeout=TIMEOUT)
        vm.expect(r"Entering emergency mode", timeout=TIMEOUT)
        vm.expect(r"Control-D to continue", timeout=200)  # sulogin: "Press Enter for maintenance"
        vm.wait_quiet(quiet=1, timeout=30)
        vm.send("\n")
        vm.expect(r":/\S*# *$", timeout=200)  # the shell prompt (seen: ":/root# ")
        vm.wait_quiet(quiet=1, timeout=30)
        # the marker prefix is assembled in the guest, so the echo of the typed line is no marker
        vm.send("p=TPMSEAL; TSS2_LOG=all+none /usr/bin/tpmseal test-unlock --tpm2-device=auto /dev/vda > /tmp/o 2>&1;"
                ' echo "${p}PROBE: SHELL_RC=$?"; while read -r l; do echo "${p}PROBE: shell: $l"; done < /tmp/o;'
                " echo o > /proc/sysrq-trigger\n")
        return vm.wait()


def test_emergency_shell_before_measurement_gets_no_key(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                        tmp_path: Path) -> None:
    """An emergency shell reached after the unlock and before the measurement (here: emergency.target
    isolated; in life: a failed unit, a second volume that does not open, rd.break): dracut's emergency
    hook measures first, so the shell's TPM refuses the key."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = emergency_shell_attack(python_initramfs, image, vtpm, tmp_path / "emergency.log")
    assert result.time_to(r"tpmseal: .* unlocked with token 0") is not None, result.summary()
    assert result.time_to(r"tpmseal: measured .*PCR 15") is not None, result.summary()
    assert result.marker("SHELL_RC=5") is not None, result.summary()
    assert result.time_to(r"shell: .*PCR\(s\) 15 differ") is not None, result.summary()


def test_emergency_shell_old_module_gets_the_key(old_python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                 tmp_path: Path) -> None:
    """Control: without the emergency hook the shell's TPM releases the key (PCR 15 still zero)."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = emergency_shell_attack(old_python_initramfs, image, vtpm, tmp_path / "emergency-old.log")
    assert result.time_to(r"tpmseal: .* unlocked with token 0") is not None, result.summary()
    assert result.marker("SHELL_RC=0") is not None, result.summary()
