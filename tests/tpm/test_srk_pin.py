# SPDX-License-Identifier: LGPL-2.1-or-later
"""Issue 16: the SRK in a header must not decide where a PIN's session is salted; no PIN, no TPM try.

Attack 2: whoever holds the disk replaces the token's SRK (serialized ESYS_TR, name) by their own P-256
key. If tpmseal salted the session to it, the attacker would read the salt from the recorded
StartAuthSession, derive the session key, and search the PIN offline from the Unseal HMAC. Local root
can do the same with a key it imported into the TPM and persisted at 0x81000001. The offline search is
implemented here (KDFe, KDFa, the command HMAC, from TPM 2.0 Part 1) and run on the proxy's recording.

Attack 3: a PIN token checked with no PIN at hand (empty or closed stdin) must not cost a
dictionary-attack try: the lockout counter is read before and after.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support import Image, Swtpm, luks_dump, run_cli

from tpmseal.enroll import enroll_tpm
from tpmseal.errors import PinRejected, PinRequired, WrongTpm
from tpmseal.inventory import native_tokens
from tpmseal.luks.tokens import NativeToken
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.testing.tpmproxy import TpmCommand, TpmProxy
from tpmseal.tpm import seal as seal_mod
from tpmseal.tpm import srk as srk_mod
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.tpm.seal import PinKdf
from tpmseal.unlock import unseal_token

pytestmark = pytest.mark.tpm

PIN = b"4721"
WEAK_LOG2_N = 1  # scrypt N = 2 for the offline searches, so 10^4 guesses take a second, not minutes
SRK = 0x81000001


# ------------------------------------------------------------------ the attacker's offline search


def _kdfa(key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\0" + u + v + struct.pack(">I", bits),
                        hashlib.sha256).digest()  # fmt: skip
        counter += 1
    return out[: bits // 8]


def _kdfe(z: bytes, label: bytes, u: bytes, v: bytes) -> bytes:
    return hashlib.sha256(struct.pack(">I", 1) + z + label + b"\0" + u + v).digest()


def _tpm2b(buf: bytes, off: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">H", buf, off)
    return buf[off + 2 : off + 2 + n], off + 2 + n


def session_key(sas: TpmCommand, attacker: ec.EllipticCurvePrivateKey) -> bytes:
    """The session key of a StartAuthSession salted to ``attacker``'s public key (unbound)."""
    cmd, rsp = sas.command, sas.response
    assert rsp is not None
    off = 10 + 8  # header, tpmKey and bind handles (no authorization area)
    nonce_caller, off = _tpm2b(cmd, off)
    secret, off = _tpm2b(cmd, off)
    qx, o2 = _tpm2b(secret, 0)
    qy, _ = _tpm2b(secret, o2)
    ephemeral = ec.EllipticCurvePublicNumbers(int.from_bytes(qx, "big"), int.from_bytes(qy, "big"), ec.SECP256R1())
    z = attacker.exchange(ec.ECDH(), ephemeral.public_key())
    own_x = attacker.public_key().public_numbers().x.to_bytes(32, "big")
    salt = _kdfe(z, b"SECRET", qx, own_x)
    nonce_tpm, _ = _tpm2b(rsp, 10 + 4)
    return _kdfa(salt, b"ATH", nonce_tpm, nonce_caller, 256)


