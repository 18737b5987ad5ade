# SPDX-License-Identifier: LGPL-2.1-or-later
"""The signed seal description of authorize seals (tpmseal.update.description): what it binds, and that only
the key reseal holds can make one."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_eventlog_predict import signed_token

from tpmseal.errors import UsageError
from tpmseal.luks.tokens import Seal, parse_native, render_native
from tpmseal.tpm.pcrs import Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject
from tpmseal.update import description as d
from tpmseal.update.signed import make_approval, policy_key_from_private

pytestmark = pytest.mark.unit


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return policy_key_from_private(ec.generate_private_key(ec.SECP256R1()))


def _resigned(seal: Seal, key, pcrs=(9, 15)) -> Seal:  # type: ignore[no-untyped-def]
    """The seal re-signed under ``key`` (with its own public key in the header)."""
    assert seal.signed is not None
    signed = replace(seal.signed, public_key=key.public, key_name=key.name, approved=tuple(
        make_approval(key, a.pcrs, seal.signed.policy_ref, a.label) for a in seal.signed.approved))  # fmt: skip
    seal = replace(seal, signed=signed)
    return replace(seal, signed=replace(signed, description=d.sign_description(key, seal, pcrs)))


def test_description_verifies_and_authenticate_returns_the_enrolled_set() -> None:
    key = _key()
    seal = _resigned(signed_token(2).seals[0], key)
    assert d.description_verifies(key.public, seal)
    t = d.authenticate(key, seal, "seal 0")
    assert t.signed_pcrs == (9, 15) and t.approvals == seal.signed.approved  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: replace(s, signed=replace(s.signed, policy_ref=b"x" * 16)),
        lambda s: replace(s, signed=replace(s.signed, fixed=PcrSelection("sha256", (Pcr(7, bytes(32)),)))),
        lambda s: replace(s, pin=True),
        lambda s: replace(s, policy_digest=bytes(32)),
        lambda s: replace(s, sealed=SealedObject(s.sealed.private, s.sealed.public + b"x")),
        lambda s: replace(s, pcrs=PcrSelection("sha384", s.pcrs.pcrs)),
        lambda s: replace(s, signed=replace(s.signed, description=replace(s.signed.description, signed_pcrs=(15,)))),
        lambda s: replace(s, signed=replace(s.signed, description=replace(s.signed.description, signed_pcrs=(9,)))),
    ],
)
def test_every_bound_field_voids_the_description(edit) -> None:  # type: ignore[no-untyped-def]
    key = _key()
    seal = _resigned(signed_token().seals[0], key)
    bad = edit(seal)
    assert not d.description_verifies(key.public, bad)
    with pytest.raises(d.SealUnauthenticated, match="does not verify"):
        d.authenticate(key, bad, "seal 0")


def test_description_of_another_key_or_none_is_refused() -> None:
    key, evil = _key(), _key()
    seal = _resigned(signed_token().seals[0], key)
    # the attacker's own description (its key) with the real key name and public key left in place
    forged = replace(seal, signed=replace(seal.signed, description=d.sign_description(evil, seal, (9, 15))))  # type: ignore[arg-type]
    with pytest.raises(d.SealUnauthenticated, match="does not verify"):
        d.authenticate(key, forged, "seal 0")
    # the attacker's public key in the header, with the real key name
    swapped = replace(seal, signed=replace(seal.signed, public_key=evil.public))  # type: ignore[arg-type]
    with pytest.raises(d.SealUnauthenticated, match="public_key is not the policy key"):
        d.authenticate(key, swapped, "seal 0")
    old = replace(seal, signed=replace(seal.signed, description=None))  # type: ignore[arg-type]
    with pytest.raises(d.SealUnauthenticated, match="no signed description") as e:
        d.authenticate(key, old, "seal 0")
    assert "re-enroll" in e.value.hint


def test_untrusted_approvals_are_left_out() -> None:
    key, evil = _key(), _key()
    seal = _resigned(signed_token(1).seals[0], key)
    assert seal.signed is not None
    ref = seal.signed.policy_ref
    only15 = make_approval(key, PcrSelection("sha256", (Pcr(15, bytes(32)),)), ref, "x")  # real key, wrong set
    pcr15_set = make_approval(key, PcrSelection("sha256", (Pcr(9, bytes(32)), Pcr(15, b"\x01" * 32))), ref, "y")
    foreign = make_approval(evil, seal.signed.approved[0].pcrs, ref, "z")
    other_ref = make_approval(key, seal.signed.approved[0].pcrs, b"o" * 16, "w")
    seal = replace(
        seal, signed=replace(seal.signed, approved=(*seal.signed.approved, only15, pcr15_set, foreign, other_ref))
    )
    t = d.authenticate(key, seal, "seal 0")
    assert [a.label for a in t.approvals] == ["current"]


@pytest.mark.parametrize("pcrs", [(16,), (7, 23), (15,), (9, 15, 16)])
def test_pcr_sets_anyone_can_satisfy_are_refused(pcrs: tuple[int, ...]) -> None:
    with pytest.raises(UsageError):
        d.check_pcr_choice(pcrs, ())


def test_description_is_never_an_approval_message() -> None:
    """Domain separation: the message is longer than any aHash input (policy 32 + policyRef ≤ 64 bytes)."""
    seal = _resigned(signed_token().seals[0], _key())
    msg = d.seal_message(seal, seal.signed.key_name, (9, 15))  # type: ignore[union-attr]
    assert len(msg) > 96 and msg.startswith(d.MAGIC)


def test_round_trip_keeps_the_description() -> None:
    t = signed_token()
    again = parse_native(render_native(t))
    assert again.seals[0].signed is not None and again.seals[0].signed.description is not None
    assert again == t
