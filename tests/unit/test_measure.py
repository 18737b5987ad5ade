# SPDX-License-Identifier: LGPL-2.1-or-later
"""PCR 15 volume binding: the policy computation and the discovery of unlocked volumes."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from tpmseal.boot.measure import SEPARATOR, Unlocked, bind_volume, is_volume_bound, unlocked_volumes
from tpmseal.tpm.pcrs import Pcr, parse_pcrs
from tpmseal.tpm.policy import marshal_pcr_selection, policy_digest

pytestmark = pytest.mark.unit


def test_bind_volume_adds_pcr15_at_zero_in_index_order() -> None:
    sel = bind_volume(parse_pcrs("7+23"))
    assert sel.indexes == (7, 15, 23)
    assert sel.pcrs[1] == Pcr(15, bytes(32))
    assert is_volume_bound(sel)
    assert not is_volume_bound(parse_pcrs("7"))


def test_bind_volume_uses_the_bank_digest_size() -> None:
    assert bind_volume(parse_pcrs("7:sha1")).pcrs[1] == Pcr(15, bytes(20))
    assert bind_volume(parse_pcrs("7:sha384")).pcrs[1] == Pcr(15, bytes(48))


def test_bind_volume_keeps_an_explicit_pcr15() -> None:
    explicit = parse_pcrs("7+15:sha256=" + "ab" * 32)
    assert bind_volume(explicit) == explicit


def test_bind_volume_on_empty_selection_binds_only_pcr15() -> None:
    assert bind_volume(parse_pcrs("")).indexes == (15,)


def test_policy_with_pcr15_binding_is_policypcr_over_7_and_15() -> None:
    v7 = bytes(range(32))
    sel = bind_volume(parse_pcrs("7")).with_values({7: v7})
    pcr_digest = hashlib.sha256(v7 + bytes(32)).digest()
    expect = hashlib.sha256(
        bytes(32) + struct.pack(">I", 0x17F) + marshal_pcr_selection("sha256", (7, 15)) + pcr_digest
    ).digest()
    assert policy_digest(sel, False) == expect
    # and it differs from the unbound policy, and from one bound to a non-zero PCR 15
    assert policy_digest(parse_pcrs("7").with_values({7: v7}), False) != expect
    assert policy_digest(parse_pcrs("7+15").with_values({7: v7, 15: b"\x01" * 32}), False) != expect


def fake_dm(sysfs: Path, dev: str, uuid: str) -> None:
    d = sysfs / "block" / dev / "dm"
    d.mkdir(parents=True)
    (d / "uuid").write_text(uuid + "\n")


def test_unlocked_volumes_reads_crypt_mappings_from_sysfs(tmp_path: Path) -> None:
    fake_dm(tmp_path, "dm-1", "CRYPT-LUKS2-7e5ea1ed00004000800000000000beef-data")
    fake_dm(tmp_path, "dm-0", "CRYPT-LUKS2-7e5ea1ed000040008000000000000c0d-root")
    fake_dm(tmp_path, "dm-2", "LVM-abcdef")  # not a LUKS mapping
    fake_dm(tmp_path, "dm-3", "CRYPT-PLAIN-x")
    (tmp_path / "block" / "vda").mkdir()  # not a dm device
    assert unlocked_volumes(str(tmp_path)) == [
        Unlocked("7e5ea1ed-0000-4000-8000-000000000c0d", "root"),
        Unlocked("7e5ea1ed-0000-4000-8000-00000000beef", "data"),
    ]


def test_unlocked_volumes_without_sysfs_is_empty(tmp_path: Path) -> None:
    assert unlocked_volumes(str(tmp_path / "none")) == []


def test_events_name_the_volume_and_never_a_key() -> None:
    e = Unlocked("7e5ea1ed-0000-4000-8000-000000000c0d", "root").event()
    assert e == b"tpmseal:volume:v1:7e5ea1ed-0000-4000-8000-000000000c0d:root"
    assert SEPARATOR not in e