def offline_pin_search(
    commands: list[TpmCommand], attacker: ec.EllipticCurvePrivateKey, sealed_public: bytes, kdf: PinKdf
) -> bytes | None:
    """What a bus recording gives an attacker who knows the salt key: the PIN, by trying 0000-9999."""
    from tpm2_pytss import TPM2B_PUBLIC

    sas = [c for c in commands if c.name == "StartAuthSession" and c.ok]
    unseals = [c for c in commands if c.name == "Unseal"]
    if not sas or not unseals:
        return None
    key = session_key(sas[-1], attacker)
    nonce_tpm, _ = _tpm2b(sas[-1].response or b"", 14)
    cmd = unseals[-1].command
    (code,) = struct.unpack_from(">I", cmd, 6)
    off = 10 + 4 + 4  # header, itemHandle, authorizationSize
    off += 4  # the session handle
    nonce_caller, off = _tpm2b(cmd, off)
    attrs = cmd[off : off + 1]
    sent_hmac, _ = _tpm2b(cmd, off + 1)
    pub, _ = TPM2B_PUBLIC.unmarshal(sealed_public)
    name = bytes(pub.publicArea.get_name())
    cp_hash = hashlib.sha256(struct.pack(">I", code) + name).digest()  # Unseal has no parameters
    message = cp_hash + nonce_caller + nonce_tpm + attrs
    for n in range(10000):
        guess = bytearray(b"%04d" % n)
        with kdf.derive(guess) as auth:
            if hmac.compare_digest(hmac.new(key + bytes(auth.buffer).rstrip(b"\0"), message, hashlib.sha256).digest(),
                                   sent_hmac):  # fmt: skip
                return bytes(guess)
    return None


# ------------------------------------------------------------------ helpers


