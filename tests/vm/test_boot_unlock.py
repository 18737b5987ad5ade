# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal's boot path in a real VM: the dracut module unlocks from the vTPM, and when the TPM
refuses (PCRs changed, no TPM) the normal passphrase prompt still works and boot never hangs.

Enrollment happens on the host, against the same swtpm state the VM uses as its vTPM, with the
literal PCR 7 value the VM's firmware produces (read once per session from a probe boot). This runs
the real `tpmseal enroll` CLI on the host (the tool admins use), keeps the initramfs free of
enrollment code, and costs one boot per session instead of one per test. SeaBIOS measures the
same PCR 7 (only the separator, no Secure Boot) on every boot with this fixed qemu command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import harness as h
import pytest
from test_boot_harness import assert_unlocked
from vmdata import PASSPHRASE, PROBE_MODULE, PROJECT, TPMSEAL_MODULE, VOLUME_NAME, VOLUME_UUID

from tpmseal.testing.swtpm import serving

pytestmark = pytest.mark.vm

RunVm = Callable[..., h.BootResult]
Measure = Callable[[str, object], None]

SECOND_UUID = "7e5ea1ed-0000-4000-8000-00000000beef"
SECOND_NAME = "tpmsealtwo"
# the initramfs carries a keyfile crypttab for VOLUME_UUID: ignore it, name volumes on the command line
SYSTEMD_ARGS = f"rd.luks.crypttab=no rd.luks.name={VOLUME_UUID}={VOLUME_NAME} root=/dev/mapper/{VOLUME_NAME}"
PROMPT = r"Please enter passphrase for disk"


def host_enroll(state: Path, image: Path, pcr7: str, *extra: str) -> None:
    """`tpmseal enroll` on the host against the vTPM's state (swtpm in socket mode, then stopped)."""
    with serving(state) as tpm:
        keyfile = tpm.dir / "pass"
        keyfile.write_bytes(PASSPHRASE)
        p = subprocess.run(
            [sys.executable, "-m", "tpmseal", "enroll", str(image), f"--tpm2-device={tpm.tcti}",
             f"--tpm2-pcrs=7:sha256={pcr7}", "--unlock-key-file", str(keyfile), *extra],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
        )  # fmt: skip
        assert p.returncode == 0, p.stderr


def enrolled_image(tmp_path: Path, state: Path, pcr7: str, uuid: str = VOLUME_UUID, name: str = "disk") -> Path:
    image = h.make_luks_image(tmp_path / f"{name}.img", PASSPHRASE, uuid=uuid)
    host_enroll(state, image.path, pcr7)
    return image.path


def test_enrolled_volume_unlocks_unattended(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                            tmp_path: Path, run_vm: RunVm, vm_measure: Measure) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = run_vm("tpmseal-unattended", h.VmConfig(initrd=python_initramfs.path, disks=[image], tpm_state=vtpm,
                                                     cmdline=SYSTEMD_ARGS, kver=python_initramfs.kver))
    line = assert_unlocked(result)
    said = result.time_to(r"tpmseal: .* unlocked with token 0 \(tpmseal-tpm2\), keyslot 1")
    assert said is not None, result.summary()
    asked = result.time_to(PROMPT)
    vm_measure("boot.tpmseal.unlock_s", round(line.t, 2))
    if asked is not None:  # the console prompt appeared before our answer cancelled it
        vm_measure("boot.tpmseal.ask_to_unlock_s", round(line.t - asked, 2))


def test_pcr_change_falls_back_to_typed_passphrase(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                   tmp_path: Path) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    config = h.VmConfig(initrd=python_initramfs.path, disks=[image], tpm_state=vtpm,
                        cmdline=f"{SYSTEMD_ARGS} tpmsealprobe.mode=extendpcr7", kver=python_initramfs.kver)
    with h.Vm(config, tmp_path / "pcr-changed.log") as vm:
        vm.expect(r"tpmseal: .*PCR\(s\) 7 differ", timeout=400)
        vm.expect(PROMPT, timeout=300)
        vm.wait_quiet()
        vm.send(PASSPHRASE + b"\n")
        result = vm.wait()
    assert_unlocked(result)


def test_two_volumes_both_unlocked(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str, tmp_path: Path,
                                   run_vm: RunVm) -> None:
    first = enrolled_image(tmp_path, vtpm, vm_pcr7)
    second = enrolled_image(tmp_path, vtpm, vm_pcr7, uuid=SECOND_UUID, name="second")
    args = f"{SYSTEMD_ARGS} rd.luks.name={SECOND_UUID}={SECOND_NAME} tpmsealprobe.names={VOLUME_NAME},{SECOND_NAME}"
    result = run_vm("two-volumes", h.VmConfig(initrd=python_initramfs.path, disks=[first, second], tpm_state=vtpm,
                                              cmdline=args, kver=python_initramfs.kver))
    assert_unlocked(result, VOLUME_NAME)
    assert_unlocked(result, SECOND_NAME)


