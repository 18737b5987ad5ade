# SPDX-License-Identifier: LGPL-2.1-or-later
"""PCR 15 volume binding with a real TPM. Each test uses its own swtpm: PCR 15 cannot be reset."""

from __future__ import annotations

import json

import pytest
from support import Image, Swtpm, run_cli

pytestmark = pytest.mark.tpm


def enroll(image: Image, tpm: Swtpm, *extra: str) -> dict:
    return json.loads(run_cli("enroll", image.dev, f"--tpm2-device={tpm.tcti}", "--unlock-key-file",
                              str(image.keyfile), "--json", *extra).stdout)  # fmt: skip


def test_enroll_binds_pcr15_by_default_and_measure_closes_it(image: Image, other_swtpm: Swtpm) -> None:
    r = enroll(image, other_swtpm)
    assert r["pcrs"] == "7+15" and r["verified"] == "unsealed"
    listing = json.loads(run_cli("list", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--json").stdout)
    assert listing["tokens"][0]["volume_binding"] is True
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    before = other_swtpm.pcr(15)
    p = run_cli("measure-volumes", f"--tpm2-device={other_swtpm.tcti}")
    assert "PCR 15" in p.stderr and other_swtpm.pcr(15) != before
    refused = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", check=5)
    assert "PCR(s) 15 differ" in refused.stdout and "volume binding" in refused.stdout
    # the hint for data disks opened after boot
    u = run_cli("unlock", image.dev, "x", "--headless", f"--tpm2-device={other_swtpm.tcti}", check=5)
    assert "PCR(s) 15 differ" in u.stderr


def test_no_volume_binding_token_survives_measurement_and_is_warned_about(
    image: Image, other_swtpm: Swtpm
) -> None:
    r = enroll(image, other_swtpm, "--no-volume-binding")
    assert r["pcrs"] == "7"
    run_cli("measure-volumes", f"--tpm2-device={other_swtpm.tcti}")
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    p = run_cli("list", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    assert "not bound to PCR 15" in p.stderr
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert listing["tokens"][0]["volume_binding"] is False


def test_measurement_extends_every_active_bank_once_per_event(other_swtpm: Swtpm) -> None:
    import hashlib

    from tpmseal.boot.measure import SEPARATOR

    run_cli("measure-volumes", f"--tpm2-device={other_swtpm.tcti}")  # no dm volumes on this host
    expect = hashlib.sha256(bytes(32) + hashlib.sha256(SEPARATOR).digest()).digest()
    assert other_swtpm.pcr(15) == expect


def test_enroll_with_signed_pcr_policy_from_the_cli(image: Image, other_swtpm: Swtpm, tmp_path) -> None:
    key = tmp_path / "policy-key.pem"
    r = enroll(image, other_swtpm, "--tpm2-public-key-pcrs=7", f"--private-key={key}")
    assert r["verified"] == "unsealed" and key.exists() and (key.stat().st_mode & 0o777) == 0o400
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    other_swtpm.extend(7, b"new secure boot state")
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", check=5)
