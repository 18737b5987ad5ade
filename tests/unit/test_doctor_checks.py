# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pure parts of ``tpm list``, ``tpm info`` and ``doctor``: sysfs parsing, advisory matching, and the
checks that judge files under a root or facts handed to them (no TPM, no cryptsetup)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpmseal.config.discover import LuksVolume
from tpmseal.doctor import EXIT_FAIL, EXIT_OK, EXIT_WARN, Report
from tpmseal.doctor import checks as c
from tpmseal.tpm.info import (
    MANUFACTURER_AMD,
    MANUFACTURER_INFINEON,
    Lockout,
    SrkInfo,
    TpmInfo,
    advisories,
    firmware_dotted,
    list_tpms,
    roca_affected,
)

pytestmark = pytest.mark.unit

UUID = "0f5e1d2c-3b4a-4958-8776-655443322110"


def fake_sysfs(root: Path) -> Path:
    """/sys as the kernel lays it out for a CRB TPM 2.0 with resource manager, and a TIS TPM 1.2 without."""
    sysfs = root / "sys"
    drivers = sysfs / "bus/platform/drivers"
    for drv in ("tpm_crb", "tpm_tis"):
        (drivers / drv).mkdir(parents=True)
    for n, drv, major, rm in ((0, "tpm_crb", "2", True), (1, "tpm_tis", "1", False)):
        dev = sysfs / f"devices/platform/MSFT0101:0{n}"
        (dev / f"tpm/tpm{n}").mkdir(parents=True)
        (dev / "driver").symlink_to(os.path.relpath(drivers / drv, dev))
        (dev / f"tpm/tpm{n}/device").symlink_to("../..")
        (dev / f"tpm/tpm{n}/tpm_version_major").write_text(major + "\n")
        (sysfs / "class/tpm").mkdir(parents=True, exist_ok=True)
        (sysfs / f"class/tpm/tpm{n}").symlink_to(os.path.relpath(dev / f"tpm/tpm{n}", sysfs / "class/tpm"))
        if rm:
            (dev / f"tpmrm/tpmrm{n}").mkdir(parents=True)
            (sysfs / "class/tpmrm").mkdir(parents=True, exist_ok=True)
            (sysfs / f"class/tpmrm/tpmrm{n}").symlink_to(
                os.path.relpath(dev / f"tpmrm/tpmrm{n}", sysfs / "class/tpmrm")
            )
    (sysfs / "devices/platform/MSFT0101:00/description").write_text("TPM 2.0 Device\n")
    return sysfs


def test_list_tpms_reads_sysfs(tmp_path: Path) -> None:
    tpms = list_tpms(str(fake_sysfs(tmp_path)), "/dev")
    assert [(t.device, t.rm_device, t.driver, t.version_major, t.description) for t in tpms] == [
        ("/dev/tpm0", "/dev/tpmrm0", "tpm_crb", 2, "TPM 2.0 Device"),
        ("/dev/tpm1", None, "tpm_tis", 1, None),
    ]


