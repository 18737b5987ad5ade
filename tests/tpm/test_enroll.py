# SPDX-License-Identifier: LGPL-2.1-or-later
"""enroll / test-unlock / list on real LUKS2 image files with the real swtpm."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, opens, run_cli

from tpmseal.inventory import native_tokens
from tpmseal.luks.volume import Volume
from tpmseal.tpm.device import open_tpm
from tpmseal.unlock import keyslot_passphrase, unseal_token

pytestmark = pytest.mark.tpm


def enroll(img: Image, swtpm: Swtpm, *extra: str, stdin: bytes | None = None, check: int = 0) -> dict:
    p = run_cli(
        "enroll", img.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(img.keyfile), "--json",
        *extra, stdin=stdin, check=check,
    )  # fmt: skip
    return json.loads(p.stdout) if check == 0 else {"stderr": p.stderr}


def unsealed_passphrase(img: Image, swtpm: Swtpm, pin: bytes | None = None) -> bytes:
    """The keyslot passphrase, unsealed through the library (as an independent check)."""
    volume = Volume(img.dev)
    [(_, token)] = native_tokens(volume.header())
    with open_tpm(swtpm.tcti) as esapi:
        src = (lambda: bytearray(pin)) if pin is not None else None
        with unseal_token(esapi, token, src) as raw, keyslot_passphrase(raw) as phrase:
            return bytes(phrase.buffer)


def test_enroll_then_test_unlock_and_key_opens_keyslot_with_cryptsetup(image: Image, swtpm: Swtpm) -> None:
    r = enroll(image, swtpm, "--tpm2-pcrs=7")
    assert r["keyslot"] == 1 and r["type"] == "tpmseal-tpm2" and r["pcrs"] == "7+15" and r["verified"] == "unsealed"
    t = json.loads(run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", "--json").stdout)
    assert [(x["token"], x["ok"]) for x in t["results"]] == [(r["token"], True)]
    phrase = unsealed_passphrase(image, swtpm)
    assert len(base64.b64decode(phrase)) == 32
    assert opens(image.path, phrase, keyslot=1)  # cryptsetup itself, directly
    assert not opens(image.path, phrase, keyslot=0)
    tokens = luks_dump(image.path)["tokens"]
    assert tokens[str(r["token"])]["keyslots"] == ["1"]  # type: ignore[index]


def test_pcr_change_after_enroll_refuses_and_passphrase_still_opens(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm, "--tpm2-pcrs=7")
    swtpm.extend(7, b"the boot chain changed")
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "PCR(s) 7 differ" in p.stdout
    listing = json.loads(run_cli("list", image.dev, f"--tpm2-device={swtpm.tcti}", "--json").stdout)
    [tok] = listing["tokens"]
    assert tok["policy_satisfied"] is False and tok["changed_pcrs"] == [7]
    assert opens(image.path, PASSPHRASE)


def test_literal_pcr_value_unseals_once_pcr_reaches_it(image: Image, swtpm: Swtpm) -> None:
    event = hashlib.sha256(b"next boot's measurement").digest()
    future = hashlib.sha256(swtpm.pcr(7) + event).hexdigest()
    r = enroll(image, swtpm, f"--tpm2-pcrs=7:sha256={future}")
    assert r["verified"] == "key-only"
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    swtpm.tool("tpm2_pcrextend", f"7:sha256={event.hex()}")
    assert swtpm.pcr(7).hex() == future
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=0)


def test_several_pcrs_and_pcr_names(image: Image, swtpm: Swtpm) -> None:
    r = enroll(image, swtpm, "--tpm2-pcrs=0+secure-boot-policy+4")
    assert r["pcrs"] == "0+4+7+15"
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
    swtpm.extend(4, b"new kernel")
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "PCR(s) 4 differ" in p.stdout


def test_pin_right_opens_wrong_refused_with_tries_left(image: Image, swtpm: Swtpm) -> None:
    swtpm.clear_lockout()
    r = enroll(image, swtpm, "--tpm2-with-pin", stdin=b"4711\n")
    assert r["pin"] is True
    ok = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", stdin=b"4711\n")
    assert "ok" in ok.stdout
    try:
        bad = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", stdin=b"1234\n", check=6)
        assert "wrong PIN" in bad.stdout and "tries left" in bad.stdout
        listing = json.loads(run_cli("list", image.dev, f"--tpm2-device={swtpm.tcti}", "--json").stdout)
        assert listing["tokens"][0]["pin"] is True
    finally:
        swtpm.clear_lockout()


def test_token_sealed_on_another_tpm_fails_cleanly(image: Image, swtpm: Swtpm, other_swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", check=11)
    assert "another TPM" in p.stdout
    assert "Traceback" not in p.stderr


def test_enroll_refuses_second_token_without_replace(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    r = enroll(image, swtpm, check=8)
    assert "already has a tpmseal token" in r["stderr"] and "--replace" in r["stderr"]


def test_replace_leaves_one_token_and_old_key_no_longer_opens(image: Image, swtpm: Swtpm) -> None:
    first = enroll(image, swtpm)
    old = unsealed_passphrase(image, swtpm)
    second = enroll(image, swtpm, "--replace")
    assert second["replaced_keyslots"] == [first["keyslot"]]
    dump = luks_dump(image.path)
    native = [t for t in dump["tokens"].values() if t["type"] == "tpmseal-tpm2"]  # type: ignore[attr-defined]
    assert len(native) == 1 and native[0]["keyslots"] == [str(second["keyslot"])]
    assert sorted(dump["keyslots"]) == sorted(["0", str(second["keyslot"])])  # type: ignore[arg-type]
    assert not opens(image.path, old)
    assert opens(image.path, unsealed_passphrase(image, swtpm), keyslot=second["keyslot"])
    assert opens(image.path, PASSPHRASE)


def test_enroll_with_wrong_unlock_key_changes_nothing(image: Image, swtpm: Swtpm) -> None:
    image.keyfile.write_bytes(b"not the passphrase")
    before = luks_dump(image.path)
    r = enroll(image, swtpm, check=10)
    assert "does not open" in r["stderr"]
    assert luks_dump(image.path) == before


def test_enroll_reads_passphrase_from_stdin_when_not_a_tty(image: Image, swtpm: Swtpm) -> None:
    p = run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", stdin=PASSPHRASE + b"\n")
    assert "keyslot 1" in p.stdout


def test_recovery_key_printed_once_opens_and_is_listed(image: Image, swtpm: Swtpm) -> None:
    p = run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile), "--json")
    out = json.loads(p.stdout)
    key = out["recovery_key"]
    groups = key.split("-")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    assert opens(image.path, key.encode(), keyslot=out["keyslot"])
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    kinds = {k["keyslot"]: k["kind"] for k in listing["keyslots"]}
    assert kinds == {0: "password", out["keyslot"]: "recovery"}
    # the key is never stored: it is not in the header
    assert key not in json.dumps(luks_dump(image.path))


def test_list_human_output_names_slots_and_tokens(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    p = run_cli("list", image.dev, f"--tpm2-device={swtpm.tcti}")
    assert "tpm2" in p.stdout and "password" in p.stdout and "PCRs match" in p.stdout
