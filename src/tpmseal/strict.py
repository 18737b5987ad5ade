# SPDX-License-Identifier: LGPL-2.1-or-later
"""Strict readers for the JSON of our on-disk formats (token, credential header): every field is
checked for its type, unknown fields are refused, and every failure is one of our errors naming the
field. Each format binds a Fields to its own error type and prefix."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from tpmseal.errors import TpmsealError

_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class Fields:
    def __init__(self, fail: Callable[[str, str], TpmsealError]) -> None:
        self.fail = fail  # (where, what) -> the format's error

    def obj(self, v: Any, where: str, keys: set[str], required: set[str] | None = None) -> dict[str, Any]:
        """A JSON object with only ``keys``, all of ``required`` (default: all keys) present."""
        if not isinstance(v, dict):
            raise self.fail(where, "expected an object")
        unknown = set(v) - keys
        if unknown:
            raise self.fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
        missing = (keys if required is None else required) - set(v)
        if missing:
            raise self.fail(where, f"missing field(s) {', '.join(sorted(missing))}")
        return v

    def text(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise self.fail(where, "expected a string")
        return v

    def integer(self, v: Any, where: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(where, "expected an integer")
        return v

    def b64(self, v: Any, where: str) -> bytes:
        try:
            return base64.b64decode(self.text(v, where), validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(where, "invalid base64") from None

    def hex(self, v: Any, where: str, size: int | None = None) -> bytes:
        s = self.text(v, where)
        if not _HEX.fullmatch(s):
            raise self.fail(where, "expected lowercase hex")
        b = bytes.fromhex(s)
        if size is not None and len(b) != size:
            raise self.fail(where, f"expected {size} bytes, got {len(b)}")
        return b
