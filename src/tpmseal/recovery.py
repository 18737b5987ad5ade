# SPDX-License-Identifier: LGPL-2.1-or-later
"""Recovery keys: 160 random bits, written in an alphabet without look-alike letters, in groups."""

from __future__ import annotations

from tpmseal.secret import Secret

# Crockford's base32 alphabet, lower case: no i, l, o, u, so nothing is mistaken when typed.
ALPHABET = b"0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_BITS = 160
GROUP = 4


def generate_recovery_key() -> Secret:
    """A fresh key like ``7k2m-x9qa-…`` (8 groups of 4 characters, 5 bits each)."""
    with Secret.random(RECOVERY_BITS // 8) as raw:
        chars = bytearray()
        acc = 0
        bits = 0
        for b in raw.buffer:
            acc = (acc << 8) | b
            bits += 8
            while bits >= 5:
                bits -= 5
                chars.append(ALPHABET[(acc >> bits) & 31])
            acc &= (1 << bits) - 1
        out = bytearray()
        for i, c in enumerate(chars):
            if i and i % GROUP == 0:
                out.append(0x2D)
            out.append(c)
        chars[:] = bytes(len(chars))
        return Secret.take(out)
