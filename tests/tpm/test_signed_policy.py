# SPDX-License-Identifier: LGPL-2.1-or-later
"""Signed policies (kind "authorize") with a real TPM: enroll, unseal (counted), reseal, check-reboot, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from support import Image, Swtpm, luks_dump, opens, run_cli

from tpmseal.luks.tokens import parse_native
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.testing.tpmproxy import TpmProxy
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.unlock import keyslot_passphrase, unseal_token
from tpmseal.update import reseal as rs
from tpmseal.update.signed import enroll_signed, load_policy_key

pytestmark = pytest.mark.tpm


def _token(image: Image) -> tuple[int, object]:
    tokens = luks_dump(image.path)["tokens"]
    assert isinstance(tokens, dict)
    [(tid, data)] = [(int(k), v) for k, v in tokens.items() if v["type"] == "tpmseal-tpm2"]
    return tid, data


def _enroll(image: Image, tpm: Swtpm, key: Path, pcrs: str = "7", pin: bytes | None = None) -> None:
    with Secret.take(bytearray(image.keyfile.read_bytes())) as unlock:
        pin_secret = Secret.take(bytearray(pin)) if pin else None
        r = enroll_signed(Volume(image.dev), unlock, tpm.tcti, parse_pcrs(pcrs), None, pin_secret, key_path=str(key))
    assert r.verified == "unsealed" and r.pcrs == f"{pcrs}+15"


def _opens_with_token(image: Image, tpm: Swtpm, pin: bytes | None = None) -> bool:
    _, data = _token(image)
    token = parse_native(data)
    src = (lambda: bytearray(pin)) if pin else None
    with open_tpm(tpm.tcti) as esapi, unseal_token(esapi, token, src) as raw, keyslot_passphrase(raw) as phrase:
        return opens(image.path, bytes(phrase.buffer))


def test_enroll_signed_creates_key_once_and_unseals_in_eleven_commands(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    key = tmp_path / "etc" / "policy-key.pem"
    _enroll(image, other_swtpm, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    first = key.read_bytes()
    _, data = _token(image)
    [seal] = data["seals"]  # type: ignore[index]
    assert seal["kind"] == "authorize"
    assert [a["label"] for a in seal["approved"]] == ["current"]
    assert [p["index"] for p in seal["approved"][0]["pcrs"]] == [7, 15]
    with TpmProxy(other_swtpm.sock, tmp_path / "proxy") as proxy:
        _, data = _token(image)
        token = parse_native(data)
        with open_tpm(f"swtpm:path={proxy.listen_sock}") as esapi, unseal_token(esapi, token) as raw:
            assert len(raw) == 32
        names = proxy.names()
    assert names == ["PCR_Read", "LoadExternal", "VerifySignature", "FlushContext", "ReadPublic", "Load",
                     "StartAuthSession", "PolicyPCR", "PolicyAuthorize", "Unseal", "FlushContext"], names  # fmt: skip
    assert other_swtpm.loaded_handles() == []
    # a second volume reuses the key
    other = image.path.with_name("second.img")
    from support import make_luks2

    second = make_luks2(other)
    _enroll(second, other_swtpm, key)
    assert key.read_bytes() == first


def test_pcr_change_refused_then_next_boot_approval_opens(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    key = tmp_path / "policy-key.pem"
    _enroll(image, other_swtpm, key)
    old7 = other_swtpm.pcr(7)
    new7 = hashlib.sha256(old7 + hashlib.sha256(b"update").digest()).digest()
    # approve the predicted state before the "reboot": no key, no unseal needed
    changes = rs.approve(Volume(image.dev), other_swtpm.tcti, load_policy_key(str(key)), {7: new7})
    assert [c.action for c in changes] == ["added"]
    assert changes[0].approvals == ["current", "next-boot"]
    header = Volume(image.dev).header()
    assert rs.check(image.dev, header, {7: new7}, None)[0].will_unlock
    assert rs.check(image.dev, header, {7: old7}, None)[0].will_unlock
    wrong = rs.check(image.dev, header, {7: bytes(32)}, None)[0]
    assert not wrong.will_unlock and "PCR(s) 7 differ" in wrong.reasons[0]
    # the "update" happens
    other_swtpm.extend(7, b"update")
    assert other_swtpm.pcr(7) == new7
    assert _opens_with_token(image, other_swtpm)
    # cleanup on the booted system drops the stale approval (PCR 15 ignored)
    other_swtpm.extend(15, b"volumes measured")
    with open_tpm(other_swtpm.tcti) as esapi:
        from tpmseal.update.signed import read_pcr_values

        current = read_pcr_values(esapi, "sha256", set(range(24)))
    changes = rs.cleanup(Volume(image.dev), current, load_policy_key(str(key)))
    assert changes[0].action == "removed" and changes[0].approvals == ["current"]
    _, data = _token(image)
    [a] = data["seals"][0]["approved"]  # type: ignore[index]
    assert a["pcrs"][0]["value"] == new7.hex() and a["pcrs"][1]["value"] == "00" * 32
    assert other_swtpm.loaded_handles() == []


def test_unapproved_state_is_refused_with_a_useful_message(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    _enroll(image, other_swtpm, tmp_path / "k.pem")
    other_swtpm.extend(7, b"not approved")
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", check=5)
    assert "no approved policy matches" in p.stdout + p.stderr
    assert other_swtpm.loaded_handles() == []


def test_forged_signature_is_rejected_by_the_tpm(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    """An approval signed by another key (attacker's) is refused: TPM VerifySignature + the name in the policy."""
    _enroll(image, other_swtpm, tmp_path / "k.pem")
    other_swtpm.extend(7, b"evil")
    evil = load_policy_key(str(_new_key(tmp_path / "evil.pem")))
    with pytest.raises(Exception, match="another policy key"):
        rs.approve(Volume(image.dev), other_swtpm.tcti, evil, {7: other_swtpm.pcr(7)})
    # splice an attacker-signed approval directly into the token
    tid, data = _token(image)
    token = parse_native(data)
    seal = token.seals[0]
    assert seal.signed is not None
    target = rs.target_state(seal, {7: other_swtpm.pcr(7)}, None)
    from tpmseal.update.signed import make_approval

    forged = make_approval(evil, target, seal.signed.policy_ref, "next-boot")
    new = rs._with_approvals(token, seal, (*seal.signed.approved, forged))
    from tpmseal.luks.tokens import render_native

    out = render_native(new)
    out["keyslots"] = data["keyslots"]  # type: ignore[index]
    Volume(image.dev).import_token(out, tid, replace=True)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", check=5)
    assert "rejects the signature" in p.stdout + p.stderr
    assert other_swtpm.loaded_handles() == []


def _new_key(path: Path) -> Path:
    from tpmseal.update.signed import ensure_policy_key

    ensure_policy_key(str(path))
    return path


def test_pin_with_signed_policy(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    _enroll(image, other_swtpm, tmp_path / "k.pem", pin=b"1234")
    assert _opens_with_token(image, other_swtpm, pin=b"1234")
    assert other_swtpm.loaded_handles() == []


def test_cli_reseal_current_and_check_reboot(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    other_swtpm.extend(7, b"changed")
    run_cli("reseal", image.dev, "--current", f"--private-key={key}", f"--tpm2-device={other_swtpm.tcti}")
    _, data = _token(image)
    labels = [a["label"] for a in data["seals"][0]["approved"]]  # type: ignore[index]
    assert labels == ["current", "current"] or labels == ["current"], labels
    assert _opens_with_token(image, other_swtpm)
    fixtures = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "eventlog"
    p = run_cli("check-reboot", image.dev, "--eventlog", str(fixtures / "ovmf-a.bin"), "--json", check=None)
    verdict = json.loads(p.stdout)
    assert verdict["will_unlock"] is False and p.returncode == 5
    assert "PCR(s) 7 differ" in verdict["volumes"][0]["reasons"][0]
    assert os.path.exists(key)
