# SPDX-License-Identifier: LGPL-2.1-or-later
"""Interop with tokens other tools write: systemd-cryptenroll (systemd-tpm2) and clevis (tpm2 pin).

Real tools on the session swtpm: Debian 12's systemd-cryptenroll 252 and clevis 19 enroll, tpmseal opens,
refuses after a PCR change, migrates; tokens tpmseal writes in systemd's format are compared field by
field with systemd-cryptenroll's, and systemd 252's own systemd-cryptsetup unseals them.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, make_luks2, need, opens, run_cli

from tpmseal.errors import TokenUnsupported
from tpmseal.interop.clevis import parse_clevis
from tpmseal.interop.systemd_tpm2 import enroll_systemd_tpm2, parse_systemd_tpm2, pin_auth
from tpmseal.luks.volume import Volume
from tpmseal.migrate import FAULT_ENV, migrate
from tpmseal.secret import Secret
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.unlock import token_openers

pytestmark = pytest.mark.tpm

SYSTEMD_CRYPTSETUP = "/lib/systemd/systemd-cryptsetup"
PIN = b"4711-interop"


def flush_leaks(swtpm: Swtpm) -> None:
    """systemd-cryptenroll 252, systemd-cryptsetup 252 and clevis (through tpm2-tools) leave sessions or
    transient objects loaded: harmless under the kernel's resource manager, but swtpm over a socket has
    none, and after two or three such runs the TPM is out of session slots. Flush what they left so the
    session swtpm stays clean for the no_leaks checks (tpmseal itself must leave nothing: no_leaks)."""
    for flag in ("-t", "-l", "-s"):
        swtpm.tool("tpm2_flushcontext", flag)


def tokens_of(img: Image, type_: str) -> dict[int, dict[str, Any]]:
    tokens: dict[str, dict[str, Any]] = luks_dump(img.path)["tokens"]  # type: ignore[assignment]
    return {int(k): v for k, v in tokens.items() if v["type"] == type_}


def cryptenroll(img: Image, swtpm: Swtpm, pcrs: str = "7", pin: bytes | None = None) -> int:
    """systemd-cryptenroll 252: the existing passphrase only from $PASSWORD, a new PIN from $NEWPIN."""
    need("systemd-cryptenroll")
    before = set(tokens_of(img, "systemd-tpm2"))
    env = {**swtpm.env(), "PASSWORD": PASSPHRASE.decode()}
    argv = ["systemd-cryptenroll", f"--tpm2-device={swtpm.tcti}", f"--tpm2-pcrs={pcrs}"]
    if pin is not None:
        env["NEWPIN"] = pin.decode()
        argv.append("--tpm2-with-pin=yes")
    try:
        subprocess.run([*argv, img.dev], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    finally:
        flush_leaks(swtpm)
    [new] = set(tokens_of(img, "systemd-tpm2")) - before
    return new


def clevis_bind(img: Image, swtpm: Swtpm, pin: str, config: dict[str, Any]) -> int:
    need("clevis", "clevis-luks-bind")
    before = set(tokens_of(img, "clevis"))
    try:
        subprocess.run(
            ["clevis", "luks", "bind", "-y", "-k", str(img.keyfile), "-d", img.dev, pin, json.dumps(config)],
            env=swtpm.env(), check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        flush_leaks(swtpm)
    [new] = set(tokens_of(img, "clevis")) - before
    return new


def try_unlock(img: Image, swtpm: Swtpm, stdin: bytes | None = None, check: int | None = 0) -> dict[str, Any]:
    p = run_cli("test-unlock", img.dev, f"--tpm2-device={swtpm.tcti}", "--json", stdin=stdin, check=check)
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def passphrase_of(img: Image, swtpm: Swtpm, token_id: int, pin: bytes | None = None) -> bytes:
    t = Volume(img.dev).header().tokens[token_id]
    with open_tpm(swtpm.tcti) as esapi:
        src = (lambda: bytearray(pin)) if pin is not None else None
        with token_openers()[t.type](esapi, t.data, src) as phrase:
            return bytes(phrase.buffer)


# --- systemd-cryptenroll's tokens -----------------------------------------------------------------------


def test_systemd_cryptenroll_token_opens_then_refuses_after_pcr_change(
    image: Image, swtpm: Swtpm, no_leaks: None
) -> None:
    tid = cryptenroll(image, swtpm, "7")
    [r] = try_unlock(image, swtpm)["results"]
    assert (r["token"], r["type"], r["ok"]) == (tid, "systemd-tpm2", True)
    phrase = passphrase_of(image, swtpm, tid)
    assert len(base64.b64decode(phrase)) == 32  # systemd: base64 of 32 unsealed bytes
    [slot] = [int(k) for k in tokens_of(image, "systemd-tpm2")[tid]["keyslots"]]
    assert opens(image.path, phrase, keyslot=slot)
    swtpm.extend(7, b"boot chain changed after systemd-cryptenroll")
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "PCR(s) 7 (sha256)" in p.stdout
    assert opens(image.path, PASSPHRASE)


def test_systemd_cryptenroll_token_with_pin(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    tid = cryptenroll(image, swtpm, "7", pin=PIN)
    assert tokens_of(image, "systemd-tpm2")[tid]["tpm2-pin"] is True
    [r] = try_unlock(image, swtpm, stdin=PIN + b"\n")["results"]
    assert r["ok"], r
    try:
        p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", stdin=b"wrong\n", check=6)
        assert "wrong PIN" in p.stdout
    finally:
        swtpm.clear_lockout()
    # an empty PIN is not sent to the TPM (it would cost a dictionary-attack try)
    [r] = try_unlock(image, swtpm, stdin=b"", check=None)["results"]
    assert r["error_kind"] == "PinRequired"


def test_list_shows_pcrs_bank_and_pin_of_foreign_tokens(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    tid = cryptenroll(image, swtpm, "0+7", pin=PIN)
    cid = clevis_bind(image, swtpm, "tpm2", {"pcr_ids": "7", "pcr_bank": "sha256"})
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    by_id = {t["token"]: t for t in listing["tokens"]}
    assert (by_id[tid]["pcrs"], by_id[tid]["pcr_bank"], by_id[tid]["pin"]) == ("0+7", "sha256", True)
    assert (by_id[cid]["pcrs"], by_id[cid]["pcr_bank"], by_id[cid]["pin"]) == ("7", "sha256", False)
    assert by_id[tid]["error"] is None and by_id[cid]["error"] is None


# --- clevis ---------------------------------------------------------------------------------------------


def test_clevis_tpm2_token_opens_then_refuses_after_pcr_change(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    # clevis's default bank is sha1, which swtpm does not enable
    cid = clevis_bind(image, swtpm, "tpm2", {"pcr_ids": "7", "pcr_bank": "sha256"})
    token = parse_clevis(tokens_of(image, "clevis")[cid])
    assert token.jwe.header["alg"] == "dir" and token.jwe.header["enc"] == "A256GCM"
    [r] = try_unlock(image, swtpm)["results"]
    assert (r["token"], r["type"], r["ok"]) == (cid, "clevis", True)
    phrase = passphrase_of(image, swtpm, cid)
    assert opens(image.path, phrase, keyslot=token.keyslots[0])
    # the same passphrase clevis itself recovers
    flush_leaks(swtpm)
    try:
        theirs = subprocess.run(
            ["clevis", "luks", "pass", "-d", image.dev, "-s", str(token.keyslots[0])],
            env=swtpm.env(), check=True, capture_output=True,
        ).stdout  # fmt: skip
    finally:
        flush_leaks(swtpm)
    assert theirs == phrase
    swtpm.extend(7, b"boot chain changed after clevis luks bind")
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "clevis key was bound to" in p.stdout


def _tang_adv(d: Path) -> Path:
    """A tang advertisement made with jose (no tang server: clevis takes the adv from a file)."""
    need("jose")
    sig, exc, pub, adv = d / "sig.jwk", d / "exc.jwk", d / "pub.jwks", d / "adv.jws"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("jose", "jwk", "gen", "-i", '{"alg":"ES512"}', "-o", str(sig))
    run("jose", "jwk", "gen", "-i", '{"alg":"ECMR"}', "-o", str(exc))
    run("jose", "jwk", "pub", "-s", "-i", str(sig), "-i", str(exc), "-o", str(pub))
    run("jose", "jws", "sig", "-I", str(pub), "-k", str(sig), "-o", str(adv), "-s", '{"cty":"jwk-set+json"}')
    return adv


def test_clevis_tang_and_sss_tokens_are_refused_clearly(
    image: Image, swtpm: Swtpm, tmp_path: Path, no_leaks: None
) -> None:
    adv = str(_tang_adv(tmp_path))
    tang = clevis_bind(image, swtpm, "tang", {"url": "http://127.0.0.1:9", "adv": adv})
    sss = clevis_bind(image, swtpm, "sss", {"t": 1, "pins": {"tang": [{"url": "http://127.0.0.1:9", "adv": adv}]}})
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", "--json", check=7)
    by_id = {r["token"]: r for r in json.loads(p.stdout)["results"]}
    assert by_id[tang]["error_kind"] == "TokenUnsupported"
    assert "clevis pin 'tang' cannot be opened by tpmseal" in by_id[tang]["error"]
    assert "clevis pin 'sss' cannot be opened by tpmseal" in by_id[sss]["error"]
    assert "tang" in by_id[sss]["error"].split("sss")[-1]  # names the pins it combines
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert {t["token"]: t["error"] for t in listing["tokens"]}[tang].startswith("clevis pin 'tang'")


# --- refusals, without a TPM ----------------------------------------------------------------------------


def _systemd_token(**extra: Any) -> dict[str, Any]:
    private, public = b"\x00\x04" + b"p" * 4, b"\x00\x04" + b"q" * 4
    return {
        "type": "systemd-tpm2", "keyslots": ["1"], "tpm2-blob": base64.b64encode(private + public).decode(),
        "tpm2-pcrs": [7], "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc", "tpm2-policy-hash": "ab" * 32,
        "tpm2-pin": False, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tpm2_pubkey": base64.b64encode(b"-----BEGIN PUBLIC KEY-----").decode(), "tpm2_pubkey_pcrs": [11]},
         "tpm2_pubkey"),
        ({"tpm2_pubkey_pcrs": [11]}, "tpm2_pubkey_pcrs"),
        ({"tpm2_pcrlock": True}, "tpm2_pcrlock"),
        ({"tpm2_pcrlock_nv": "AAE="}, "tpm2_pcrlock_nv"),
        ({"tpm2_fido2_something": 1}, "tpm2_fido2_something"),
        ({"tpm2-blob": [base64.b64encode(b"\x00\x01a\x00\x01b").decode()] * 2}, "tpm2-blob"),
        ({"tpm2-blob": base64.b64encode(b"\x00\x01a\x00\x01b\x00\x02cc").decode()}, "tpm2-blob"),
    ],
)  # fmt: skip
def test_systemd_tokens_we_cannot_open_are_refused_naming_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(TokenUnsupported, match=f"field '{field}'"):
        parse_systemd_tpm2(_systemd_token(**extra))
    # what newer systemd writes in a plain PCR token is understood
    t = parse_systemd_tpm2(_systemd_token(tpm2_salt="c2FsdA==", tpm2_pcrlock=False, tpm2_pubkey_pcrs=[]))
    assert t.salt == b"salt" and t.pcrs.indexes == (7,)


def test_systemd_pin_hash_and_salted_pin_derivation() -> None:
    import hashlib

    assert bytes(pin_auth(bytearray(b"1234"), None).buffer) == hashlib.sha256(b"1234").digest()
    stretched = base64.b64encode(hashlib.pbkdf2_hmac("sha256", b"1234", b"salt", 10000, 32))
    assert bytes(pin_auth(bytearray(b"1234"), b"salt").buffer) == hashlib.sha256(stretched).digest()


# --- migration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["systemd-tpm2", "clevis"])
def test_migrate_replaces_the_old_token_without_a_passphrase(
    image: Image, swtpm: Swtpm, source: str, no_leaks: None
) -> None:
    if source == "systemd-tpm2":
        old = cryptenroll(image, swtpm, "7")
    else:
        old = clevis_bind(image, swtpm, "tpm2", {"pcr_ids": "7", "pcr_bank": "sha256"})
    old_slot = int(tokens_of(image, source)[old]["keyslots"][0])
    r = migrate(Volume(image.dev), source, swtpm.tcti, None, keep=False)
    # the old token's PCRs, plus PCR 15 at zero: new native tokens are volume-bound by default
    assert (r.source_token, r.source_keyslots, r.pcrs, r.pcr_bank) == (old, [old_slot], "7+15", "sha256")
    assert r.verified == "unsealed"
    assert r.removed_keyslots == [old_slot] and r.removed_tokens == [old]
    assert tokens_of(image, source) == {}
    assert str(old_slot) not in luks_dump(image.path)["keyslots"]  # type: ignore[operator]
    [res] = try_unlock(image, swtpm)["results"]
    assert (res["type"], res["ok"], res["keyslots"]) == ("tpmseal-tpm2", True, [r.keyslot])
    assert opens(image.path, PASSPHRASE, keyslot=0)  # the passphrase is untouched


def test_migrate_keeps_pin_and_old_token_with_keep(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    old = cryptenroll(image, swtpm, "7", pin=PIN)
    r = migrate(Volume(image.dev), "systemd-tpm2", swtpm.tcti, parse_pcrs("0+7"), keep=True, pin=lambda: bytearray(PIN))
    assert (r.pcrs, r.pin, r.kept, r.removed_keyslots) == ("0+7+15", True, True, [])
    assert old in tokens_of(image, "systemd-tpm2")
    results = try_unlock(image, swtpm, stdin=PIN + b"\n")["results"]
    assert [(x["type"], x["ok"]) for x in results] == [("systemd-tpm2", True), ("tpmseal-tpm2", True)]


@pytest.mark.parametrize("step", ["opened", "enrolled"])
def test_migrate_killed_midway_leaves_the_volume_openable_and_a_rerun_finishes(
    image: Image, swtpm: Swtpm, step: str, no_leaks: None
) -> None:
    old = cryptenroll(image, swtpm, "7")
    code = (
        "import sys; from tpmseal.luks.volume import Volume; from tpmseal.migrate import migrate; "
        "migrate(Volume(sys.argv[1]), 'systemd-tpm2', sys.argv[2], None, keep=False)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, image.dev, swtpm.tcti], env={**os.environ, FAULT_ENV: step}, capture_output=True
    )
    assert p.returncode == -9, p.stderr  # SIGKILL: no cleanup ran
    assert old in tokens_of(image, "systemd-tpm2")  # the old token still works...
    results = try_unlock(image, swtpm)["results"]
    assert all(x["ok"] for x in results) and results
    assert ("tpmseal-tpm2" in [x["type"] for x in results]) == (step == "enrolled")
    assert opens(image.path, PASSPHRASE)
    r = migrate(Volume(image.dev), "systemd-tpm2", swtpm.tcti, None, keep=False)  # ...and a rerun finishes
    assert r.verified == ("existing" if step == "enrolled" else "unsealed")
    assert tokens_of(image, "systemd-tpm2") == {}
    [res] = try_unlock(image, swtpm)["results"]
    assert res["type"] == "tpmseal-tpm2" and res["ok"]


# --- writing systemd-tpm2 tokens ------------------------------------------------------------------------


def _public_fields(blob: bytes) -> dict[str, Any]:
    """Decode a tpm2-blob: TPM2B_PRIVATE size, then the TPMT_PUBLIC of a KEYEDHASH object."""
    (priv_size,) = struct.unpack_from(">H", blob, 0)
    pub = blob[2 + priv_size :]
    size, type_, name_alg, attrs, policy_size = struct.unpack_from(">HHHIH", pub, 0)
    o = 12
    policy = pub[o : o + policy_size]
    o += policy_size
    scheme, unique_size = struct.unpack_from(">HH", pub, o)
    return {
        "private_size": priv_size, "public_size": size, "type": type_, "nameAlg": name_alg, "attrs": attrs,
        "authPolicy": policy, "scheme": scheme, "unique_size": unique_size,
        "trailing": len(pub) - (o + 4 + unique_size),
    }  # fmt: skip


@pytest.mark.parametrize("pin", [None, PIN], ids=["no-pin", "pin"])
def test_enroll_systemd_tpm2_writes_what_systemd_cryptenroll_writes(
    image: Image, swtpm: Swtpm, tmp_path: Path, pin: bytes | None, no_leaks: None
) -> None:
    theirs_img = make_luks2(tmp_path / "theirs.img")
    theirs_id = cryptenroll(theirs_img, swtpm, "0+7", pin=pin)
    theirs = tokens_of(theirs_img, "systemd-tpm2")[theirs_id]
    r = enroll_systemd_tpm2(
        Volume(image.dev), Secret(PASSPHRASE), swtpm.tcti, parse_pcrs("0+7"), Secret(pin) if pin else None
    )
    assert (r.type, r.pcrs, r.verified) == ("systemd-tpm2", "0+7", "unsealed")
    ours = tokens_of(image, "systemd-tpm2")[r.token]
    # field names (cryptsetup keeps the order systemd wrote them in; ours are sorted on import)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert type(ours[k]) is type(theirs[k]), k
    for k in ("tpm2-pcrs", "tpm2-pcr-bank", "tpm2-primary-alg", "tpm2-pin"):
        assert ours[k] == theirs[k], k
    # same PCR state, same PIN use: the policy digest is the same, byte for byte (lowercase hex)
    assert ours["tpm2-policy-hash"] == theirs["tpm2-policy-hash"]
    assert ours["keyslots"] == [str(r.keyslot)]
    o = _public_fields(base64.b64decode(ours["tpm2-blob"], validate=True))
    t = _public_fields(base64.b64decode(theirs["tpm2-blob"], validate=True))
    assert o["authPolicy"].hex() == ours["tpm2-policy-hash"] and t["authPolicy"].hex() == theirs["tpm2-policy-hash"]
    for k in ("private_size", "public_size", "type", "nameAlg", "scheme", "unique_size", "trailing"):
        assert o[k] == t[k], k
    # the one difference: tpmseal sets noDA on a PIN-less object (it has no authValue to guess)
    noda = 0x400
    assert o["attrs"] & ~noda == t["attrs"] and o["attrs"] & noda == (0 if pin else noda)
    # and tpmseal opens both
    results = try_unlock(image, swtpm, stdin=(pin + b"\n") if pin else None)["results"]
    assert [(x["token"], x["ok"]) for x in results] == [(r.token, True)]


def test_systemd_cryptsetup_252_unseals_a_token_we_wrote(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    """systemd's stock unseal path, on the host: systemd-cryptsetup takes a TCTI string as tpm2-device=.

    It parses our token, re-creates the primary key, unseals and then fails only at the device-mapper
    step (the host kernel has none). That proves the token and sealed object half; that its key opens
    the keyslot through systemd is proven in the VM tier (base64 of the same bytes opens it here).
    """
    if not os.path.exists(SYSTEMD_CRYPTSETUP):
        need(SYSTEMD_CRYPTSETUP)
    enroll_systemd_tpm2(Volume(image.dev), Secret(PASSPHRASE), swtpm.tcti, parse_pcrs("7"))

    def attach() -> str:
        try:
            p = subprocess.run(
                [SYSTEMD_CRYPTSETUP, "attach", "tpmseal-interop", image.dev, "-",
                 f"tpm2-device={swtpm.tcti},headless=1,token-timeout=0"],
                env={**swtpm.env(), "SYSTEMD_LOG_LEVEL": "debug"}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            flush_leaks(swtpm)  # systemd-cryptsetup 252 leaves its HMAC session loaded
        return p.stdout + p.stderr

    out = attach()
    assert "Completed TPM2 key unsealing" in out, out
    assert "Failed to unseal" not in out
    swtpm.extend(7, b"changed before systemd-cryptsetup")
    out = attach()
    assert "Completed TPM2 key unsealing" not in out, out


# --- cost -----------------------------------------------------------------------------------------------

OPEN_COST = ["CreatePrimary", "Load", "StartAuthSession", "PolicyPCR", "Unseal", "FlushContext", "FlushContext"]


def test_opening_foreign_tokens_costs_seven_tpm_commands(
    image: Image, swtpm: Swtpm, tmp_path: Path, no_leaks: None
) -> None:
    """Counted at the TPM's socket (systemd-cryptsetup 252 needs 12 for the same token, clevis ≈ 30)."""
    from tpmseal.testing.tpmproxy import TpmProxy

    sd = cryptenroll(image, swtpm, "7")
    sd_pin = cryptenroll(image, swtpm, "7", pin=PIN)
    cl = clevis_bind(image, swtpm, "tpm2", {"pcr_ids": "7", "pcr_bank": "sha256"})
    header = Volume(image.dev).header()
    openers = token_openers()
    costs = {}
    with TpmProxy(swtpm.sock, tmp_path / "proxy") as proxy, open_tpm(f"swtpm:path={tmp_path / 'proxy'}") as esapi:
        for tid in (sd, sd_pin, cl):
            t = header.tokens[tid]
            proxy.reset()
            with openers[t.type](esapi, t.data, lambda: bytearray(PIN)):
                pass
            costs[tid] = proxy.names()
    assert costs[sd] == OPEN_COST
    assert costs[cl] == OPEN_COST
    # a PIN token checks its PCR policy first (PCR_Read), then adds PolicyAuthValue
    assert costs[sd_pin] == ["PCR_Read", *OPEN_COST[:4], "PolicyAuthValue", *OPEN_COST[4:]]
