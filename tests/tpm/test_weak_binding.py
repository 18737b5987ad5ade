# SPDX-License-Identifier: LGPL-2.1-or-later
"""Weak settings are said where the user looks: enroll warns, list and doctor flag the token.

A policy of no PCR, of PCR 15 alone (the volume binding: zero at every boot) or of resettable PCRs (16, 23)
holds on any system booted on the machine. Each test first shows that the weakness is real (the attack:
a changed boot chain still unseals it, or a reset PCR reopens it), then that it is reported; the control is
a PCR 7 token, which the same change locks out and which nobody flags.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import Image, Swtpm, run_cli

pytestmark = pytest.mark.tpm


def enroll(img: Image, tpm: Swtpm, *extra: str, as_json: bool = True) -> tuple[dict[str, Any] | None, str]:
    p = run_cli("enroll", img.dev, f"--tpm2-device={tpm.tcti}", "--unlock-key-file", str(img.keyfile),
                *(["--json"] if as_json else []), *extra)  # fmt: skip
    return (json.loads(p.stdout) if as_json else None), p.stderr


def listing(img: Image, tpm: Swtpm) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_cli("list", img.dev, f"--tpm2-device={tpm.tcti}", "--json").stdout)
    return out


def pcr_binding(img: Image, tpm: Swtpm, tmp_path: Any) -> list[dict[str, Any]]:
    p = run_cli("doctor", img.dev, f"--tpm2-device={tpm.tcti}", f"--root={tmp_path}", "--json", check=None)
    return [c for c in json.loads(p.stdout)["checks"] if c["check"] == "pcr-binding"]


def unlocks(img: Image, tpm: Swtpm) -> bool:
    return run_cli("test-unlock", img.dev, f"--tpm2-device={tpm.tcti}", check=None).returncode == 0


def test_empty_pcrs_is_pcr15_only_warned_listed_and_flagged(image: Image, other_swtpm: Swtpm, tmp_path: Any) -> None:
    r, err = enroll(image, other_swtpm, "--tpm2-pcrs=")
    assert r is not None and r["pcrs"] == "15"
    [w] = r["warnings"]
    assert w.startswith(f"token {r['token']} is bound only to PCR 15") and "--tpm2-pcrs=7" in w
    assert f"tpmseal: warning: {w}" in err
    # the weakness is real: another boot chain (PCR 7 changed) still unseals it
    other_swtpm.extend(7, b"another operating system from a USB stick")
    assert unlocks(image, other_swtpm)
    [tok] = listing(image, other_swtpm)["tokens"]
    assert tok["weak_binding"] == "volume-only"
    p = run_cli("list", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    assert "WEAK: volume-only" in p.stdout
    assert f"warning: token {r['token']} is bound only to PCR 15" in p.stderr
    [c] = pcr_binding(image, other_swtpm, tmp_path)
    assert c["status"] == "warn" and "bound only to PCR 15" in c["message"] and "--tpm2-pcrs=7" in c["hint"]


def test_empty_pcrs_in_text_mode_warns_on_stderr_only(image: Image, swtpm: Swtpm) -> None:
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile),
                "--tpm2-pcrs=")  # fmt: skip
    assert "tpmseal: warning: token 0 is bound only to PCR 15" in p.stderr
    assert "warning" not in p.stdout and "PCRs 15 (sha256)" in p.stdout


def test_no_pcr_at_all_with_no_volume_binding(image: Image, other_swtpm: Swtpm, tmp_path: Any) -> None:
    r, err = enroll(image, other_swtpm, "--tpm2-pcrs=", "--no-volume-binding")
    assert r is not None and r["pcrs"] == ""
    assert "bound to no PCR" in r["warnings"][0] and "bound to no PCR" in err
    other_swtpm.extend(7, b"another operating system")
    other_swtpm.extend(15, b"volumes measured")
    assert unlocks(image, other_swtpm)  # nothing about the boot is checked
    assert listing(image, other_swtpm)["tokens"][0]["weak_binding"] == "no-pcr"
    assert pcr_binding(image, other_swtpm, tmp_path)[0]["status"] == "warn"


def test_resettable_pcr_only_is_flagged_and_a_reset_reopens_it(
    image: Image, other_swtpm: Swtpm, tmp_path: Any
) -> None:
    other_swtpm.extend(16, b"debug measurement")
    r, _ = enroll(image, other_swtpm, "--tpm2-pcrs=16")
    assert r is not None and r["pcrs"] == "15+16"
    assert "resettable PCRs" in r["warnings"][0]
    assert listing(image, other_swtpm)["tokens"][0]["weak_binding"] == "resettable-only"
    assert pcr_binding(image, other_swtpm, tmp_path)[0]["status"] == "warn"
    # the attack: sealed while PCR 16 held a value; reset to zero and extend the same value again
    other_swtpm.extend(16, b"something else ran")
    assert not unlocks(image, other_swtpm)
    other_swtpm.tool("tpm2_pcrreset", "16")
    other_swtpm.extend(16, b"debug measurement")
    assert unlocks(image, other_swtpm)
    # control: PCR 7 is not resettable, so the same move does not work against a PCR 7 token
    with pytest.raises(Exception, match="tpm2_pcrreset"):
        other_swtpm.tool("tpm2_pcrreset", "7")


def test_control_pcr7_token_is_not_flagged_and_a_changed_chain_locks_it(
    image: Image, other_swtpm: Swtpm, tmp_path: Any
) -> None:
    r, err = enroll(image, other_swtpm, "--tpm2-pcrs=7")
    assert r is not None and r["warnings"] == [] and "warning" not in err
    [tok] = listing(image, other_swtpm)["tokens"]
    assert tok["weak_binding"] is None
    p = run_cli("list", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    assert "WEAK" not in p.stdout and "warning" not in p.stderr
    [c] = pcr_binding(image, other_swtpm, tmp_path)
    assert c["status"] == "ok" and c["message"] == "bound to boot-state PCR(s) 7"
    other_swtpm.extend(7, b"another operating system from a USB stick")
    assert not unlocks(image, other_swtpm)


def test_resettable_pcr_next_to_a_boot_pcr_is_not_flagged(image: Image, swtpm: Swtpm) -> None:
    r, _ = enroll(image, swtpm, "--tpm2-pcrs=7+23")
    assert r is not None and r["warnings"] == []
    assert listing(image, swtpm)["tokens"][0]["weak_binding"] is None


def test_foreign_systemd_token_without_pcrs_is_flagged(image: Image, other_swtpm: Swtpm, tmp_path: Any) -> None:
    r, err = enroll(image, other_swtpm, "--token-type=systemd-tpm2", "--tpm2-pcrs=")
    assert "bound to no PCR" in err
    assert r is not None and r["type"] == "systemd-tpm2" and "bound to no PCR" in r["warnings"][0]
    assert listing(image, other_swtpm)["tokens"][0]["weak_binding"] == "no-pcr"
    assert pcr_binding(image, other_swtpm, tmp_path)[0]["status"] == "warn"
    # migrating it keeps its (lack of) PCRs, and says so
    p = run_cli("migrate", image.dev, "--from=systemd-tpm2", f"--tpm2-device={other_swtpm.tcti}")
    assert "tpmseal: warning: token" in p.stderr and "bound only to PCR 15" in p.stderr
    assert [t["weak_binding"] for t in listing(image, other_swtpm)["tokens"]] == ["volume-only"]


@pytest.mark.parametrize("pcr", ["17", "12"])
def test_a_pcr_sealed_at_its_reset_value_is_warned_listed_and_any_boot_unseals_it(
    image: Image, other_swtpm: Swtpm, pcr: str
) -> None:
    """Review R4: PCR 17 (all ones without a dynamic launch) or 12 (zero: nothing extends it here) binds
    nothing; the index alone looks fine, so the check reads the sealed value."""
    value = other_swtpm.pcr(int(pcr))
    assert value in (bytes(32), b"\xff" * 32)  # nothing was ever measured into it
    r, err = enroll(image, other_swtpm, f"--tpm2-pcrs={pcr}")
    assert r is not None and len(r["warnings"]) == 1 and "reset value" in r["warnings"][0], (r, err)
    [tok] = listing(image, other_swtpm)["tokens"]
    assert tok["weak_binding"] == "reset-value", tok
    other_swtpm.extend(7, b"another operating system from a USB stick")
    assert unlocks(image, other_swtpm)  # the weakness is real


def test_control_a_pcr_sealed_at_a_measured_value_is_not_flagged(image: Image, other_swtpm: Swtpm) -> None:
    other_swtpm.extend(12, b"something this boot measured")
    r, _ = enroll(image, other_swtpm, "--tpm2-pcrs=12")
    assert r is not None and r["warnings"] == []
    [tok] = listing(image, other_swtpm)["tokens"]
    assert tok["weak_binding"] is None, tok
