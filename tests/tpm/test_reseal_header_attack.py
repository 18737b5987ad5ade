# SPDX-License-Identifier: LGPL-2.1-or-later
"""Issue 16, attack 1: reseal must sign only the PCR set fixed (and signed) at enrollment, never the one an
edited header asks for. The attacker holds the disk: it edits only the LUKS2 header (token export/import)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from support import Image, Swtpm, luks_dump, opens, run_cli

from tpmseal import cli
from tpmseal.errors import ExitCode, TpmsealError
from tpmseal.luks.tokens import parse_native
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import Pcr, PcrSelection, parse_pcrs
from tpmseal.tpm.policy import policy_digest
from tpmseal.unlock import keyslot_passphrase, unseal_token
from tpmseal.update import description as desc
from tpmseal.update import reseal as rs
from tpmseal.update.signed import enroll_signed, ensure_policy_key, load_policy_key, verify_approval_offline

pytestmark = pytest.mark.tpm

BOGUS = bytes.fromhex("ab" * 32)
EVENTLOG = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "eventlog" / "ovmf-a.bin"


def _token(image: Image) -> tuple[int, dict[str, Any]]:
    tokens = luks_dump(image.path)["tokens"]
    assert isinstance(tokens, dict)
    [(tid, data)] = [(int(k), v) for k, v in tokens.items() if v["type"] == "tpmseal-tpm2"]
    return tid, data


def _enroll(image: Image, tpm: Swtpm, key: Path) -> None:
    with Secret.take(bytearray(image.keyfile.read_bytes())) as unlock:
        enroll_signed(Volume(image.dev), unlock, tpm.tcti, parse_pcrs("7"), None, None, key_path=str(key))


def _attacker_seal(real: dict[str, Any], pcr: int, *, copy_description: bool = False) -> dict[str, Any]:
    """A second seal: the real sealed object, key_name and policy_ref, one approval naming ``pcr`` alone
    (a bogus value) whose signature is copied from the real approval (so it does not verify)."""
    seal = copy.deepcopy(real)
    seal["label"] = "backup"
    sel = PcrSelection("sha256", (Pcr(pcr, BOGUS),))
    seal["approved"] = [{
        "label": "current", "created": real["approved"][0]["created"],
        "pcrs": [{"index": pcr, "value": BOGUS.hex()}], "policy": policy_digest(sel, False).hex(),
        "signature": real["approved"][0]["signature"],
    }]  # fmt: skip
    if not copy_description:
        seal.pop("description", None)
    return seal


def _tamper(image: Image, pcr: int, **kw: bool) -> None:
    """What the holder of the disk does offline: export the token, append a seal, import it back."""
    tid, data = _token(image)
    data["seals"].append(_attacker_seal(data["seals"][0], pcr, **kw))
    Volume(image.dev).import_token(data, tid, replace=True)


def _reseal(image: Image, tpm: Swtpm, key: Path, mode: str) -> int:
    argv = ["reseal", image.dev, f"--private-key={key}", f"--tpm2-device={tpm.tcti}", f"--{mode}"]
    if mode == "next-boot":
        argv.append(f"--eventlog={EVENTLOG}")
    return cli.main(argv)


def _unseals(image: Image, tpm: Swtpm) -> bool:
    _, data = _token(image)
    try:
        with (
            open_tpm(tpm.tcti) as esapi,
            unseal_token(esapi, parse_native(data)) as raw,
            keyslot_passphrase(raw) as phrase,
        ):
            return opens(image.path, bytes(phrase.buffer))
    except TpmsealError:
        return False
    finally:
        assert tpm.loaded_handles() == []


def _signed_pcr_sets(image: Image, key: Path) -> list[tuple[int, ...]]:
    """PCR index sets of every approval in the header whose signature verifies under the real key."""
    k = load_policy_key(str(key))
    _, data = _token(image)
    out = []
    for s in parse_native(data).seals:
        assert s.signed is not None
        out += [a.pcrs.indexes for a in s.signed.approved if verify_approval_offline(k.public, a, s.signed.policy_ref)]
    return out


def _attacker_boot(tpm: Swtpm, pcr: int) -> None:
    """The attacker's boot state: other code in PCR 7; for PCR 16 also after the volumes were measured."""
    tpm.extend(7, b"attacker's boot loader")
    if pcr == 16:
        tpm.extend(15, b"volumes measured")
        tpm.tool("tpm2_pcrreset", "16")