@pytest.fixture
def weak_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap PIN stretching for these tests only: the searches run 10^4 guesses."""
    monkeypatch.setattr(seal_mod, "PIN_SCRYPT_LOG2_N", WEAK_LOG2_N)
    monkeypatch.setattr(seal_mod, "PIN_SCRYPT_MIN_LOG2_N", WEAK_LOG2_N)


def enroll_pin(image: Image, tcti: str) -> int:
    with Secret(image.keyfile.read_bytes()) as key, Secret(PIN) as pin:
        return enroll_tpm(Volume(image.dev), key, tcti, parse_pcrs("7"), pin=pin).token


def the_token(image: Image) -> NativeToken:
    [(_, token)] = native_tokens(Volume(image.dev).header())
    return token


def replace_token(image: Image, token_id: int, data: dict) -> None:
    subprocess.run(
        ["cryptsetup", "token", "import", "--json-file", "-", "--token-id", str(token_id), "--token-replace",
         image.dev], input=json.dumps(data).encode(), check=True, capture_output=True,
    )  # fmt: skip


def fake_esys_tr(public: object) -> tuple[bytes, bytes]:
    """Esys_TR_Serialize form of a persistent key at 0x81000001 with ``public``: (serialized, name)."""
    name = bytes(public.publicArea.get_name())  # type: ignore[attr-defined]
    raw = struct.pack(">IH", SRK, len(name)) + name + struct.pack(">I", 1) + bytes(public.marshal())  # type: ignore[attr-defined]
    return raw, name


def attacker_public(key: ec.EllipticCurvePrivateKey, attrs: str) -> object:
    from tpm2_pytss import TPM2B_PUBLIC

    pub = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs, nameAlg="sha256")
    nums = key.public_key().public_numbers()
    pub.publicArea.unique.ecc.x = nums.x.to_bytes(32, "big")
    pub.publicArea.unique.ecc.y = nums.y.to_bytes(32, "big")
    return pub


SRK_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"


def victim(image: Image, tcti: str) -> tuple[list[int], Exception | None]:
    """The owner unlocks with the right PIN; returns (how often the PIN was asked, the error)."""
    asked: list[int] = []

    def source() -> bytearray:
        asked.append(1)
        return bytearray(PIN)

    try:
        with open_tpm(tcti) as esapi, unseal_token(esapi, the_token(image), source):
            return asked, None
    except (WrongTpm, PinRejected) as e:
        return asked, e


def lockout_counter(t: Swtpm) -> int:
    """TPM2_PT_LOCKOUT_COUNTER, the dictionary-attack failure count (``tpm2_getcap properties-variable``)."""
    out = t.tool("tpm2_getcap", "properties-variable")
    [value] = [line.split(":", 1)[1] for line in out.splitlines() if line.startswith("TPM2_PT_LOCKOUT_COUNTER:")]
    return int(value.strip(), 0)


@pytest.fixture
def proxy(other_swtpm: Swtpm, tmp_path: Path) -> Iterator[TpmProxy]:
    with TpmProxy(other_swtpm.sock, tmp_path / "p") as p:
        yield p


def ptcti(p: TpmProxy) -> str:
    return f"swtpm:path={p.listen_sock}"


# ------------------------------------------------------------------ attack 2: header SRK


def _swap_header_srk(image: Image, token_id: int, attacker: ec.EllipticCurvePrivateKey) -> None:
    data = luks_dump(image.path)["tokens"][str(token_id)]  # type: ignore[index]
    raw, name = fake_esys_tr(attacker_public(attacker, SRK_ATTRS))
    data["srk"].update(name=name.hex(), esys_tr=base64.b64encode(raw).decode())
    replace_token(image, token_id, data)


def test_header_srk_swap_is_refused_before_any_pin_and_leaves_nothing_to_search(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, weak_kdf: None
) -> None:
    token_id = enroll_pin(image, other_swtpm.tcti)
    attacker = ec.generate_private_key(ec.SECP256R1())
    _swap_header_srk(image, token_id, attacker)
    before = lockout_counter(other_swtpm)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert isinstance(err, WrongTpm) and "not the SRK this token was sealed under" in err.message, err
    assert asked == [], "the PIN was asked for although the SRK is not the TPM's"
    assert proxy.names() == ["ReadPublic"]  # nothing else: no session, no Load, no PIN-derived HMAC
    seal = the_token(image).seals[0]
    assert seal.pin_kdf is not None
    assert offline_pin_search(proxy.commands, attacker, seal.sealed.public, seal.pin_kdf) is None
    assert lockout_counter(other_swtpm) == before
    assert other_swtpm.loaded_handles() == []


def test_control_header_srk_swap_leaks_the_pin_when_the_session_is_salted_to_the_header(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, weak_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: the old behaviour (salt to the header's SRK) and the same attack finds the PIN offline."""
    import tpmseal.unlock

    token_id = enroll_pin(image, other_swtpm.tcti)
    attacker = ec.generate_private_key(ec.SECP256R1())
    _swap_header_srk(image, token_id, attacker)
    monkeypatch.setattr(tpmseal.unlock, "srk_from_tpm", srk_mod.srk_from_ref)
    before = lockout_counter(other_swtpm)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert asked == [1] and isinstance(err, PinRejected), err  # the TPM says "wrong PIN": a try lost
    assert lockout_counter(other_swtpm) == before + 1
    seal = the_token(image).seals[0]
    assert seal.pin_kdf is not None
    assert offline_pin_search(proxy.commands, attacker, seal.sealed.public, seal.pin_kdf) == PIN
    other_swtpm.clear_lockout()
    assert other_swtpm.loaded_handles() == []


def test_the_genuine_unlock_recording_gives_the_attacker_nothing(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, weak_kdf: None
) -> None:
    enroll_pin(image, other_swtpm.tcti)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert err is None and asked == [1]
    assert proxy.names() == ["ReadPublic", "PCR_Read", "Load", "StartAuthSession", "PolicyPCR", "PolicyAuthValue",
                             "Unseal", "FlushContext"]  # fmt: skip
    seal = the_token(image).seals[0]
    assert seal.pin_kdf is not None
    # without the SRK's private key the salt is unknown: any other key finds nothing
    guess = ec.generate_private_key(ec.SECP256R1())
    assert offline_pin_search(proxy.commands, guess, seal.sealed.public, seal.pin_kdf) is None


# ------------------------------------------------------------------ attack 2': local root replaces 0x81000001