def test_no_tpm_attached_prompts_and_does_not_hang(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                   tmp_path: Path) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    config = h.VmConfig(initrd=python_initramfs.path, disks=[image], tpm_state=None, cmdline=SYSTEMD_ARGS,
                        kver=python_initramfs.kver)
    with h.Vm(config, tmp_path / "no-tpm.log") as vm:
        vm.expect(r"tpmseal: .*(no TPM|/dev/tpmrm0)", timeout=400)
        vm.expect(PROMPT, timeout=300)
        vm.wait_quiet()
        vm.send(PASSPHRASE + b"\n")
        result = vm.wait()
    assert_unlocked(result)


SHELL_NAME = f"luks-{VOLUME_UUID}"
SHELL_ARGS = f"rd.luks.crypttab=no rd.luks.uuid={VOLUME_UUID} root=/dev/mapper/{SHELL_NAME}"


def test_shell_flavour_unlocks_unattended(shell_tpmseal_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                          tmp_path: Path, run_vm: RunVm, vm_measure: Measure) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = run_vm("shell-unattended", h.VmConfig(initrd=shell_tpmseal_initramfs.path, disks=[image],
                                                   tpm_state=vtpm, cmdline=SHELL_ARGS,
                                                   kver=shell_tpmseal_initramfs.kver))
    line = assert_unlocked(result, SHELL_NAME)
    assert result.time_to(r"tpmseal: .* unlocked with token 0") is not None, result.summary()
    vm_measure("boot.tpmseal_shell.unlock_s", round(line.t, 2))


def test_shell_flavour_pcr_change_falls_back_to_prompt(shell_tpmseal_initramfs: h.Initramfs, vtpm: Path,
                                                       vm_pcr7: str, tmp_path: Path) -> None:
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    config = h.VmConfig(initrd=shell_tpmseal_initramfs.path, disks=[image], tpm_state=vtpm,
                        cmdline=f"{SHELL_ARGS} tpmsealprobe.mode=extendpcr7", kver=shell_tpmseal_initramfs.kver)
    with h.Vm(config, tmp_path / "shell-pcr-changed.log") as vm:
        vm.expect(r"tpmseal: .*PCR\(s\) 7 differ", timeout=400)
        vm.expect(r"Enter passphrase for", timeout=300)  # cryptsetup asking on the console (cryptroot-ask)
        vm.wait_quiet()
        vm.send(PASSPHRASE + b"\n")
        result = vm.wait()
    assert_unlocked(result, SHELL_NAME)


def test_tpmseal_written_systemd_tpm2_token_opens_with_stock_systemd(
    systemd_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str, tmp_path: Path, run_vm: RunVm
) -> None:
    """Interop: `tpmseal enroll --token-type=systemd-tpm2` → stock systemd-cryptsetup (no tpmseal in the
    initramfs) unseals it from the vTPM and unlocks the volume unattended."""
    image = h.make_luks_image(tmp_path / "disk.img", PASSPHRASE, uuid=VOLUME_UUID)
    host_enroll(vtpm, image.path, vm_pcr7, "--token-type=systemd-tpm2")
    assert "systemd-tpm2" in h.luks_token_types(image.path)
    args = f"{SYSTEMD_ARGS} rd.luks.options=tpm2-device=auto,headless=true"
    result = run_vm("stock-systemd", h.VmConfig(initrd=systemd_initramfs.path, disks=[image.path], tpm_state=vtpm,
                                                cmdline=args, kver=systemd_initramfs.kver))
    assert_unlocked(result)


ATTACKER_PASSPHRASE = b"the attacker knows this one"


def swapped_volume(tmp_path: Path, state: Path, pcr7: str, *enroll_args: str) -> tuple[Path, Path]:
    """The victim's real volume (enrolled), and the attacker's volume: same UUID as the victim's root,
    a passphrase the attacker knows, and a copy of the victim's token."""
    victim = h.make_luks_image(tmp_path / "victim.img", PASSPHRASE, uuid=SECOND_UUID)
    host_enroll(state, victim.path, pcr7, *enroll_args)
    attacker = h.make_luks_image(tmp_path / "attacker.img", ATTACKER_PASSPHRASE, uuid=VOLUME_UUID)
    [token] = [t for t in h.luks_dump(victim.path)["tokens"].values() if t["type"] == "tpmseal-tpm2"]  # type: ignore[union-attr]
    token["keyslots"] = ["0"]
    subprocess.run(["cryptsetup", "token", "import", "--json-file", "-", str(attacker.path)],
                   input=__import__("json").dumps(token).encode(), check=True, capture_output=True)
    return attacker.path, victim.path


def boot_swapped(python_initramfs: h.Initramfs, vtpm: Path, disks: tuple[Path, Path], log: Path) -> h.BootResult:
    config = h.VmConfig(initrd=python_initramfs.path, disks=list(disks), tpm_state=vtpm,
                        cmdline=f"{SYSTEMD_ARGS} tpmsealprobe.mode=attack tpmsealprobe.victim=/dev/vdb",
                        kver=python_initramfs.kver)
    with h.Vm(config, log) as vm:
        # the copied token unseals (PCRs are good) but its key does not open the attacker's keyslot,
        # so the prompt appears; the attacker types their own passphrase
        vm.expect(r"tpmseal: .*does not open its keyslot", timeout=400)
        vm.expect(PROMPT, timeout=300)
        vm.wait_quiet()
        vm.send(ATTACKER_PASSPHRASE + b"\n")
        return vm.wait()


