# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tokens written by other tools: systemd-cryptenroll's ``systemd-tpm2`` and clevis's ``clevis``.

Specified in docs/interop.md: which fields are understood, which are refused and why.
"""

from __future__ import annotations

from typing import Any

from tpmseal.tpm.pcrs import PcrSelection

FOREIGN_TPM_TYPES = ("systemd-tpm2", "clevis")


def describe(token_type: str, data: Any) -> tuple[PcrSelection, bool]:
    """(PCR selection, PIN required) of a foreign token, for ``list``; raises TokenCorrupt/TokenUnsupported."""
    if token_type == "systemd-tpm2":
        from tpmseal.interop.systemd_tpm2 import parse_systemd_tpm2

        st = parse_systemd_tpm2(data)
        return st.pcrs, st.pin
    from tpmseal.interop.clevis import parse_clevis

    return parse_clevis(data).pcrs, False