def _plant_imported_srk(t: Swtpm, d: Path) -> ec.EllipticCurvePrivateKey:
    """Local root: evict the SRK, import a P-256 storage key whose private part it knows, persist it."""
    from cryptography.hazmat.primitives import serialization

    d.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = d / "key.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))  # fmt: skip
    t.tool("tpm2_evictcontrol", "-C", "o", "-c", hex(SRK))
    t.tool("tpm2_createprimary", "-C", "o", "-c", str(d / "prim.ctx"), "-Q")
    # an imported object cannot be fixedTPM: the TPM refuses, so the attacker's key cannot claim it
    with pytest.raises(subprocess.CalledProcessError):
        t.tool("tpm2_import", "-C", str(d / "prim.ctx"), "-G", "ecc256:aes128cfb", "-i", str(pem), "-u",
               str(d / "f.pub"), "-r", str(d / "f.priv"), "-a", "fixedtpm|fixedparent|restricted|decrypt")  # fmt: skip
    t.tool("tpm2_import", "-C", str(d / "prim.ctx"), "-G", "ecc256:aes128cfb", "-i", str(pem),
           "-u", str(d / "k.pub"), "-r", str(d / "k.priv"), "-a", "restricted|decrypt|userwithauth|noda")  # fmt: skip
    t.tool("tpm2_flushcontext", "-t")
    t.tool("tpm2_load", "-C", str(d / "prim.ctx"), "-u", str(d / "k.pub"), "-r", str(d / "k.priv"),
           "-c", str(d / "k.ctx"), "-Q")  # fmt: skip
    t.tool("tpm2_evictcontrol", "-C", "o", "-c", str(d / "k.ctx"), hex(SRK))
    t.tool("tpm2_flushcontext", "-t")
    return key


def _reseal_under_planted_key(image: Image, t: Swtpm, token_id: int) -> None:
    """The matching header edit: a sealed object under the planted key, same policy, and its SRK name."""
    from tpm2_pytss import (
        TPM2_ALG,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMA_OBJECT,
        TPMS_SENSITIVE_CREATE,
        TPMT_PUBLIC,
    )

    data = luks_dump(image.path)["tokens"][str(token_id)]  # type: ignore[index]
    policy = bytes.fromhex(data["seals"][0]["policy_digest"])
    with open_tpm(t.tcti) as esapi:
        parent = esapi.tr_from_tpmpublic(SRK)
        public = TPM2B_PUBLIC(TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256,
                                          objectAttributes=TPMA_OBJECT.FIXEDPARENT,
                                          authPolicy=policy))  # fmt: skip
        public.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
        sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=b"attacker", data=b"x" * 32))
        priv, pub, _, _, _ = esapi.create(parent, sens, public)
        serialized = bytes(esapi.tr_serialize(parent))
        name = bytes(esapi.tr_get_name(parent))
        esapi.tr_close(parent)
    data["srk"].update(name=name.hex(), esys_tr=base64.b64encode(serialized).decode())
    data["seals"][0].update(private=base64.b64encode(bytes(priv.marshal())).decode(),
                            public=base64.b64encode(bytes(pub.marshal())).decode())  # fmt: skip
    replace_token(image, token_id, data)


def test_local_root_imported_srk_is_refused_before_any_pin(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, weak_kdf: None, tmp_path: Path
) -> None:
    token_id = enroll_pin(image, other_swtpm.tcti)
    _plant_imported_srk(other_swtpm, tmp_path / "attacker")
    # the header alone (genuine SRK name) no longer matches the planted key
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert isinstance(err, WrongTpm) and asked == [] and proxy.names() == ["ReadPublic"], err
    # with the header edited to match, the name check passes: the attribute check must stop it
    _reseal_under_planted_key(image, other_swtpm, token_id)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert isinstance(err, WrongTpm) and "not a storage key generated inside this TPM" in err.message, err
    assert asked == [] and proxy.names() == ["ReadPublic"]
    assert other_swtpm.loaded_handles() == []


