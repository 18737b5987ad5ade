# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal tpm info`` and ``tpmseal doctor`` against swtpm and LUKS2 image files.

Tests that move PCRs use their own swtpm (``other_swtpm``): PCR 15 and PCR 7 cannot be reset. What the host
cannot provide is stood in for by a ``--root`` tree built here: its /etc/crypttab, kernel command line and
systemd units are fixtures. The initramfs check runs the real ``lsinitrd`` on a tiny real cpio archive that
holds only the file the check looks for (a dracut build takes ~45 s); the VM tier builds real ones.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import Image, Swtpm, luks_dump, need, run_cli

from tpmseal import __version__

pytestmark = pytest.mark.tpm


def enroll(image: Image, tpm: Swtpm, *extra: str) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={tpm.tcti}", "--unlock-key-file", str(image.keyfile), *extra)


def info(tpm: Swtpm) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_cli("tpm", "info", f"--tpm2-device={tpm.tcti}", "--json").stdout)
    return out


def make_initrd(path: Path, version: str | None) -> Path:
    """A real (uncompressed, newc) cpio archive with tpmseal's __init__.py, as the dracut module lays it out."""
    need("cpio", "lsinitrd")
    tree = path.parent / f"{path.name}.tree"
    pkg = tree / "usr/lib/tpmseal/site/tpmseal"
    pkg.mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/true").write_text("")
    if version is not None:
        (pkg / "__init__.py").write_text(f'"""tpmseal."""\n\n__version__ = "{version}"\n')
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with open(path, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input="\n".join(files).encode(), cwd=tree,
                       stdout=out, check=True)  # fmt: skip
    return path