def test_swapped_volume_attack_is_refused_by_pcr15_binding(python_initramfs: h.Initramfs, vtpm: Path,
                                                           vm_pcr7: str, tmp_path: Path) -> None:
    disks = swapped_volume(tmp_path, vtpm, vm_pcr7)
    result = boot_swapped(python_initramfs, vtpm, disks, tmp_path / "attack-bound.log")
    assert_unlocked(result)  # the attacker's system boots...
    assert result.time_to(r"tpmseal: measured .*PCR 15") is not None, result.summary()
    assert result.marker("ATTACK_REFUSED") is not None, result.summary()  # ...but gets no key
    assert result.time_to(r"attack: .*PCR\(s\) 15 differ") is not None, result.summary()
    assert result.marker("ATTACK_UNSEALED") is None


def test_swapped_volume_attack_succeeds_without_binding(python_initramfs: h.Initramfs, vtpm: Path,
                                                        vm_pcr7: str, tmp_path: Path) -> None:
    """The control: the same attack against a token enrolled with --no-volume-binding works, so the
    binding is what stops it above."""
    disks = swapped_volume(tmp_path, vtpm, vm_pcr7, "--no-volume-binding")
    result = boot_swapped(python_initramfs, vtpm, disks, tmp_path / "attack-unbound.log")
    assert_unlocked(result)
    assert result.marker("ATTACK_UNSEALED") is not None, result.summary()


def test_config_generated_crypttab_and_cmdline_boot(tpmseal_python: Path, vm_cache: Path, vtpm: Path, vm_pcr7: str,
                                                    systemd_initramfs: h.Initramfs, tmp_path: Path,
                                                    run_vm: RunVm) -> None:
    """`tpmseal config apply` output, not hand-written lines, is what boots: its crypttab goes into the
    initramfs and the rd.luks.* words of its kernel command line onto the VM's command line."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    root = tmp_path / "root"
    (root / "etc" / "kernel").mkdir(parents=True)
    (root / "etc" / "crypttab").write_text("# the admin's own comment stays\n")
    # the admin listed the root volume once; config adds the name and options the boot path needs
    (root / "etc" / "kernel" / "cmdline").write_text(f"quiet rd.luks.uuid={VOLUME_UUID}\n")
    subprocess.run([sys.executable, "-m", "tpmseal", "config", "apply", "--root", str(root), str(image)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(PROJECT / "src")})
    crypttab = (root / "etc" / "crypttab").read_text()
    assert crypttab.startswith("# the admin's own comment stays\n")
    [entry] = [line for line in crypttab.splitlines() if line and not line.startswith("#")]
    name = entry.split()[0]
    words = [w for w in (root / "etc" / "kernel" / "cmdline").read_text().split() if w.startswith("rd.luks.")]
    assert f"rd.luks.name={VOLUME_UUID}={name}" in words
    spec = h.InitramfsSpec(flavour=h.Flavour.SYSTEMD, module_dirs=(PROBE_MODULE, TPMSEAL_MODULE),
                           includes=((root / "etc" / "crypttab", "/etc/crypttab"),), kver=systemd_initramfs.kver,
                           env=(("TPMSEAL_PYTHON", str(tpmseal_python)),))
    initrd = h.build_initramfs(spec, vm_cache)
    args = " ".join(words) + f" root=/dev/mapper/{name}"
    result = run_vm("config-generated", h.VmConfig(initrd=initrd.path, disks=[image], tpm_state=vtpm, cmdline=args,
                                                   kver=initrd.kver))
    assert_unlocked(result, name)
    assert result.time_to(r"tpmseal: .* unlocked with token 0") is not None, result.summary()


def test_doctor_inside_the_booted_initramfs_reports_all_ok(python_initramfs: h.Initramfs, vtpm: Path, vm_pcr7: str,
                                                           tmp_path: Path, run_vm: RunVm) -> None:
    """`tpmseal doctor` run in the initramfs after the unlock (PCR 15 already extended there, which a
    bound token expects): every check ok, exit 0."""
    image = enrolled_image(tmp_path, vtpm, vm_pcr7)
    result = run_vm("doctor", h.VmConfig(initrd=python_initramfs.path, disks=[image], tpm_state=vtpm,
                                         cmdline=f"{SYSTEMD_ARGS} tpmsealprobe.mode=doctor",
                                         kver=python_initramfs.kver))
    assert_unlocked(result)
    lines = [m.text for m in result.markers if m.text.startswith("doctor: ")]
    assert any("token" in line for line in lines), result.summary()
    assert result.marker("DOCTOR_EXIT rc=0") is not None, "\n".join(lines) or result.summary()
