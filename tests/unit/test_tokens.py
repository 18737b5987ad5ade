# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import copy
import json

import pytest

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.luks.tokens import NativeToken, Seal, parse_native, render_native
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject
from tpmseal.tpm.srk import SrkRef

pytestmark = pytest.mark.unit


def sample(pin: bool = False) -> NativeToken:
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
                b"salt" * 4 if pin else None,
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