def _weaken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check taken away: reseal trusts the header as main did (the PCR set is the union of what the
    approvals name, every approval is kept and used)."""

    def header_says(key: object, seal: Any, where: str) -> desc.Trusted:
        indexes = tuple(sorted({i for a in seal.signed.approved for i in a.pcrs.indexes}))
        return desc.Trusted(seal.pcrs.bank, indexes, seal.signed.approved)

    monkeypatch.setattr(rs, "authenticate", header_says)


def _real_seal_approved(image: Image, tpm: Swtpm, mode: str) -> bool:
    """The real seal (index 0) got an approval for the state reseal was asked for (availability)."""
    _, data = _token(image)
    seal = parse_native(data).seals[0]
    assert seal.signed is not None
    want = {7: _log_pcr7()} if mode == "next-boot" else {7: tpm.pcr(7)}
    return any(a.pcrs.pcrs[0].value == want[7] for a in seal.signed.approved)


def _log_pcr7() -> bytes:
    from tpmseal.update.eventlog import load

    return load(str(EVENTLOG)).replay("sha256")[7]


ATTACKS = [(15, "next-boot"), (15, "current"), (16, "next-boot"), (16, "current")]


@pytest.mark.parametrize(("pcr", "mode"), ATTACKS)
def test_added_seal_does_not_get_its_pcr_set_signed(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, pcr: int, mode: str
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _tamper(image, pcr)
    assert _unseals(image, other_swtpm)  # nothing looks different: the token still opens
    assert _reseal(image, other_swtpm, key, mode) == ExitCode.TOKEN  # the added seal is refused, loudly
    assert _real_seal_approved(image, other_swtpm, mode)  # the real seal still gets its approval
    assert all(s == (7, 15) for s in _signed_pcr_sets(image, key)), _signed_pcr_sets(image, key)
    _attacker_boot(other_swtpm, pcr)
    assert not _unseals(image, other_swtpm)


@pytest.mark.parametrize(("pcr", "mode"), ATTACKS)
def test_control_attack_works_when_reseal_trusts_the_header(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, pcr: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _tamper(image, pcr)
    _weaken(monkeypatch)
    rc = _reseal(image, other_swtpm, key, mode)
    if (pcr, mode) == (16, "next-boot"):
        # PCR 16 is not in the event log: even the weak reseal cannot predict it and signs nothing
        assert rc == ExitCode.FAILURE and all(s == (7, 15) for s in _signed_pcr_sets(image, key))
        return
    assert rc == 0 and (pcr,) in _signed_pcr_sets(image, key)
    _attacker_boot(other_swtpm, pcr)
    assert _unseals(image, other_swtpm)  # the key opens on the attacker's boot


@pytest.mark.parametrize("mode", ["next-boot", "current"])
def test_copied_description_is_useless_to_the_attacker(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, mode: str
) -> None:
    """The real description and its signature copied into the added seal: it verifies (same object, same
    policy_ref), so reseal signs for it exactly the enrolled PCRs, as for the real seal."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _tamper(image, 15, copy_description=True)
    assert _reseal(image, other_swtpm, key, mode) == 0
    assert all(s == (7, 15) for s in _signed_pcr_sets(image, key)), _signed_pcr_sets(image, key)
    _attacker_boot(other_swtpm, 15)
    assert not _unseals(image, other_swtpm)