def good_root(tmp_path: Path, image: Image) -> Path:
    """A system tree where everything the doctor looks at is in order for ``image``."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    u = subprocess.run(["cryptsetup", "luksUUID", image.dev], capture_output=True, text=True, check=True).stdout.strip()
    (root / "etc/crypttab").write_text(
        "# the admin's line\nswap /dev/sda3 /dev/urandom swap\n"
        "# tpmseal: managed entry, rewritten by 'tpmseal config apply' (see tpmseal-config(8))\n"
        f"data UUID={u} none luks,discard\n"
    )
    return root


def doctor(image: Image, tpm: Swtpm, root: Path, initrd: Path | None, check: int | None) -> dict[str, Any]:
    args = ["doctor", image.dev, f"--tpm2-device={tpm.tcti}", f"--root={root}", "--json"]
    if initrd is not None:
        args.append(f"--initrd={initrd}")
    p = run_cli(*args, check=check)
    out: dict[str, Any] = json.loads(p.stdout)
    assert out["exit_code"] == p.returncode
    return out


def by_check(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["check"] == name]


def status(report: dict[str, Any], name: str) -> str:
    found = by_check(report, name)
    assert found, f"no {name} check in {report}"
    order = {"ok": 0, "warn": 1, "fail": 2}
    return max((c["status"] for c in found), key=lambda s: order[s])


# --- tpm info ------------------------------------------------------------------------------------------


def test_tpm_info_reports_swtpm_and_detects_the_srk_after_enroll(image: Image, other_swtpm: Swtpm) -> None:
    before = info(other_swtpm)
    assert before["manufacturer"] == "IBM" and before["manufacturer_id"] == "0x49424d00"
    assert before["family"] == "2.0" and before["vendor_string"].startswith("SW")
    assert before["banks"] == ["sha256"]  # swtpm_setup allocates only sha256
    assert {"sha1", "sha256"} <= set(before["banks_implemented"])
    assert before["supports"] == {"ecc-p256": True, "rsa-2048": True, "aes-128-cfb": True, "sha256": True}
    assert "nist_p256" in before["ecc_curves"]
    assert before["pcrs"]["sha256"]["7"] == other_swtpm.pcr(7).hex()
    assert before["pcrs"]["sha256"]["15"] == "00" * 32
    assert before["lockout"] == {
        "failed_tries": 0, "max_tries": 3, "recovery_time": 1000, "lockout_recovery": 1000,
        "in_lockout": False, "lockout_auth_set": False,
    }  # fmt: skip
    assert before["srk"]["present"] is False and "0x81000001" not in before["persistent_handles"]
    assert before["advisories"] == []

    enroll(image, other_swtpm)
    after = info(other_swtpm)
    tokens: dict[str, Any] = luks_dump(image.path)["tokens"]  # type: ignore[assignment]
    token = next(t for t in tokens.values() if t["type"] == "tpmseal-tpm2")
    assert after["srk"] == {
        "handle": "0x81000001", "present": True, "usable": True, "name": token["srk"]["name"],
        "algorithm": "ecc-nist_p256", "problem": None,
    }  # fmt: skip
    assert "0x81000001" in after["persistent_handles"]
    assert other_swtpm.loaded_handles() == []  # GetCapability, TestParms, ReadPublic: nothing left loaded

    text = run_cli("tpm", "info", f"--tpm2-device={other_swtpm.tcti}").stdout
    assert "IBM (0x49424d00)" in text and "ecc-nist_p256 storage key" in text and " 7: " in text


def test_tpm_info_reads_the_lockout_parameters(other_swtpm: Swtpm) -> None:
    other_swtpm.tool("tpm2_dictionarylockout", "--setup-parameters", "--max-tries=7", "--recovery-time=120",
                     "--lockout-recovery-time=300")  # fmt: skip
    lo = info(other_swtpm)["lockout"]
    assert (lo["max_tries"], lo["recovery_time"], lo["lockout_recovery"]) == (7, 120, 300)


def test_tpm_info_without_a_tpm_exits_4(tmp_path: Path) -> None:
    p = run_cli("tpm", "info", f"--tpm2-device={tmp_path}/nothing", check=4)
    assert "tpmseal: error:" in p.stderr


def test_tpm_info_leaves_the_session_tpm_clean(swtpm: Swtpm, no_leaks: None) -> None:
    assert info(swtpm)["manufacturer"] == "IBM"


# --- doctor: the whole picture -------------------------------------------------------------------------


def test_doctor_all_ok_exits_0(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm)
    root = good_root(tmp_path, image)
    rep = doctor(image, other_swtpm, root, make_initrd(tmp_path / "initrd.img", __version__), check=0)
    assert rep["status"] == "ok"
    for name in ("tpm", "srk", "srk-match", "token-unseal", "token-next-boot", "way-in", "volume-binding",
                 "pcr-binding", "crypttab", "cmdline", "initramfs", "credd-socket", "credentials"):  # fmt: skip
        assert status(rep, name) == "ok", name
    assert "opens keyslot 1" in by_check(rep, "token-unseal")[0]["message"]
    assert other_swtpm.loaded_handles() == []
    text = run_cli("doctor", image.dev, f"--tpm2-device={other_swtpm.tcti}", f"--root={root}",
                   f"--initrd={tmp_path / 'initrd.img'}").stdout  # fmt: skip
    assert text.splitlines()[-1].endswith("0 warning(s), 0 failure(s)")
    assert any(line.startswith("ok    token-unseal") for line in text.splitlines())


def test_doctor_pcr15_extended_is_expected(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm)
    run_cli("measure-volumes", f"--tpm2-device={other_swtpm.tcti}")  # what the initramfs does at the end of unlock
    rep = doctor(image, other_swtpm, good_root(tmp_path, image), make_initrd(tmp_path / "i.img", __version__), 0)
    nb = by_check(rep, "token-next-boot")[0]
    assert nb["status"] == "ok" and nb["message"] == "will unseal at next boot (PCR 15 resets)"
    now = by_check(rep, "token-unseal")[0]
    assert now["status"] == "ok" and "volume binding" in now["message"]


def test_doctor_changed_pcr_fails_now_and_after_reboot(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm)
    other_swtpm.extend(15, b"volumes of this boot")
    other_swtpm.extend(7, b"a new boot loader")
    rep = doctor(image, other_swtpm, good_root(tmp_path, image), make_initrd(tmp_path / "i.img", __version__), 2)
    for name in ("token-unseal", "token-next-boot"):
        c = by_check(rep, name)[0]
        assert c["status"] == "fail" and "PCR(s) 7 differ" in c["message"] and "15" not in c["message"], c
        assert "--replace" in c["hint"]


def test_doctor_pin_token_checks_the_policy_only_and_sees_failed_tries(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--unlock-key-file", str(image.keyfile),
            "--tpm2-with-pin", stdin=b"1234\n")  # fmt: skip
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", stdin=b"9999\n", check=6)
    rep = doctor(image, other_swtpm, good_root(tmp_path, image), make_initrd(tmp_path / "i.img", __version__), 1)
    c = by_check(rep, "token-unseal")[0]
    assert c["status"] == "ok" and "PIN token" in c["message"]
    lo = by_check(rep, "tpm-lockout")[0]
    assert lo["status"] == "warn" and "1 of 3 failed tries" in lo["message"]
    assert info(other_swtpm)["lockout"]["failed_tries"] == 1  # the doctor itself tried no PIN
    other_swtpm.clear_lockout()


def test_doctor_on_another_tpm_fails_the_srk_match(image: Image, other_swtpm: Swtpm, swtpm: Swtpm,
                                                    tmp_path: Path, no_leaks: None) -> None:  # fmt: skip
    enroll(image, other_swtpm)
    rep = doctor(image, swtpm, good_root(tmp_path, image), make_initrd(tmp_path / "i.img", __version__), 2)
    assert status(rep, "srk-match") == "fail"
    assert status(rep, "token-unseal") == "fail"


def test_doctor_without_tpm_fails(image: Image, tmp_path: Path) -> None:
    p = run_cli("doctor", image.dev, f"--tpm2-device={tmp_path}/none", f"--root={tmp_path}", "--json", check=2)
    rep = json.loads(p.stdout)
    assert by_check(rep, "tpm")[0]["status"] == "fail"


def test_doctor_warns_tpm_only_and_unbound_tokens(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm, "--no-volume-binding")
    run_cli("wipe-slot", image.dev, "--wipe-slot=password", f"--tpm2-device={other_swtpm.tcti}")
    rep = doctor(image, other_swtpm, good_root(tmp_path, image), make_initrd(tmp_path / "i.img", __version__), 1)
    assert status(rep, "way-in") == "warn" and "only way in" in by_check(rep, "way-in")[0]["message"]
    assert status(rep, "volume-binding") == "warn"
    assert status(rep, "token-unseal") == "ok"


def test_doctor_volume_without_token_warns(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    rep = doctor(image, other_swtpm, tmp_path, None, None)
    assert by_check(rep, "volume")[0]["status"] == "warn"
    assert by_check(rep, "volume")[0]["message"] == "no TPM token"


# --- doctor: the boot setup under --root ---------------------------------------------------------------


def test_doctor_crypttab_missing_warns_and_broken_fails(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm)
    root = good_root(tmp_path, image)
    initrd = make_initrd(tmp_path / "i.img", __version__)
    (root / "etc/crypttab").write_text("# nothing\n")
    assert status(doctor(image, other_swtpm, root, initrd, 1), "crypttab") == "warn"
    (root / "etc/crypttab").write_text('broken "UUID=x\n')
    rep = doctor(image, other_swtpm, root, initrd, 2)
    assert status(rep, "crypttab") == "fail" and "crypttab:1" in by_check(rep, "crypttab")[0]["message"]


def test_doctor_initramfs_without_module_fails_and_old_version_warns(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    enroll(image, other_swtpm)
    root = good_root(tmp_path, image)
    rep = doctor(image, other_swtpm, root, make_initrd(tmp_path / "none.img", None), 2)
    assert status(rep, "initramfs") == "fail" and "no tpmseal dracut module" in by_check(rep, "initramfs")[0]["message"]
    rep = doctor(image, other_swtpm, root, make_initrd(tmp_path / "old.img", "0.0.1"), 1)
    c = by_check(rep, "initramfs")[0]
    assert c["status"] == "warn" and "0.0.1" in c["message"] and __version__ in c["message"]
    rep = doctor(image, other_swtpm, root, tmp_path / "missing.img", 1)
    assert status(rep, "initramfs") == "warn"


def test_doctor_credentials_and_socket(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    enroll(image, other_swtpm)
    root = good_root(tmp_path, image)
    initrd = make_initrd(tmp_path / "i.img", __version__)
    store = root / "etc/tpmseal/creds/web.service"
    store.mkdir(parents=True)
    (store / "db-password.cred").write_bytes(b"stand-in: the doctor does not read credential contents")
    rep = doctor(image, other_swtpm, root, initrd, 2)
    assert status(rep, "credd-socket") == "fail"  # credentials installed, socket not enabled
    assert status(rep, "credentials") == "warn"  # web.service does not exist
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "web.service").write_text("[Service]\nExecStart=/bin/true\n")
    (units / "tpmseal-credd.socket").write_text("[Socket]\n")
    wants = root / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True)
    (wants / "tpmseal-credd.socket").symlink_to("/usr/lib/systemd/system/tpmseal-credd.socket")
    rep = doctor(image, other_swtpm, root, initrd, 1)
    assert status(rep, "credd-socket") == "ok"
    c = by_check(rep, "credentials")[0]
    assert c["status"] == "warn" and "no drop-in" in c["message"]
    dropin = root / "etc/systemd/system/web.service.d"
    dropin.mkdir(parents=True)
    (dropin / "tpmseal-db-password.conf").write_text("[Service]\nLoadCredential=db-password:/run/tpmseal/creds.sock\n")
    rep = doctor(image, other_swtpm, root, initrd, 0)
    assert status(rep, "credentials") == "ok"
