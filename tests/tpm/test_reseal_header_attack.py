# SPDX-License-Identifier: LGPL-2.1-or-later
"""Issue 16, attack 1: reseal must sign only the PCR set fixed (and signed) at enrollment, never the one an
edited header asks for. The attacker holds the disk: it edits only the LUKS2 header (token export/import)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from support import Image, Swtpm, luks_dump, opens

from tpmseal import cli
from tpmseal.errors import TpmsealError
from tpmseal.luks.tokens import parse_native
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import Pcr, PcrSelection, parse_pcrs
from tpmseal.tpm.policy import policy_digest
from tpmseal.unlock import keyslot_passphrase, unseal_token
from tpmseal.update.signed import enroll_signed, load_policy_key, verify_approval_offline

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


@pytest.mark.parametrize("mode", ["next-boot", "current"])
@pytest.mark.parametrize("pcr", [15, 16])
def test_added_seal_does_not_get_its_pcr_set_signed(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, pcr: int, mode: str
) -> None:
    key = tmp_path / "k.pem"
    _enroll(image, other_swtpm, key)
    _tamper(image, pcr)
    assert _unseals(image, other_swtpm)  # nothing looks different: the token still opens
    _reseal(image, other_swtpm, key, mode)
    assert all(s == (7, 15) for s in _signed_pcr_sets(image, key)), _signed_pcr_sets(image, key)
    _attacker_boot(other_swtpm, pcr)
    assert not _unseals(image, other_swtpm)