def test_control_local_root_imported_srk_leaks_the_pin_without_the_attribute_check(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, weak_kdf: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    token_id = enroll_pin(image, other_swtpm.tcti)
    key = _plant_imported_srk(other_swtpm, tmp_path / "attacker")
    _reseal_under_planted_key(image, other_swtpm, token_id)
    monkeypatch.setattr(srk_mod, "is_tpm_resident_parent", lambda public: True)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert asked == [1] and isinstance(err, PinRejected), err
    seal = the_token(image).seals[0]
    assert seal.pin_kdf is not None
    assert offline_pin_search(proxy.commands, key, seal.sealed.public, seal.pin_kdf) == PIN
    other_swtpm.clear_lockout()
    assert other_swtpm.loaded_handles() == []


# ------------------------------------------------------------------ attack 3: checks without a PIN


def test_ten_pinless_checks_cost_no_dictionary_attack_try(image: Image, other_swtpm: Swtpm, proxy: TpmProxy) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=PIN + b"\n")  # fmt: skip
    dev = f"--tpm2-device={ptcti(proxy)}"
    before = lockout_counter(other_swtpm)
    proxy.reset()
    runs = [("test-unlock", image.dev, dev), ("list", image.dev, dev), ("unlock", image.dev, dev)]
    results = []
    for i in range(10):
        argv = runs[i % 3]
        mode = i % 3  # stdin closed, empty, or an empty line
        if mode == 2:
            p = run_cli(*argv, stdin=b"\n", check=None)
        else:
            p = subprocess.run([*_python_m(), *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env=_env(), preexec_fn=_close_stdin if mode == 0 else None)  # fmt: skip
        results.append((argv[0], p.returncode, p.stdout + p.stderr))
    for cmd, rc, out in results:
        if cmd == "list":
            assert rc == 0, out
        else:
            assert rc == 12 and "needs a PIN" in out and "wrong PIN" not in out, (cmd, rc, out)
    names = proxy.names()
    assert "Load" not in names and "Unseal" not in names and "PolicyAuthValue" not in names, names
    assert lockout_counter(other_swtpm) == before == 0
    assert other_swtpm.loaded_handles() == []


def test_json_says_pin_required(image: Image, other_swtpm: Swtpm) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=PIN + b"\n")  # fmt: skip
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--json", check=12)
    [r] = json.loads(p.stdout)["results"]
    assert r["ok"] is False and r["error_kind"] == "PinRequired"


def test_control_an_empty_auth_does_cost_a_try(
    image: Image, other_swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control for the counter reading: the old behaviour (an empty PIN sent as an authValue) moves it."""
    import tpmseal.unlock

    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=PIN + b"\n")  # fmt: skip
    before = lockout_counter(other_swtpm)
    monkeypatch.setattr(tpmseal.unlock, "need_pin", lambda pin: bytearray(b"\0"))  # what an empty PIN became
    monkeypatch.setattr(PinKdf, "derive", lambda self, pin: Secret(hashlib.sha256(b"").digest()))
    with pytest.raises(PinRejected), open_tpm(other_swtpm.tcti) as esapi:
        unseal_token(esapi, the_token(image), lambda: bytearray())
    assert lockout_counter(other_swtpm) == before + 1
    other_swtpm.clear_lockout()
    assert lockout_counter(other_swtpm) == 0


def test_pinless_token_whose_unseal_fails_is_not_reported_as_a_wrong_pin(
    image: Image, other_swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token without PIN, its session salted to a key the TPM does not hold (header SRK, old behaviour):
    the TPM refuses the session; that is never a "wrong PIN"."""
    import tpmseal.unlock

    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    [(t, _)] = native_tokens(Volume(image.dev).header())
    _swap_header_srk(image, t.id, ec.generate_private_key(ec.SECP256R1()))
    monkeypatch.setattr(tpmseal.unlock, "srk_from_tpm", srk_mod.srk_from_ref)
    with open_tpm(other_swtpm.tcti) as esapi, pytest.raises(Exception) as info:
        unseal_token(esapi, the_token(image), lambda: bytearray(PIN))
    assert isinstance(info.value, WrongTpm), repr(info.value)
    assert not isinstance(info.value, (PinRejected, PinRequired)), info.value
    assert "PIN" not in str(info.value).replace("no PIN is involved", "")
    assert lockout_counter(other_swtpm) == 0
    assert other_swtpm.loaded_handles() == []


def _close_stdin() -> None:
    import os

    os.close(0)


def _python_m() -> list[str]:
    import sys

    return [sys.executable, "-m", "tpmseal"]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "TSS2_LOG": "all+none"}


