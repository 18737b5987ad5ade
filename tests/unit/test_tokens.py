# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import base64
import copy
import hashlib
import json

import pytest

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.luks.tokens import NativeToken, Seal, parse_native, render_native
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.tpm.seal import LEGACY_HMAC, PinKdf, SealedObject
from tpmseal.tpm.srk import SrkRef

pytestmark = pytest.mark.unit


def sample(pin: bool = False, kdf: PinKdf | None = None) -> NativeToken:
    return NativeToken(
        keyslots=(1,),
        created="2026-11-26T04:30:00Z",
        srk=SrkRef(0x81000001, b"\x00\x0b" + bytes(32), b"serialized-esys-tr"),
        seals=(
            Seal(
                "enrolled",
                PcrSelection("sha256", (Pcr(7, bytes(32)), Pcr(11, b"\x01" * 32))),
                b"\x02" * 32,
                pin,
                (kdf or PinKdf(b"salt" * 4)) if pin else None,
                SealedObject(b"private-bytes", b"public-bytes"),
            ),
        ),
        luks_uuid="0214c1ea-c709-4951-a9fb-97e9ee904ad3",
    )


@pytest.mark.parametrize("pin", [False, True])
def test_native_token_round_trips(pin: bool) -> None:
    t = sample(pin)
    data = json.loads(json.dumps(render_native(t)))
    assert parse_native(data) == t


def test_rendered_token_has_the_documented_fields() -> None:
    data = render_native(sample())
    assert set(data) == {"type", "keyslots", "version", "created", "luks_uuid", "srk", "seals"}
    assert data["type"] == "tpmseal-tpm2" and data["version"] == 1 and data["keyslots"] == ["1"]
    assert data["srk"]["handle"] == "0x81000001"
    assert set(data["seals"][0]) == {
        "kind", "label", "pcr_bank", "pcrs", "policy_digest", "pin", "pin_salt", "private", "public"
    }  # fmt: skip


def test_a_pin_token_is_version_2_with_its_scrypt_parameters() -> None:
    data = render_native(sample(pin=True))
    assert data["version"] == 2
    assert data["seals"][0]["pin_kdf"] == {"algorithm": "scrypt", "log2_n": 14, "r": 8, "p": 1}
    assert base64.b64decode(data["seals"][0]["pin_salt"]) == b"salt" * 4


def test_a_version_1_pin_token_still_reads_as_the_legacy_hmac() -> None:
    data = render_native(sample(pin=True))
    data["version"] = 1
    del data["seals"][0]["pin_kdf"]
    t = parse_native(data)
    assert t.seals[0].pin_kdf == PinKdf(b"salt" * 4, LEGACY_HMAC, 0, 0, 0)
    assert render_native(t) == data  # and is written back as version 1


def test_pin_kdfs_derive_the_documented_values() -> None:
    pin = bytearray(b"1234")
    salt = b"salt" * 4
    with PinKdf(salt).derive(pin) as auth:
        assert auth.buffer == hashlib.scrypt(b"1234", salt=salt, n=1 << 14, r=8, p=1, dklen=32)
    # version 1's one HMAC is never derived: a header edit could downgrade a seal to it (review R1)
    with pytest.raises(TokenUnsupported, match="unstretched"):
        PinKdf(salt, LEGACY_HMAC, 0, 0, 0).derive(pin)
    with pytest.raises(ValueError):
        PinKdf(salt).derive(bytearray())


BAD_PIN = [
    (lambda d: d.update(version=1), TokenCorrupt, "unknown field(s) pin_kdf"),
    (lambda d: d["seals"][0].pop("pin_kdf"), TokenCorrupt, "needs a KDF"),
    (lambda d: d["seals"][0]["pin_kdf"].update(algorithm="pbkdf2"), TokenUnsupported, "PIN KDF 'pbkdf2'"),
    (lambda d: d["seals"][0]["pin_kdf"].update(log2_n=4), TokenCorrupt, "log2_n: must be 14-16"),
    (lambda d: d["seals"][0]["pin_kdf"].update(log2_n=17), TokenCorrupt, "log2_n: must be 14-16"),
    (lambda d: d["seals"][0]["pin_kdf"].update(r=0), TokenCorrupt, "scrypt r must be"),
    (lambda d: d["seals"][0]["pin_kdf"].update(r=1), TokenCorrupt, "scrypt r must be"),  # 8x cheaper
    (lambda d: d["seals"][0]["pin_kdf"].update(log2_n=16, r=16), TokenCorrupt, "at most 64 MiB"),  # 128 MiB
    (lambda d: d["seals"][0]["pin_kdf"].update(log2_n=16, r=8, p=4), TokenCorrupt, "at most 2"),  # 16x work
    (lambda d: d["seals"][0]["pin_kdf"].update(p=True), TokenCorrupt, "p: expected an integer"),
    (lambda d: d["seals"][0]["pin_kdf"].update(extra=1), TokenCorrupt, "unknown field(s) extra"),
    (lambda d: d["seals"][0].update(pin=False), TokenCorrupt, "no salt and no KDF"),
]


