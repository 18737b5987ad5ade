# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import hashlib
import struct

import pytest

from tpmseal.errors import UsageError
from tpmseal.tpm.pcrs import Pcr, parse_pcrs
from tpmseal.tpm.policy import marshal_pcr_selection, policy_digest

pytestmark = pytest.mark.unit

H7 = "ab" * 32


@pytest.mark.parametrize(
    ("text", "bank", "indexes"),
    [
        ("7", "sha256", (7,)),
        ("7+11", "sha256", (7, 11)),
        ("11,7", "sha256", (7, 11)),
        ("0+2+7", "sha256", (0, 2, 7)),
        ("7:sha1", "sha1", (7,)),
        ("secure-boot-policy+kernel-boot", "sha256", (7, 11)),
        ("", "sha256", ()),
        ("7+7", "sha256", (7,)),
    ],
)
def test_parse_pcrs_accepts_systemd_syntax(text: str, bank: str, indexes: tuple[int, ...]) -> None:
    sel = parse_pcrs(text)
    assert sel.bank == bank and sel.indexes == indexes


def test_parse_pcrs_literal_value() -> None:
    sel = parse_pcrs(f"7:sha256={H7}+11")
    assert sel.pcrs == (Pcr(7, bytes.fromhex(H7)), Pcr(11, None))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("24", "out of range"),
        ("x", "invalid PCR"),
        ("7:md5", "unknown PCR bank"),
        ("7:sha256=zz", "not a hex digest"),
        ("7:sha256=abcd", "32 bytes"),
        ("7:sha1+11:sha256", "same bank"),
        (f"7:sha256={H7}+7:sha256={'cd' * 32}", "twice"),
    ],
)
def test_parse_pcrs_rejects_bad_specs(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_pcrs(text)


def test_pcr_selection_marshal_layout() -> None:
    assert marshal_pcr_selection("sha256", (0, 7, 11, 23)) == struct.pack(">IHB", 1, 0x000B, 3) + bytes(
        [0x81, 0x08, 0x80]
    )


def test_policy_digest_follows_the_spec_formula() -> None:
    v = bytes(range(32))
    sel = parse_pcrs("7").with_values({7: v})
    pcr_digest = hashlib.sha256(v).digest()
    expect = hashlib.sha256(
        bytes(32) + struct.pack(">I", 0x17F) + marshal_pcr_selection("sha256", (7,)) + pcr_digest
    ).digest()
    assert policy_digest(sel, False) == expect
    assert policy_digest(sel, True) == hashlib.sha256(expect + struct.pack(">I", 0x16B)).digest()
    assert policy_digest(parse_pcrs(""), False) == bytes(32)