def test_a_refused_pin_is_not_tried_on_the_next_token(image: Image, other_swtpm: Swtpm, proxy: TpmProxy) -> None:
    """Two PIN tokens, one wrong PIN: one dictionary-attack try, not one per token."""
    for extra in ([], ["--token-type=systemd-tpm2"]):
        run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
                str(image.keyfile), *extra, stdin=PIN + b"\n")  # fmt: skip
    proxy.reset()
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={ptcti(proxy)}", "--json", stdin=b"9999\n", check=6)
    results = json.loads(p.stdout)["results"]
    assert [r["error_kind"] for r in results] == ["PinRejected", "PinRejected"], results
    assert "not tried" in results[1]["error"]
    assert proxy.count("Unseal") == 1
    assert lockout_counter(other_swtpm) == 1
    other_swtpm.clear_lockout()
    run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", stdin=PIN + b"\n")


def test_an_empty_line_at_the_pin_prompt_asks_again(image: Image, other_swtpm: Swtpm) -> None:
    """On a terminal (a pty here): Enter alone asks again, nothing reaches the TPM, then the PIN works."""
    import os
    import select
    import sys
    import termios
    import time
    from fcntl import ioctl

    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=PIN + b"\n")  # fmt: skip
    master, slave = os.openpty()

    def controlling_tty() -> None:
        os.setsid()
        ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "tpmseal", "test-unlock", image.dev,
                             f"--tpm2-device={other_swtpm.tcti}"], stdin=slave, stdout=slave, stderr=slave,
                            env=_env(), preexec_fn=controlling_tty)  # fmt: skip
    os.close(slave)
    seen = b""

    def wait_for(count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while seen.count(b"TPM2 PIN for") < count and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert seen.count(b"TPM2 PIN for") >= count, seen

    try:
        wait_for(1)
        os.write(master, b"\n")
        wait_for(2)
        assert lockout_counter(other_swtpm) == 0
        os.write(master, PIN + b"\n")
        assert proc.wait(timeout=60) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert lockout_counter(other_swtpm) == 0


def test_systemd_tpm2_srk_from_the_header_is_checked_against_the_tpm_before_the_pin(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy
) -> None:
    """``tpm2_srk`` (systemd ≥ 254) replaced by the attacker's key: refused after one ReadPublic, no PIN."""
    from tpmseal.interop.systemd_tpm2 import parse_systemd_tpm2, unseal_systemd_tpm2

    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    run_cli("enroll", image.dev, f"--tpm2-device={other_swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), "--token-type=systemd-tpm2", stdin=PIN + b"\n")  # fmt: skip
    [t] = [t for t in Volume(image.dev).header().tokens.values() if t.type == "systemd-tpm2"]
    raw, _ = fake_esys_tr(attacker_public(ec.generate_private_key(ec.SECP256R1()), SRK_ATTRS))
    token = parse_systemd_tpm2({**t.data, "tpm2_srk": base64.b64encode(raw).decode()})
    asked: list[int] = []

    def source() -> bytearray:
        asked.append(1)
        return bytearray(PIN)

    proxy.reset()
    with pytest.raises(WrongTpm, match="not the SRK this token was sealed under"), open_tpm(ptcti(proxy)) as esapi:
        unseal_systemd_tpm2(esapi, token, source)
    assert asked == [] and proxy.names() == ["PCR_Read", "ReadPublic"], proxy.names()
    assert lockout_counter(other_swtpm) == 0
    assert other_swtpm.loaded_handles() == []