@pytest.mark.parametrize(("mutate", "exc", "text"), BAD_PIN)
def test_parser_rejects_bad_or_weakened_pin_kdfs(mutate, exc: type[Exception], text: str) -> None:
    """A header edit cannot downgrade the PIN's stretching below the minimum, nor mix the versions."""
    data = copy.deepcopy(render_native(sample(pin=True)))
    mutate(data)
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        parse_native(data)


def test_a_version_1_token_without_pin_has_no_kdf() -> None:
    data = render_native(sample())
    data["seals"][0]["pin_kdf"] = None
    with pytest.raises(TokenCorrupt, match="unknown field"):
        parse_native(data)


BAD = [
    (lambda d: d.update(version=99), TokenUnsupported, "version 99"),
    (lambda d: d.update(version="1"), TokenCorrupt, "version: expected an integer"),
    (lambda d: d.update(type="other"), TokenCorrupt, "type"),
    (lambda d: d.pop("created"), TokenCorrupt, "missing field(s) created"),
    (lambda d: d.update(bogus=True), TokenCorrupt, "unknown field(s) bogus"),
    (lambda d: d.update(keyslots=[1]), TokenCorrupt, "keyslots"),
    (lambda d: d["srk"].update(handle="0x01000001"), TokenCorrupt, "persistent handle"),
    (lambda d: d["srk"].update(name="XYZ"), TokenCorrupt, "lowercase hex"),
    (lambda d: d["seals"][0].update(pcr_bank="md5"), TokenUnsupported, "bank 'md5'"),
    (lambda d: d["seals"][0]["pcrs"].reverse(), TokenCorrupt, "ascending"),
    (lambda d: d["seals"][0]["pcrs"][0].update(index=24), TokenCorrupt, "0-23"),
    (lambda d: d["seals"][0].update(pin=True), TokenCorrupt, "needs a salt"),
    (lambda d: d["seals"][0].update(policy_digest="00"), TokenCorrupt, "32 bytes"),
    (lambda d: d["seals"][0].pop("private"), TokenCorrupt, "missing field(s) private"),
    (lambda d: d.update(seals={}), TokenCorrupt, "non-empty list"),
    (lambda d: d.update(seals=["x"]), TokenCorrupt, "expected an object"),
]


@pytest.mark.parametrize(("mutate", "exc", "text"), BAD)
def test_parser_rejects_what_it_does_not_understand(mutate, exc: type[Exception], text: str) -> None:
    data = copy.deepcopy(render_native(sample()))
    mutate(data)
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        parse_native(data)


@pytest.mark.parametrize("data", [None, [], "x", 1, {"type": "tpmseal-tpm2"}])
def test_parser_rejects_non_tokens(data: object) -> None:
    with pytest.raises(TokenCorrupt):
        parse_native(data)


def test_pending_marker_round_trips_and_the_parser_is_strict() -> None:
    from tpmseal.luks.tokens import Pending, parse_pending, pending_marker

    m = pending_marker(3, 4242, "recovery")
    assert parse_pending(m) == Pending(3, "recovery", 4242)
    v1 = {"type": "tpmseal-pending", "keyslots": [], "version": 1, "keyslot": "3", "started": "x"}
    assert parse_pending(v1) == Pending(3, "tpm2", None)  # read, but it proves nothing
    bad: list[dict[str, object]] = [
        {**m, "extra": 1},
        {**m, "keyslots": ["3"]},
        {**m, "keyslot": "²"},
        {**m, "version": 3},
        {**m, "purpose": "other"},
        {**m, "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": 4242}},
        {**m, "kdf": {"type": "argon2id", "hash": "sha512", "iterations": 4242}},
        {**m, "kdf": {"type": "pbkdf2", "hash": "sha512", "iterations": 1000}},  # systemd's count: no fingerprint
        {**m, "kdf": {"type": "pbkdf2", "hash": "sha512", "iterations": True}},
        {**m, "kdf": {"type": "pbkdf2", "hash": "sha512", "iterations": 4242, "more": 1}},
        {**v1, "kdf": m["kdf"]},
    ]
    for b in bad:
        assert parse_pending(b) is None, b
