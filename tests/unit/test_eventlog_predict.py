# SPDX-License-Identifier: LGPL-2.1-or-later
"""Event log parsing and replay, PCR prediction and the ``authorize`` seal format, against event logs
recorded from real OVMF boots (tests/unit/fixtures/eventlog, recorded by record.py there)."""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.luks.tokens import NativeToken, Seal, SignedPolicy, parse_native, render_native
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.tpm.policy import policy_digest
from tpmseal.tpm.seal import PinKdf, SealedObject
from tpmseal.tpm.srk import SrkRef
from tpmseal.update import eventlog as el
from tpmseal.update.description import sign_description
from tpmseal.update.predict import PREDICTED, REPLAYED, UNPREDICTABLE, cmdline_digest, predict, self_check
from tpmseal.update.reseal import check, target_state
from tpmseal.update.signed import (
    authorize_policy,
    der_signature,
    key_name,
    make_approval,
    policy_key_from_private,
    verify_approval_offline,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eventlog"


def boot(name: str) -> tuple[el.EventLog, dict[str, object]]:
    log = el.parse((FIXTURES / f"ovmf-{name}.bin").read_bytes())
    meta = json.loads((FIXTURES / f"ovmf-{name}.json").read_text())
    return log, meta


def pcrs_of(meta: dict[str, object]) -> dict[int, bytes]:
    values = meta["pcrs_sha256"]
    assert isinstance(values, dict)
    return {int(k): bytes.fromhex(v) for k, v in values.items()}


@pytest.mark.parametrize("name", ["a", "b"])
def test_replay_equals_the_pcrs_the_guest_read(name: str) -> None:
    log, meta = boot(name)
    assert log.banks == {"sha256": 32}
    replayed = log.replay("sha256")
    assert set(replayed) == {0, 1, 2, 3, 4, 5, 6, 7, 9}
    tpm = pcrs_of(meta)
    assert {i: tpm[i] for i in replayed} == replayed
    assert all(tpm[i] == bytes(32) for i in (8, 11, 12, 13, 14, 15, 16, 23))  # nothing measured there


def test_events_of_pcr9_are_the_efi_stubs_tagged_events() -> None:
    log, meta = boot("a")
    ev = log.by_pcr(9)
    assert [(e.type_name, e.tag) for e in ev] == [
        ("EV_EVENT_TAG", el.LINUX_LOAD_OPTIONS_TAG),
        ("EV_EVENT_TAG", el.LINUX_INITRD_TAG),
    ]
    assert "LoadOptions" in ev[0].describe() and "Linux initrd" in ev[1].describe()
    assert ev[1].digests["sha256"].hex() == meta["initrd_sha256"]
    # OVMF appends " initrd=initrd" under -kernel; the stub measures UTF-16LE + NUL
    assert ev[0].digests["sha256"] == cmdline_digest(f"{meta['append']} initrd=initrd")
    assert self_check(log, f"{meta['append']} initrd=initrd") is True
    assert self_check(log, str(meta["append"])) is False


def test_predict_boot_b_from_the_log_of_boot_a_and_the_files_of_b() -> None:
    log_a, meta_a = boot("a")
    _, meta_b = boot("b")
    assert meta_a["initrd_sha256"] != meta_b["initrd_sha256"] and meta_a["append"] != meta_b["append"]
    pred = predict(log_a, initrd_digest=bytes.fromhex(str(meta_b["initrd_sha256"])),
                   cmdline=f"{meta_b['append']} initrd=initrd")  # fmt: skip
    tpm_b = pcrs_of(meta_b)
    assert pred.status[9] == PREDICTED and pred.values[9] == tpm_b[9] != pcrs_of(meta_a)[9]
    # PCR 4 moved too (qemu patches the kernel header with the initramfs size): reported, not guessed
    assert pred.status[4] == UNPREDICTABLE and 4 not in pred.values and tpm_b[4] != pcrs_of(meta_a)[4]
    for i in (0, 1, 2, 3, 5, 6, 7):
        assert pred.status[i] == REPLAYED and pred.values[i] == tpm_b[i]
    assert len(pred.replaced) == 2 and pred.notes


def test_predict_without_changes_is_the_replay() -> None:
    log, _meta = boot("a")
    pred = predict(log)
    assert pred.values == log.replay() and pred.status[9] == REPLAYED


def test_predict_refuses_when_the_log_has_no_stub_events() -> None:
    log, _ = boot("a")
    stripped = el.EventLog(log.banks, tuple(e for e in log.events if e.pcr != 9))
    with pytest.raises(el.EventLogError, match="no 'Linux initrd' event"):
        predict(stripped, initrd_digest=bytes(32))


def test_parse_rejects_damaged_logs() -> None:
    data = (FIXTURES / "ovmf-a.bin").read_bytes()
    with pytest.raises(el.EventLogError, match="truncated"):
        el.parse(data[:-5])
    with pytest.raises(el.EventLogError, match="crypto-agile"):
        el.parse(data[:32] + b"X" + data[33:])
    with pytest.raises(el.EventLogError):
        el.parse(b"")
    # trailing padding is tolerated and noted
    assert el.parse(data + bytes(16)).notes


def test_startup_locality_sets_pcr0_start() -> None:
    log, _ = boot("a")
    loc = el.Event(99, 0, el.EV_NO_ACTION, {"sha256": bytes(32)}, el.STARTUP_LOCALITY_SIGNATURE + b"\x03")
    spec = (FIXTURES / "ovmf-a.bin").read_bytes()
    raw = struct.pack("<III", 0, el.EV_NO_ACTION, 1) + struct.pack("<H", 0x000B) + bytes(32)
    raw += struct.pack("<I", len(loc.data)) + loc.data
    first_len = 4 + 4 + 20 + 4 + struct.unpack_from("<I", spec, 28)[0]
    with_loc = el.parse(spec[:first_len] + raw + spec[first_len:])
    assert with_loc.startup_locality == 3
    assert with_loc.replay()[0] != log.replay()[0]
    assert with_loc.replay()[1] == log.replay()[1]


# --------------------------------------------------------------------------- authorize seals


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return policy_key_from_private(ec.generate_private_key(ec.SECP256R1()))


def signed_token(approvals: int = 1, pin: bool = False) -> NativeToken:
    key = _key()
    ref = b"r" * 16
    states = [PcrSelection("sha256", (Pcr(9, bytes([i + 1]) * 32), Pcr(15, bytes(32)))) for i in range(approvals)]
    approved = tuple(make_approval(key, s, ref, "current" if i == 0 else "next-boot") for i, s in enumerate(states))
    fixed = PcrSelection("sha256", ())
    signed = SignedPolicy(key.public, key.name, ref, fixed, approved)
    seal = Seal(
        "enrolled",
        states[0],
        authorize_policy(key.name, ref, fixed, pin),
        pin,
        PinKdf(b"salt" * 4) if pin else None,
        SealedObject(b"private", b"public"),
        signed,
    )
    seal = replace(seal, signed=replace(signed, description=sign_description(key, seal, (9, 15))))
    return NativeToken(
        keyslots=(1,),
        created="2026-11-26T04:30:00Z",
        srk=SrkRef(0x81000001, b"\x00\x0b" + bytes(32), b"serialized-esys-tr"),
        seals=(seal,),
        luks_uuid="0214c1ea-c709-4951-a9fb-97e9ee904ad3",
    )


@pytest.mark.parametrize("pin", [False, True])
def test_authorize_seal_round_trips(pin: bool) -> None:
    t = signed_token(2, pin)
    data = json.loads(json.dumps(render_native(t)))
    seal = data["seals"][0]
    assert seal["kind"] == "authorize" and seal["pcrs"] == []
    assert [a["label"] for a in seal["approved"]] == ["current", "next-boot"]
    assert parse_native(data) == t


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda s: s.update(extra=1), TokenCorrupt),
        (lambda s: s["approved"][0].update(extra=1), TokenCorrupt),
        (lambda s: s.update(approved=[]), TokenCorrupt),
        (lambda s: s["approved"][0].update(policy="00" * 32), TokenCorrupt),  # not the PCR values' digest
        (lambda s: s["approved"][0]["pcrs"][0].update(value="ff" * 32), TokenCorrupt),
        (lambda s: s.update(key_name="00"), TokenCorrupt),
        (lambda s: s.pop("public_key"), TokenCorrupt),
        (lambda s: s.update(kind="signed-v2"), TokenUnsupported),
        (lambda s: s["description"].update(extra=1), TokenCorrupt),
        (lambda s: s["description"].pop("signature"), TokenCorrupt),
        (lambda s: s["description"].update(version=2), TokenUnsupported),
        (lambda s: s["description"].update(signed_pcrs=[15, 9]), TokenCorrupt),
        (lambda s: s["description"].update(signed_pcrs=[9, 9]), TokenCorrupt),
        (lambda s: s["description"].update(signed_pcrs=[]), TokenCorrupt),
        (lambda s: s["description"].update(signed_pcrs=[24]), TokenCorrupt),
        (lambda s: s["description"].update(signed_pcrs=[True]), TokenCorrupt),
        (lambda s: s["description"].update(signature="not base64!"), TokenCorrupt),
        (lambda s: s.update(description=None), TokenCorrupt),
    ],
)
def test_authorize_seal_is_parsed_strictly(edit, error) -> None:  # type: ignore[no-untyped-def]
    data = render_native(signed_token())
    bad = copy.deepcopy(data)
    edit(bad["seals"][0])
    with pytest.raises(error):
        parse_native(bad)


