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


def test_measurement_goes_through_with_every_session_slot_filled(other_swtpm: Swtpm) -> None:
    """Attack: fill the TPM's session slots before the boot step. PCR 15's empty password needs no
    session, so the measurement still happens."""
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2_SE, TPMT_SYM_DEF, TSS2_Exception

    from tpmseal.boot.measure import measure

    sessions = []
    esapi = ESAPI(other_swtpm.tcti)
    try:
        with pytest.raises(TSS2_Exception):  # until the TPM has no room for another one
            for _ in range(100):
                sessions.append(esapi.start_auth_session(
                    tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE, session_type=TPM2_SE.HMAC,
                    symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), auth_hash=TPM2_ALG.SHA256,
                ))  # fmt: skip
        assert len(sessions) >= 3
        before = other_swtpm.pcr(15)
        assert measure(other_swtpm.tcti, []) == 1
        assert other_swtpm.pcr(15) != before
    finally:
        for s in sessions:
            esapi.flush_context(s)
        esapi.close()
    assert other_swtpm.loaded_handles() == []


def test_an_extension_the_tpm_did_not_carry_out_is_an_error(other_swtpm: Swtpm, monkeypatch) -> None:
    """A TPM (or something between it and us) that answers success to TPM2_PCR_Event without extending:
    the read-back sees PCR 15 still at zero and the step fails (so the boot stops). Control: the same
    answer with the extension carried out passes."""
    from tpm2_pytss import ESAPI

    from tpmseal.boot.measure import measure
    from tpmseal.errors import TpmError

    real = ESAPI.pcr_event
    monkeypatch.setattr(ESAPI, "pcr_event", lambda self, handle, data, *a, **k: None)
    with pytest.raises(TpmError, match="still holds its power-on value"):
        measure(other_swtpm.tcti, [])
    assert other_swtpm.pcr(15) == bytes(32)
    monkeypatch.setattr(ESAPI, "pcr_event", real)
    assert measure(other_swtpm.tcti, []) == 1
    assert other_swtpm.pcr(15) != bytes(32)


def test_boot_step_without_any_tpm_succeeds_and_says_so(tmp_path) -> None:
    """On a machine with no TPM at all the boot step has nothing to close: exit 0 (the boot goes on).
    This host has none (tests use swtpm over a socket)."""
    import os

    if any(os.path.exists(p) for p in ("/dev/tpmrm0", "/dev/tpm0", "/sys/class/tpm/tpm0",
                                       "/sys/firmware/acpi/tables/TPM2")):  # fmt: skip
        pytest.skip("this host has a TPM")
    p = run_cli("measure-volumes", "--boot", "--tpm2-device=auto")
    assert "has no TPM: nothing to measure" in p.stderr
