# SPDX-License-Identifier: LGPL-2.1-or-later
"""The boot measurement fails closed: whether the machine has a TPM is not judged by /dev/tpmrm0 alone,
and a missing or replaced node is replaced by one of our own (issue 16, attack 4)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tpmseal.boot.measure import boot_device, tpm_expected
from tpmseal.errors import TpmUnavailable

pytestmark = pytest.mark.unit

TPMRM = os.makedev(254, 0x10000)  # the numbers Debian's kernel gives tpmrm0
NULL = os.makedev(1, 3)


def fake_sysfs(root: Path, *, acpi: bool = False, rdev: int | None = None) -> Path:
    sysfs = root / "sys"
    (sysfs / "class").mkdir(parents=True)
    if acpi:
        (sysfs / "firmware" / "acpi" / "tables").mkdir(parents=True)
        (sysfs / "firmware" / "acpi" / "tables" / "TPM2").write_bytes(b"TPM2")
    if rdev is not None:
        (sysfs / "class" / "tpmrm" / "tpmrm0").mkdir(parents=True)
        (sysfs / "class" / "tpmrm" / "tpmrm0" / "dev").write_text(f"{os.major(rdev)}:{os.minor(rdev)}\n")
    return sysfs


def test_no_tpm_anywhere_is_no_tpm(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    assert tpm_expected(str(fake_sysfs(tmp_path)), str(tmp_path / "dev"), str(tmp_path / "none")) is None


def test_firmware_table_means_a_tpm_even_without_driver_or_node(tmp_path: Path) -> None:
    """The attack: unbind the driver / delete the node so the old unit's ConditionPathExists skipped it."""
    (tmp_path / "dev").mkdir()
    why = tpm_expected(str(fake_sysfs(tmp_path, acpi=True)), str(tmp_path / "dev"), str(tmp_path / "none"))
    assert why is not None and "ACPI" in why


def test_registered_driver_means_a_tpm_without_a_node(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    why = tpm_expected(str(fake_sysfs(tmp_path, rdev=TPMRM)), str(tmp_path / "dev"), str(tmp_path / "none"))
    assert why == "the kernel registered tpmrm0"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_missing_node_is_replaced_by_a_private_one_from_sysfs(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, rdev=TPMRM)
    (tmp_path / "dev").mkdir()
    private = tmp_path / "dev" / "tpmseal-tpmrm"
    assert boot_device(str(sysfs), str(tmp_path / "dev"), str(private), wait=0) == str(private)
    st = os.lstat(private)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == TPMRM and stat.S_IMODE(st.st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_node_that_is_another_device_is_not_used(tmp_path: Path) -> None:
    """/dev/tpmrm0 replaced by a node of another device (here /dev/null's numbers): not trusted."""
    sysfs = fake_sysfs(tmp_path, rdev=TPMRM)
    (tmp_path / "dev").mkdir()
    os.mknod(tmp_path / "dev" / "tpmrm0", 0o600 | stat.S_IFCHR, NULL)
    private = tmp_path / "run" / "tpmrm0"
    assert boot_device(str(sysfs), str(tmp_path / "dev"), str(private), wait=0) == str(private)
    assert os.lstat(private).st_rdev == TPMRM


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_the_right_node_is_used_as_it_is(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, rdev=TPMRM)
    (tmp_path / "dev").mkdir()
    os.mknod(tmp_path / "dev" / "tpmrm0", 0o600 | stat.S_IFCHR, TPMRM)
    private = tmp_path / "run" / "tpmrm0"
    assert boot_device(str(sysfs), str(tmp_path / "dev"), str(private), wait=0) == str(tmp_path / "dev" / "tpmrm0")
    assert not private.exists()


def test_no_device_within_the_wait_fails_and_says_so(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, acpi=True)
    (tmp_path / "dev").mkdir()
    t0 = time.monotonic()
    with pytest.raises(TpmUnavailable, match=r"within 0\.3s"):
        boot_device(str(sysfs), str(tmp_path / "dev"), str(tmp_path / "p"), wait=0.3)
    assert time.monotonic() - t0 >= 0.3


def test_unlock_that_used_the_tpm_makes_the_measurement_required(tmp_path: Path) -> None:
    """Every other trace of the TPM gone (no firmware table, driver unbound, no node): the unlock path's
    note that it talked to a TPM in this boot still makes the measurement required. Only in the
    initramfs: on a running system nothing is written."""
    from tpmseal.boot.measure import note_tpm_used

    sysfs, dev, marker = str(fake_sysfs(tmp_path)), str(tmp_path / "dev"), tmp_path / "run" / "tpm-used"
    note_tpm_used(str(marker), initrd_release=str(tmp_path / "initrd-release"))
    assert not marker.exists() and tpm_expected(sysfs, dev, str(marker)) is None
    (tmp_path / "initrd-release").touch()
    note_tpm_used(str(marker), initrd_release=str(tmp_path / "initrd-release"))
    assert tpm_expected(sysfs, dev, str(marker)) == "the unlock talked to a TPM in this boot"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_tpm_bound_again_as_tpmrm1_is_found(tmp_path: Path) -> None:
    """A driver unbound and bound again registers the chip under the next number (seen in the VM)."""
    sysfs = fake_sysfs(tmp_path)
    (sysfs / "class" / "tpmrm" / "tpmrm1").mkdir(parents=True)
    (sysfs / "class" / "tpmrm" / "tpmrm1" / "dev").write_text("254:65537\n")
    (tmp_path / "dev").mkdir()
    private = tmp_path / "run" / "tpmrm0"
    assert boot_device(str(sysfs), str(tmp_path / "dev"), str(private), wait=0) == str(private)
    assert os.lstat(private).st_rdev == os.makedev(254, 65537)
    os.mknod(tmp_path / "dev" / "tpmrm1", 0o600 | stat.S_IFCHR, os.makedev(254, 65537))
    assert boot_device(str(sysfs), str(tmp_path / "dev"), str(private), wait=0) == str(tmp_path / "dev" / "tpmrm1")