def test_unknown_kind_is_named() -> None:
    data = render_native(signed_token())
    data["seals"][0]["kind"] = "quote"
    with pytest.raises(TokenUnsupported, match="policy kind 'quote' is not supported"):
        parse_native(data)


def test_key_name_and_signatures() -> None:
    key = _key()
    assert key.name == key_name(key.public) and key.name[:2] == b"\x00\x0b" and len(key.public) == 88
    sel = PcrSelection("sha256", (Pcr(9, b"\x09" * 32),))
    a = make_approval(key, sel, b"ref", "next-boot")
    assert a.policy == policy_digest(sel, False)
    assert verify_approval_offline(key.public, a, b"ref")
    assert not verify_approval_offline(key.public, a, b"other ref")
    assert not verify_approval_offline(_key().public, a, b"ref")
    r, s = der_signature(a.signature)
    assert 0 < r < 2**256 and 0 < s < 2**256
    with pytest.raises(TokenCorrupt):
        der_signature(a.signature + b"\0")
    with pytest.raises(TokenCorrupt):
        der_signature(b"\x30\x02\x02\x00")


def test_authorize_policy_digest_layout() -> None:
    name = b"\x00\x0b" + bytes(32)
    cc = struct.pack(">I", 0x16A)
    expect = hashlib.sha256(hashlib.sha256(bytes(32) + cc + name).digest() + b"ref").digest()
    assert authorize_policy(name, b"ref", PcrSelection("sha256", ()), False) == expect
    with_pin = hashlib.sha256(expect + struct.pack(">I", 0x16B)).digest()
    assert authorize_policy(name, b"ref", PcrSelection("sha256", ()), True) == with_pin


