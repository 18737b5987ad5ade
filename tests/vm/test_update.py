# SPDX-License-Identifier: LGPL-2.1-or-later
"""Updates without lockout, in a real UEFI (OVMF) VM: a volume enrolled under a signed PCR 9 policy
unlocks; an initramfs + command-line update that went through the kernel hook (tpmseal reseal
--next-boot) unlocks unattended after the "reboot"; one that did not gets the passphrase prompt.

Everything on the host happens against the vTPM's state (swtpm in socket mode, then stopped), like
test_boot_unlock.host_enroll. The PCR 9 values are predicted on the host from the files and the event
log recorded from an OVMF boot (tests/unit/fixtures/eventlog): nothing is read back from the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import harness as h
import pytest
from test_boot_harness import assert_unlocked
from vmdata import PASSPHRASE, PROJECT, VOLUME_NAME, VOLUME_UUID

from tpmseal.testing.swtpm import serving

pytestmark = pytest.mark.vm

Measure = Callable[[str, object], None]
EVENTLOG = PROJECT / "tests" / "unit" / "fixtures" / "eventlog" / "ovmf-a.bin"
HOOK = PROJECT / "contrib" / "kernel-postinst.d" / "zz-tpmseal"
ARGS_A = f"rd.luks.crypttab=no rd.luks.name={VOLUME_UUID}={VOLUME_NAME} root=/dev/mapper/{VOLUME_NAME}"
ARGS_B = ARGS_A + " tpmseal.test=updated"
PROMPT = r"Please enter passphrase for disk"
ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "TSS2_LOG": "all+none"}


@pytest.fixture(scope="session")
def update_initramfs(python_initramfs: h.Initramfs) -> h.Initramfs:
    """The initramfs with dracut/90tpmseal exactly as shipped (its import closure must hold
    tpmseal.update.signed, which unlock.py imports lazily for authorize seals), booted with OVMF."""
    if not h.ovmf_available():
        pytest.skip("OVMF (apt ovmf) is not installed")
    return python_initramfs


@contextlib.contextmanager
def host_swtpm(state: Path) -> Iterator[str]:
    """The vTPM's state served on a socket on the host; yields the --tpm2-device string."""
    with serving(state) as tpm:
        yield tpm.tcti


def tpmseal(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "tpmseal", *args], capture_output=True, text=True, env=ENV)
    if check is not None:
        assert p.returncode == check, f"tpmseal {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def measured_cmdline(config: h.VmConfig) -> str:
    """What the EFI stub measures under OVMF -kernel: the -append string plus OVMF's ` initrd=initrd`."""
    return config.full_cmdline() + " initrd=initrd"


def predicted_pcr9(initrd: Path, cmdline: str) -> str:
    out = tpmseal("predict", "--eventlog", str(EVENTLOG), "--initrd", str(initrd), "--cmdline", cmdline, "--json")
    pcr = json.loads(out.stdout)["pcrs"]["9"]
    assert pcr["status"] == "predicted"
    return str(pcr["value"])


def check_reboot(image: Path, kernel: Path, initrd: Path, cmdline: str) -> tuple[int, str]:
    p = tpmseal("check-reboot", str(image), "--eventlog", str(EVENTLOG), "--kernel", str(kernel),
                "--initrd", str(initrd), "--cmdline", cmdline, check=None)  # fmt: skip
    return p.returncode, p.stdout


