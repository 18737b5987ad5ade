# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which PCR selections bind to nothing about the boot (tpm/strength.py); tests/tpm/test_weak_binding.py
shows on swtpm that each flagged kind really unseals on another boot, and that a PCR 7 token does not."""

from __future__ import annotations

import pytest

from tpmseal.tpm.strength import NO_PCR, RESETTABLE_ONLY, VOLUME_ONLY, advice, weakness, weakness_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("indexes", "kind"),
    [
        ((), NO_PCR),
        ((15,), VOLUME_ONLY),
        ((16,), RESETTABLE_ONLY),
        ((23,), RESETTABLE_ONLY),
        ((15, 16, 23), RESETTABLE_ONLY),
        ((7,), None),
        ((7, 15), None),
        ((0, 23), None),
        ((11, 15, 16), None),
    ],
)
def test_weak_kinds(indexes: tuple[int, ...], kind: str | None) -> None:
    w = weakness(indexes)
    assert (w.kind if w else None) == kind
    if w is not None:
        assert "any system booted on this machine" in w.message


def test_any_weak_seal_makes_the_token_weak() -> None:
    assert weakness_of([(7, 15), (7, 15)]) is None
    w = weakness_of([(7, 15), (15,)])
    assert w is not None and w.kind == VOLUME_ONLY


def test_advice_names_pcr7_and_the_pin() -> None:
    assert "--tpm2-pcrs=7" in advice(False) and "PIN" not in advice(False)
    assert "only the PIN protects it" in advice(True)