def test_target_state_puts_pcr15_at_zero_and_refuses_unpredictable_pcrs() -> None:
    t = signed_token()
    seal = t.seals[0]
    sel = target_state(seal, {9: b"\x07" * 32, 15: b"\xee" * 32}, {9: PREDICTED})
    assert sel.pcrs == (Pcr(9, b"\x07" * 32), Pcr(15, bytes(32)))
    with pytest.raises(Exception, match="no predicted value"):
        target_state(seal, {9: b"\x07" * 32}, {9: UNPREDICTABLE})


def test_check_says_which_approval_matches(tmp_path: Path) -> None:
    from tpmseal.luks.volume import Header, Token

    t = signed_token(2)
    header = Header(keyslots={}, tokens={0: Token(0, "tpmseal-tpm2", (1,), render_native(t))})
    [v] = check("disk", header, {9: b"\x02" * 32}, None)
    assert v.will_unlock and v.approval == "next-boot"
    [v] = check("disk", header, {9: b"\x03" * 32}, None)
    assert not v.will_unlock and "'current': PCR(s) 9 differ" in v.reasons[0]
    [v] = check("disk", header, {9: b"\x02" * 32}, {9: UNPREDICTABLE})
    assert not v.will_unlock and "cannot be predicted" in v.reasons[0]
