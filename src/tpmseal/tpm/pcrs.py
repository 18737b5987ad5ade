# SPDX-License-Identifier: LGPL-2.1-or-later
"""PCR selection syntax, as systemd-cryptenroll spells it: ``7+11``, ``7:sha256``, ``7:sha256=HEX``.

Pure functions: parsing and formatting need no TPM.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpmseal.errors import UsageError

# Digest sizes of the banks tpmseal can bind to, and their TPM2_ALG ids.
BANKS: dict[str, tuple[int, int]] = {
    "sha1": (20, 0x0004),
    "sha256": (32, 0x000B),
    "sha384": (48, 0x000C),
    "sha512": (64, 0x000D),
}
DEFAULT_BANK = "sha256"
PCR_COUNT = 24

# Well-known PCR names (UAPI "Linux TPM PCR Registry"), accepted in place of numbers.
PCR_NAMES: dict[str, int] = {
    "platform-code": 0,
    "platform-config": 1,
    "external-code": 2,
    "external-config": 3,
    "boot-loader-code": 4,
    "boot-loader-config": 5,
    "host-platform": 6,
    "secure-boot-policy": 7,
    "kernel-initrd": 9,
    "ima": 10,
    "kernel-boot": 11,
    "kernel-config": 12,
    "sysexts": 13,
    "shim-policy": 14,
    "system-identity": 15,
    "debug": 16,
    "application-support": 23,
}


@dataclass(frozen=True)
class Pcr:
    """One PCR of a policy; ``value`` is the expected digest, or None for "the value at enrollment"."""

    index: int
    value: bytes | None = None


@dataclass(frozen=True)
class PcrSelection:
    """The PCRs a policy binds to, all in one bank, sorted by index."""

    bank: str
    pcrs: tuple[Pcr, ...]

    @property
    def indexes(self) -> tuple[int, ...]:
        return tuple(p.index for p in self.pcrs)

    def with_values(self, values: dict[int, bytes]) -> PcrSelection:
        """Fill in every PCR without an expected value from ``values``."""
        return PcrSelection(
            self.bank, tuple(p if p.value is not None else Pcr(p.index, values[p.index]) for p in self.pcrs)
        )

    def format(self) -> str:
        """The selection in the syntax parse_pcrs reads (``7+11:sha256`` style, one bank)."""
        return "+".join(str(p.index) for p in self.pcrs)


def parse_index(text: str) -> int:
    text = text.strip().lower()
    if text in PCR_NAMES:
        return PCR_NAMES[text]
    if not (text.isascii() and text.isdigit() and len(text) <= 9):  # int() refuses '²' and 4300+ digits
        raise UsageError(f"invalid PCR '{text}': expected a number 0-23 or a name like secure-boot-policy")
    i = int(text)
    if not 0 <= i < PCR_COUNT:
        raise UsageError(f"PCR index {i} out of range 0-23")
    return i


def parse_pcrs(text: str, default_bank: str = DEFAULT_BANK) -> PcrSelection:
    """Parse ``7+11``, ``7,11``, ``7:sha256``, ``7:sha256=HEX``; an empty string selects no PCRs."""
    items = [t for t in text.replace(",", "+").split("+") if t.strip()] if text.strip() else []
    bank: str | None = None
    seen: dict[int, Pcr] = {}
    for item in items:
        idx_text, _, rest = item.partition(":")
        index = parse_index(idx_text)
        value: bytes | None = None
        item_bank = default_bank
        if rest:
            bank_text, eq, hex_text = rest.partition("=")
            item_bank = bank_text.strip().lower() or default_bank
            if item_bank not in BANKS:
                raise UsageError(f"unknown PCR bank '{item_bank}'", f"use one of {', '.join(BANKS)}")
            if eq:
                hex_text = hex_text.strip().lower().removeprefix("0x")
                try:
                    value = bytes.fromhex(hex_text)
                except ValueError:
                    raise UsageError(f"PCR {index}: '{hex_text}' is not a hex digest") from None
                size = BANKS[item_bank][0]
                if len(value) != size:
                    raise UsageError(f"PCR {index}: a {item_bank} digest has {size} bytes, not {len(value)}")
        if bank is not None and item_bank != bank:
            raise UsageError("all PCRs of one policy must use the same bank", f"got {bank} and {item_bank}")
        bank = item_bank
        if index in seen and seen[index] != Pcr(index, value):
            raise UsageError(f"PCR {index} is given twice with different values")
        seen[index] = Pcr(index, value)
    return PcrSelection(bank or default_bank, tuple(seen[i] for i in sorted(seen)))
