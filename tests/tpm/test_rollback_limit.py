# SPDX-License-Identifier: LGPL-2.1-or-later
"""A known limit, shown as it is (docs/pcr-prediction.md, "Rollback"; tpmseal(7), threat model): ``reseal
--cleanup`` only deletes an approval from the header; its signature stays valid for the seal's policy_ref,
so putting back an old header copy (or just the old approval) makes the retired boot state (e.g. the
kernel an update replaced) open the volume again. Revocable approvals (a TPM counter bound into the
policy) are not implemented; when they are, the attack case here must flip to refused.
"""

from __future__ import annotations

import copy
import hashlib
import subprocess
from pathlib import Path

import pytest
from support import Image, Swtpm
from test_reseal_header_attack import _token, _unseals

from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.update import reseal as rs
from tpmseal.update.signed import enroll_signed, load_policy_key

pytestmark = pytest.mark.tpm


def _reboot(t: Swtpm, kernel: bytes) -> None:
    """Power cycle (PCRs reset, NV and persistent handles kept), then firmware and the boot chain measure."""
    subprocess.run(["swtpm_ioctl", "--unix", f"{t.sock}.ctrl", "-i"], check=True, capture_output=True)
    t.tool("tpm2_startup", "-c")
    for pcr in (0, 2, 4, 7):
        t.extend(pcr, f"firmware measurement of PCR {pcr}".encode())
    t.extend(7, kernel)


def _pcr7_after(kernel: bytes) -> bytes:
    v = bytes(32)
    v = hashlib.sha256(v + hashlib.sha256(b"firmware measurement of PCR 7").digest()).digest()
    return hashlib.sha256(v + hashlib.sha256(kernel).digest()).digest()


@pytest.mark.parametrize("attack", [False, True])
def test_an_old_header_copy_brings_back_a_cleaned_up_approval_known_limit(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, attack: bool
) -> None:
    t = other_swtpm
    key_path = tmp_path / "keys" / "policy-key.pem"
    key_path.parent.mkdir(mode=0o700)
    t.extend(7, b"old, vulnerable kernel")  # state A
    with Secret.take(bytearray(image.keyfile.read_bytes())) as unlock:
        enroll_signed(Volume(image.dev), unlock, t.tcti, parse_pcrs("7"), None, None, key_path=str(key_path))
    tid, old = _token(image)  # the disk holder keeps a copy of the header (or of this one approval)
    old_approval = copy.deepcopy(old["seals"][0]["approved"][0])
    key = load_policy_key(str(key_path))

    # the update: approve the fixed kernel (state B), boot it, clean up the approval of A
    rs.approve(Volume(image.dev), t.tcti, key, {7: _pcr7_after(b"fixed kernel")}, label="next-boot")
    _reboot(t, b"fixed kernel")
    assert _unseals(image, t)
    changes = rs.cleanup(Volume(image.dev), {7: t.pcr(7)}, key)
    assert [c.action for c in changes] == ["removed"], changes
    _, now = _token(image)
    assert len(now["seals"][0]["approved"]) == 1

    # the attacker boots the retired chain A
    _reboot(t, b"old, vulnerable kernel")
    if attack:  # ... after putting the old approval back into the header
        now["seals"][0]["approved"].append(old_approval)
        Volume(image.dev).import_token(now, tid, replace=True)
        assert _unseals(image, t)  # the retired boot state opens the volume again
    else:  # control: the cleaned header refuses state A
        assert not _unseals(image, t)
