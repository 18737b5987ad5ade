# SPDX-License-Identifier: LGPL-2.1-or-later
"""The PIN's stretching is read from the header, which whoever holds the disk can rewrite (review R1, R2).

R1: a version 2 PIN seal downgraded to version 1 (``pin_kdf`` dropped) would make each PIN guess one
HMAC-SHA256 again. Such seals are never opened: no PIN reaches the TPM, no lockout try is spent. The control
puts the old derivation back and shows the downgrade making an offline PIN search instant.
R2 (a limit, documented in docs/token-format.md): an edited salt or cost still makes the right PIN fail and
cost one try — the salt lives in the header — but the message says the token may have been altered.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support import Image, Swtpm, luks_dump
from test_srk_pin import (
    PIN,
    _swap_header_srk,
    enroll_pin,
    lockout_counter,
    offline_pin_search,
    proxy,
    ptcti,
    replace_token,
    the_token,
    victim,
)

from tpmseal.errors import PinRejected, TokenUnsupported
from tpmseal.secret import Secret
from tpmseal.testing.tpmproxy import TpmProxy
from tpmseal.tpm import seal as seal_mod
from tpmseal.tpm import srk as srk_mod
from tpmseal.tpm.seal import LEGACY_HMAC, SCRYPT

pytestmark = pytest.mark.tpm
__all__ = ["proxy"]  # the fixture, imported


def _downgrade_to_v1(image: Image, token_id: int) -> None:
    data = luks_dump(image.path)["tokens"][str(token_id)]  # type: ignore[index]
    assert data["version"] == 2
    data["version"] = 1
    for s in data["seals"]:
        s.pop("pin_kdf", None)
    replace_token(image, token_id, data)


def test_a_downgraded_pin_seal_is_refused_before_the_tpm_sees_a_pin(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy
) -> None:
    token_id = enroll_pin(image, other_swtpm.tcti)
    _downgrade_to_v1(image, token_id)
    seal = the_token(image).seals[0]
    assert seal.pin_kdf is not None and seal.pin_kdf.algorithm == LEGACY_HMAC  # parsed, so list shows it
    proxy.reset()
    with pytest.raises(TokenUnsupported, match="unstretched"):
        victim(image, ptcti(proxy))
    assert not {"Load", "PolicyAuthValue", "Unseal"} & set(proxy.names()), proxy.names()
    assert lockout_counter(other_swtpm) == 0


def test_control_the_downgrade_makes_the_offline_search_instant_with_the_old_derivation(
    image: Image, other_swtpm: Swtpm, proxy: TpmProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old behaviour put back (derive the version 1 HMAC, salt to the header's SRK as on "the day salting
    fails"): the recording gives the PIN at one HMAC per guess."""
    import tpmseal.unlock

    real_derive = seal_mod.PinKdf.derive

    def old_derive(self: seal_mod.PinKdf, pin: bytearray) -> Secret:
        if self.algorithm == LEGACY_HMAC:
            return Secret.take(bytearray(hmac.new(self.salt, bytes(pin), hashlib.sha256).digest()))
        return real_derive(self, pin)

    token_id = enroll_pin(image, other_swtpm.tcti)
    assert the_token(image).seals[0].pin_kdf.algorithm == SCRYPT  # type: ignore[union-attr]
    attacker = ec.generate_private_key(ec.SECP256R1())
    _swap_header_srk(image, token_id, attacker)
    _downgrade_to_v1(image, token_id)
    seal = the_token(image).seals[0]
    monkeypatch.setattr(seal_mod.PinKdf, "derive", old_derive)
    monkeypatch.setattr(tpmseal.unlock, "srk_from_tpm", srk_mod.srk_from_ref)
    proxy.reset()
    asked, err = victim(image, ptcti(proxy))
    assert asked == [1] and isinstance(err, PinRejected), err
    t0 = time.monotonic()
    assert offline_pin_search(proxy.commands, attacker, seal.sealed.public, seal.pin_kdf) == PIN
    assert time.monotonic() - t0 < 30  # 10^4 guesses at one HMAC each; with scrypt 2^14: ~10 minutes
    other_swtpm.clear_lockout()


@pytest.mark.parametrize("edit", ["salt", "log2_n"])
def test_an_edited_pin_salt_costs_one_try_and_says_the_token_may_be_altered(
    image: Image, other_swtpm: Swtpm, edit: str
) -> None:
    token_id = enroll_pin(image, other_swtpm.tcti)
    data = luks_dump(image.path)["tokens"][str(token_id)]  # type: ignore[index]
    s = data["seals"][0]
    if edit == "salt":
        s["pin_salt"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    else:
        s["pin_kdf"]["log2_n"] = 15
    replace_token(image, token_id, data)
    asked, err = victim(image, other_swtpm.tcti)  # the owner types the right PIN
    assert asked == [1] and isinstance(err, PinRejected), err
    assert "may have been altered" in err.hint
    assert lockout_counter(other_swtpm) == 1  # the limit: the salt lives in the header
    other_swtpm.clear_lockout()


def test_control_an_unedited_pin_token_opens_with_no_try(image: Image, other_swtpm: Swtpm) -> None:
    enroll_pin(image, other_swtpm.tcti)
    asked, err = victim(image, other_swtpm.tcti)
    assert err is None and asked == [1]
    assert lockout_counter(other_swtpm) == 0