def test_list_tpms_without_sysfs_class_lists_device_nodes(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for n in ("tpm0", "tpmrm0", "tty0"):
        (dev / n).write_text("")
    tpms = list_tpms(str(tmp_path / "no-sys"), str(dev))
    assert [(t.device, t.rm_device, t.driver) for t in tpms] == [(f"{dev}/tpm0", f"{dev}/tpmrm0", None)]
    assert list_tpms(str(tmp_path / "no-sys"), str(tmp_path / "no-dev")) == []


def test_tpm_list_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tpmseal.cli import main

    assert main(["tpm", "list", "--sysfs", str(fake_sysfs(tmp_path)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tpms"][0]["rm_device"] == "/dev/tpmrm0" and out["tpms"][0]["driver"] == "tpm_crb"
    assert main(["tpm", "list", "--sysfs", str(tmp_path / "sys")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].split() == ["/dev/tpm0", "/dev/tpmrm0", "2.0", "tpm_crb"]


@pytest.mark.parametrize(
    ("major", "minor", "affected"),
    [
        (4, 33, True), (4, 34, False), (4, 40, True), (4, 42, True), (4, 43, False),
        (5, 0, True), (5, 61, True), (5, 62, False), (6, 42, True), (6, 43, False),
        (7, 61, True), (7, 62, False), (133, 32, True), (133, 33, False), (15, 23, False),
    ],
)  # fmt: skip
def test_roca_firmware_ranges(major: int, minor: int, affected: bool) -> None:
    assert roca_affected(major << 16 | minor) is affected


def test_advisories_by_manufacturer() -> None:
    roca = advisories(MANUFACTURER_INFINEON, 5 << 16 | 61, 0, "rsa-2048")
    assert [a.id for a in roca] == ["CVE-2017-15361"] and roca[0].severity == "warn"
    assert "SRK at 0x81000001 is an RSA key" in roca[0].summary
    assert "SRK" not in advisories(MANUFACTURER_INFINEON, 5 << 16 | 61, 0, "ecc-nist_p256")[0].summary
    assert advisories(MANUFACTURER_INFINEON, 5 << 16 | 62, 0) == []
    amd = advisories(MANUFACTURER_AMD, 3 << 16 | 87, 0)
    assert len(amd) == 1 and amd[0].severity == "info" and "faulTPM" in amd[0].id
    assert all(a.reference == "docs/tpm-advisories.md" for a in roca + amd)
    assert advisories(0x49424D00, 0x20191023, 0x163636) == []  # swtpm (IBM)


def test_firmware_version_is_four_16_bit_parts() -> None:
    assert firmware_dotted(0x0005003E, 0x0C360000) == "5.62.3126.0"


def tpm_info(**kw: object) -> TpmInfo:
    base: dict[str, object] = {
        "device": "auto", "manufacturer_id": "0x414d4400", "manufacturer": "AMD", "vendor_string": "AMD",
        "vendor_tpm_type": 0, "firmware_version": "3.87.0.5", "firmware_raw": ["0x00030057", "0x00000005"],
        "family": "2.0", "spec_level": 0, "spec_revision": "1.38", "spec_date": "2019, day 1",
        "banks": ["sha256"], "banks_implemented": ["sha1", "sha256"], "algorithms": [], "ecc_curves": [],
        "supports": {"ecc-p256": True, "rsa-2048": True, "aes-128-cfb": True, "sha256": True}, "pcrs": {},
        "lockout": Lockout(0, 32, 7200, 86400, False, True), "persistent_handles": [],
        "srk": SrkInfo("0x81000001", False, False),
    }  # fmt: skip
    base.update(kw)
    return TpmInfo(**base)  # type: ignore[arg-type]


def test_check_tpm_judges_banks_lockout_and_advisories() -> None:
    ok = c.check_tpm(tpm_info(), None)
    assert [x.status for x in ok] == ["ok"]
    amd = c.check_tpm(tpm_info(advisories=advisories(MANUFACTURER_AMD, 0, 0)), None)
    assert amd[-1].status == "warn" and "(informational)" in amd[-1].message
    assert "docs/tpm-advisories.md" in amd[-1].hint
    locked = c.check_tpm(tpm_info(lockout=Lockout(32, 32, 7200, 86400, True, True)), None)
    assert [x.check for x in locked if x.status == "fail"] == ["tpm-lockout"]
    no256 = c.check_tpm(tpm_info(banks=["sha1"]), None)
    assert [x.check for x in no256 if x.status == "fail"] == ["tpm-banks"]
    absent = c.check_tpm(None, "no TPM found")
    assert absent[0].status == "fail" and "no TPM found" in absent[0].message


def test_check_srk_without_tokens_only_warns() -> None:
    assert [x.status for x in c.check_srk(tpm_info(), [])] == ["warn"]
    bad = tpm_info(srk=SrkInfo("0x81000001", True, False, "000b00", "rsa-2048", "not a storage key"))
    assert c.check_srk(bad, [])[0].status == "fail"


def test_names_volume_on_the_command_line() -> None:
    assert c.names_volume(f"ro rd.luks.uuid={UUID} quiet", UUID)
    assert c.names_volume(f"rd.luks.uuid=luks-{UUID.upper()}", UUID)
    assert c.names_volume(f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX rd.luks.name={UUID}=root"', UUID)
    assert not c.names_volume(f"rd.luks.options={UUID}=discard", UUID)
    assert not c.names_volume("rd.luks.uuid=11111111-2222-3333-4444-555555555555", UUID)


def test_check_cmdline_warns_only_for_boot_volumes(tmp_path: Path) -> None:
    data = LuksVolume("/dev/sdb1", UUID)
    assert c.check_cmdline(str(tmp_path), data, []).status == "ok"
    boot = LuksVolume("/dev/sda2", UUID, boot=True)
    assert c.check_cmdline(str(tmp_path), boot, []).status == "warn"
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text(f"root=/dev/mapper/root rd.luks.name={UUID}=root\n")
    r = c.check_cmdline(str(tmp_path), boot)
    assert r.status == "ok" and "/etc/kernel/cmdline" in r.message


def test_check_crypttab_matches_device_links(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/crypttab").write_text("home /dev/disk/by-id/ata-X-part2 none luks\n")
    vol = LuksVolume("/dev/sda2", UUID, links=["/dev/disk/by-id/ata-X-part2"])
    r = c.check_crypttab(str(tmp_path), vol)
    assert r.status == "ok" and "admin's own" in r.message
    assert c.check_crypttab(str(tmp_path), LuksVolume("/dev/sdc1", UUID)).status == "warn"


def test_masked_credd_socket(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/tpmseal-credd.socket").symlink_to("/dev/null")
    r = c.check_credd_socket(str(tmp_path))
    assert r.status == "warn" and "masked" in r.message


def test_template_unit_instance_exists(tmp_path: Path) -> None:
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/getty@.service").write_text("")
    assert c.unit_exists(str(tmp_path), "getty@tty1.service") == "/lib/systemd/system/getty@.service"
    assert c.unit_exists(str(tmp_path), "other.service") is None


def test_exit_code_is_the_worst_status() -> None:
    assert Report().exit_code == EXIT_OK
    assert Report([c.Check("a", "ok", ""), c.Check("b", "warn", "")]).exit_code == EXIT_WARN
    assert Report([c.Check("a", "fail", ""), c.Check("b", "warn", "")]).exit_code == EXIT_FAIL
    assert c.Check("srk", "fail", "gone", subject="x").line() == "fail  srk x: gone"


def test_inside_the_initramfs_the_module_check_is_about_itself(tmp_path) -> None:
    from tpmseal.doctor.checks import OK, check_running_initramfs, inside_initramfs

    assert not inside_initramfs(str(tmp_path))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "initrd-release").write_text("NAME=dracut\n")
    assert inside_initramfs(str(tmp_path))
    c = check_running_initramfs("9.9")
    assert c.status == OK and "9.9" in c.message