def test_update_through_hook_unlocks_and_unhooked_update_prompts(
    update_initramfs: h.Initramfs, vtpm: Path, tmp_path: Path, vm_measure: Measure
) -> None:
    from tpmseal.luks.volume import Volume
    from tpmseal.secret import Secret
    from tpmseal.tpm.pcrs import parse_pcrs
    from tpmseal.update.signed import enroll_signed

    kver = update_initramfs.kver
    initrd_a = update_initramfs.path
    image = h.make_luks_image(tmp_path / "disk.img", PASSPHRASE, uuid=VOLUME_UUID).path
    key = tmp_path / "etc-tpmseal" / "policy-key.pem"

    def config(initrd: Path, args: str, name: str) -> h.VmConfig:
        return h.VmConfig(initrd=initrd, disks=[image], tpm_state=vtpm, cmdline=args, kver=kver, timeout=300,
                          ovmf_vars=h.ovmf_vars_copy(tmp_path / f"vars-{name}.fd"))  # fmt: skip

    cfg_a = config(initrd_a, ARGS_A, "a")
    kernel = cfg_a.kernel()
    # 1. enroll on the host: signed policy over PCR 9 (+ PCR 15 = zeros), approved for the predicted state
    pcr9_a = predicted_pcr9(initrd_a, measured_cmdline(cfg_a))
    t0 = time.monotonic()
    with host_swtpm(vtpm) as dev, Secret.take(bytearray(PASSPHRASE)) as unlock:
        result = enroll_signed(Volume(str(image)), unlock, dev, parse_pcrs(f"9:sha256={pcr9_a}"), key_path=str(key))
    vm_measure("update.enroll_signed_s", round(time.monotonic() - t0, 2))
    assert result.pcrs == "9+15" and result.verified == "key-only"

    # 2. boot the enrolled state: unlocks unattended
    boot_a = h.boot(cfg_a, tmp_path / "boot-a.log")
    line = assert_unlocked(boot_a)
    assert boot_a.time_to(r"tpmseal: .* unlocked with token 0") is not None, boot_a.summary()
    vm_measure("update.boot_enrolled_unlock_s", round(line.t, 1))

    # 3. "the update": a new initramfs and command line, approved by the Debian kernel hook on the host
    initrd_b = h.append_to_initramfs(initrd_a, tmp_path / "initrd-b.img", {"etc/tpmseal-update": b"b\n"})
    cfg_b = config(initrd_b, ARGS_B, "b")
    code, out = check_reboot(image, kernel, initrd_b, measured_cmdline(cfg_b))
    assert code == 5 and "will not unlock" in out, out  # not approved yet
    t0 = time.monotonic()
    with host_swtpm(vtpm) as dev:
        hook = subprocess.run(
            ["sh", str(HOOK), kver, str(kernel)], capture_output=True, text=True,
            env={**ENV, "TPMSEAL": f"{sys.executable} -m tpmseal", "TPMSEAL_INITRD": str(initrd_b),
                 "TPMSEAL_CMDLINE": measured_cmdline(cfg_b),
                 "TPMSEAL_RESEAL_OPTIONS": f"{image} --tpm2-device={dev} --eventlog={EVENTLOG} --private-key={key}"},
        )  # fmt: skip
    vm_measure("update.hook_reseal_s", round(time.monotonic() - t0, 2))
    assert hook.returncode == 0 and "seal 0 'enrolled': added" in hook.stdout, hook.stdout + hook.stderr
    code, out = check_reboot(image, kernel, initrd_b, measured_cmdline(cfg_b))
    assert code == 0 and "will unlock (approved policy 'next-boot')" in out, out

    # 4. reboot into the updated state: unlocks unattended with the next-boot approval
    boot_b = h.boot(cfg_b, tmp_path / "boot-b.log")
    line = assert_unlocked(boot_b)
    assert boot_b.time_to(r"tpmseal: .* unlocked with token 0") is not None, boot_b.summary()
    vm_measure("update.boot_updated_unlock_s", round(line.t, 1))

    # 5. an initramfs changed behind the hook's back: check-reboot says no, the boot prompts
    initrd_c = h.append_to_initramfs(initrd_a, tmp_path / "initrd-c.img", {"etc/tpmseal-unhooked": b"c\n"})
    cfg_c = config(initrd_c, ARGS_B, "c")
    code, out = check_reboot(image, kernel, initrd_c, measured_cmdline(cfg_c))
    assert code == 5 and "will not unlock" in out and "PCR(s) 9 differ" in out, out
    with h.Vm(cfg_c, tmp_path / "boot-c.log") as vm:
        vm.expect(r"tpmseal: .*no approved policy matches", timeout=280)
        vm.expect(PROMPT, timeout=120)
        vm.wait_quiet()
        vm.send(PASSPHRASE + b"\n")
        boot_c = vm.wait()
    assert_unlocked(boot_c)
    assert boot_c.time_to(r"tpmseal: .* unlocked with token 0") is None, boot_c.summary()
    vm_measure("update.boots_wall_s", round(boot_a.wall + boot_b.wall + boot_c.wall, 1))