def _edit_seal0(image: Image, edit: Any) -> None:
    tid, data = _token(image)
    edit(data["seals"][0])
    Volume(image.dev).import_token(data, tid, replace=True)


def test_edited_description_is_refused(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)

    def only_15(seal: dict[str, Any]) -> None:
        seal["description"]["signed_pcrs"] = [15]
        seal["approved"] = _attacker_seal(seal, 15)["approved"]

    _edit_seal0(image, only_15)
    assert _reseal(image, other_swtpm, key, "current") == ExitCode.TOKEN
    assert _signed_pcr_sets(image, key) == []  # nothing signed; the copied signature does not verify
    _attacker_boot(other_swtpm, 15)
    assert not _unseals(image, other_swtpm)


def test_description_signed_by_another_key_is_refused(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    """The attacker signs its own description (PCR 15 only) and leaves the real key_name in place."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    evil = ensure_policy_key(str(tmp_path / "evil.pem"))[0]
    tid, data = _token(image)
    seal = parse_native(data).seals[0]
    forged = desc.sign_description(evil, seal, (7, 15))  # check_pcr_choice refuses (15,) even for evil
    message = desc.seal_message(seal, seal.signed.key_name if seal.signed else b"", (15,))
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    sig = evil.private.sign(message, ec.ECDSA(hashes.SHA256()))
    for d, pcrs in ((forged.signature, [7, 15]), (sig, [15])):
        data["seals"][0]["description"] = {"version": 1, "signed_pcrs": pcrs, "signature": _b64(d)}
        data["seals"][0]["approved"] = _attacker_seal(data["seals"][0], 15)["approved"]
        Volume(image.dev).import_token(data, tid, replace=True)
        assert _reseal(image, other_swtpm, key, "current") == ExitCode.TOKEN
        assert _signed_pcr_sets(image, key) == []


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


@pytest.mark.parametrize("mode", ["next-boot", "current"])
def test_bogus_approval_is_never_a_template(image: Image, other_swtpm: Swtpm, tmp_path: Path, mode: str) -> None:
    """The real seal's approvals replaced by one bogus approval over PCR 15 alone: on main reseal took the
    PCR set from it. Now the set comes from the description, and the bogus approval is dropped."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _edit_seal0(image, lambda seal: seal.update(approved=_attacker_seal(seal, 15)["approved"]))
    assert _reseal(image, other_swtpm, key, mode) == 0
    _, data = _token(image)
    approved = data["seals"][0]["approved"]
    assert [[p["index"] for p in a["pcrs"]] for a in approved] == [[7, 15]]  # the bogus one is gone
    assert all(s == (7, 15) for s in _signed_pcr_sets(image, key))
    _attacker_boot(other_swtpm, 15)
    assert not _unseals(image, other_swtpm)


def test_control_bogus_approval_is_the_template_when_trusted(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _edit_seal0(image, lambda seal: seal.update(approved=_attacker_seal(seal, 15)["approved"]))
    _weaken(monkeypatch)
    assert _reseal(image, other_swtpm, key, "current") == 0
    assert (15,) in _signed_pcr_sets(image, key)
    _attacker_boot(other_swtpm, 15)
    assert _unseals(image, other_swtpm)


def _bogus_copy_of_target(seal: dict[str, Any], state: dict[int, bytes]) -> None:
    """A bogus approval (copied signature) naming exactly the state reseal is about to approve."""
    sel = PcrSelection("sha256", tuple(Pcr(i, v) for i, v in sorted(state.items())))
    seal["approved"].append({
        "label": "next-boot", "created": seal["approved"][0]["created"],
        "pcrs": [{"index": p.index, "value": (p.value or b"").hex()} for p in sel.pcrs],
        "policy": policy_digest(sel, False).hex(), "signature": seal["approved"][0]["signature"],
    })  # fmt: skip


def test_bogus_approval_of_the_target_state_does_not_stop_reseal(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    """On main a bogus approval naming the predicted state made reseal answer 'approved already', and the
    next boot fell back to the passphrase. It is not trusted now: reseal signs the state, and it opens."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _edit_seal0(image, lambda seal: _bogus_copy_of_target(seal, {7: _log_pcr7(), 15: bytes(32)}))
    assert _reseal(image, other_swtpm, key, "next-boot") == 0
    _, data = _token(image)
    assert [a["label"] for a in data["seals"][0]["approved"]] == ["current", "next-boot"]
    assert _signed_pcr_sets(image, key) == [(7, 15), (7, 15)]


def _cleanup_with_bogus_booted_state(image: Image, tpm: Swtpm, key: Path) -> list[dict[str, Any]]:
    """A bogus approval naming the state about to be booted; boot it; reseal --cleanup. The approvals left."""
    import hashlib

    new7 = hashlib.sha256(tpm.pcr(7) + hashlib.sha256(b"update").digest()).digest()
    _edit_seal0(image, lambda seal: _bogus_copy_of_target(seal, {7: new7, 15: bytes(32)}))
    tpm.extend(7, b"update")
    assert tpm.pcr(7) == new7
    assert cli.main(["reseal", image.dev, f"--private-key={key}", f"--tpm2-device={tpm.tcti}", "--cleanup"]) == 0
    _, data = _token(image)
    approved: list[dict[str, Any]] = data["seals"][0]["approved"]
    return approved


def test_cleanup_trusts_no_bogus_approval(image: Image, other_swtpm: Swtpm, tmp_path: Path) -> None:
    """A bogus approval matching the booted state must not make cleanup drop the real approval."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    old7 = other_swtpm.pcr(7)
    approved = _cleanup_with_bogus_booted_state(image, other_swtpm, key)
    assert [a["label"] for a in approved] == ["current", "next-boot"]  # nothing trusted matches: none removed
    assert approved[0]["pcrs"][0]["value"] == old7.hex()
    assert _signed_pcr_sets(image, key) == [(7, 15)]


def test_control_cleanup_drops_the_real_approval_when_it_trusts_the_header(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _weaken(monkeypatch)
    approved = _cleanup_with_bogus_booted_state(image, other_swtpm, key)
    assert len(approved) == 1 and _signed_pcr_sets(image, key) == []  # only the bogus one is left


def test_old_seal_without_description_is_refused_with_a_hint(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _edit_seal0(image, lambda seal: seal.pop("description"))
    assert _unseals(image, other_swtpm)  # old tokens keep unlocking
    for mode in ("current", "next-boot", "cleanup"):
        argv = ["reseal", image.dev, f"--private-key={key}", f"--tpm2-device={other_swtpm.tcti}", f"--{mode}"]
        if mode == "next-boot":
            argv.append(f"--eventlog={EVENTLOG}")
        assert cli.main(argv) == ExitCode.TOKEN
        err = capsys.readouterr().err
        assert "no signed description" in err and "re-enroll" in err and "--replace" in err
    assert _signed_pcr_sets(image, key) == [(7, 15)]


@pytest.mark.parametrize("pcrs", ["16", "7+23", "15"])
def test_enroll_refuses_pcr_sets_anyone_can_satisfy(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, pcrs: str
) -> None:
    with Secret.take(bytearray(image.keyfile.read_bytes())) as unlock, pytest.raises(TpmsealError) as e:
        enroll_signed(Volume(image.dev), unlock, other_swtpm.tcti, parse_pcrs(pcrs), None, None,
                      key_path=str(tmp_path / "k.pem"))  # fmt: skip
    assert "any" in e.value.message
    assert not any(t["type"] == "tpmseal-tpm2" for t in luks_dump(image.path)["tokens"].values())  # type: ignore[attr-defined]
    assert other_swtpm.loaded_handles() == []


def test_list_shows_the_added_seal_and_its_unverified_approval(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _tamper(image, 15)
    tpm = f"--tpm2-device={other_swtpm.tcti}"
    listing = json.loads(run_cli("list", image.dev, tpm, "--json").stdout)
    [token] = [t for t in listing["tokens"] if t["type"] == "tpmseal-tpm2"]
    real, added = token["seal_details"]
    assert (real["index"], real["description"], real["enrolled_pcrs"]) == (0, "valid", "7+15")
    assert [(a["pcrs"], a["signature_valid"], a["covers_enrolled_pcrs"]) for a in real["approvals"]] == [
        ("7+15", True, True)
    ]
    assert (added["index"], added["label"], added["description"], added["enrolled_pcrs"]) == (
        1,
        "backup",
        "missing",
        None,
    )
    assert [(a["pcrs"], a["signature_valid"]) for a in added["approvals"]] == [("15", False)]
    p = run_cli("list", image.dev, tpm)
    assert "seal 1 'backup': signed policy" in p.stdout and "description missing" in p.stdout
    assert "approved 'current': PCRs 15; SIGNATURE DOES NOT VERIFY" in p.stdout
    assert "seal 1 has no signed description" in p.stderr and "seal 1: approval(s) current" in p.stderr
    # a description copied into the added seal verifies (same object): the seal still shows, with its approval
    tid, data = _token(image)
    data["seals"][1] = _attacker_seal(data["seals"][0], 15, copy_description=True)
    Volume(image.dev).import_token(data, tid, replace=True)
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    added = listing["tokens"][0]["seal_details"][1]
    assert added["description"] == "valid" and added["approvals"][0]["covers_enrolled_pcrs"] is False


def test_bogus_approval_in_front_of_the_real_one_does_not_stop_the_unlock(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    """A copied signature on an approval that matches the current state, put first: the TPM rejects it,
    the unlock passes it over and opens with the real approval (no extra TPM command for the real one)."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    state = {7: other_swtpm.pcr(7), 15: bytes(32)}

    def bogus_first(seal: dict[str, Any]) -> None:
        _bogus_copy_of_target(seal, state)
        seal["approved"].insert(0, seal["approved"].pop())
        seal["approved"][0]["signature"] = _b64(bytes.fromhex("3006020101020101"))  # a valid DER, wrong values

    _edit_seal0(image, bogus_first)
    assert _unseals(image, other_swtpm)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}")
    assert "ok" in p.stdout


def test_seal_of_another_key_is_not_touched_and_does_not_stop_reseal(
    image: Image, other_swtpm: Swtpm, tmp_path: Path
) -> None:
    """A seal naming the attacker's key (with a description the attacker signed): reseal leaves it exactly
    as it is, signs nothing for it, and still approves the real seal."""
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    evil = ensure_policy_key(str(tmp_path / "evil.pem"))[0]
    tid, data = _token(image)
    seal = parse_native(data).seals[0]
    assert seal.signed is not None
    from dataclasses import replace

    from tpmseal.luks.tokens import render_native
    from tpmseal.update.signed import make_approval

    approval = make_approval(evil, seal.signed.approved[0].pcrs, seal.signed.policy_ref, "current")
    signed = replace(seal.signed, public_key=evil.public, key_name=evil.name, approved=(approval,))
    theirs = replace(seal, label="theirs", signed=signed)
    theirs = replace(theirs, signed=replace(theirs.signed, description=desc.sign_description(evil, theirs, (7, 15))))  # type: ignore[arg-type]
    data["seals"].append(render_native(replace(parse_native(data), seals=(theirs,)))["seals"][0])
    Volume(image.dev).import_token(data, tid, replace=True)
    before = _token(image)[1]["seals"][1]
    assert _reseal(image, other_swtpm, key, "next-boot") == 0
    after = _token(image)[1]
    assert after["seals"][1] == before
    assert _real_seal_approved(image, other_swtpm, "next-boot")
