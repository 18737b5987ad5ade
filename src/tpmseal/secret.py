# SPDX-License-Identifier: LGPL-2.1-or-later
"""Secret: key material held in a bytearray that is zeroed when the secret is closed.

Python may still hold transient copies (e.g. inside a C library's buffers); this type makes sure the
copies we own are wiped and that a secret never prints itself.
"""

from __future__ import annotations

from types import TracebackType


class Secret:
    """A mutable buffer of secret bytes, wiped on close() or when leaving a ``with`` block."""

    __slots__ = ("_buf",)

    def __init__(self, data: bytearray | bytes | int = 0) -> None:
        if isinstance(data, int):
            self._buf = bytearray(data)
        else:
            # bytearray(...) copies; a caller that passes a bytearray should wipe its own copy.
            self._buf = bytearray(data)

    @classmethod
    def take(cls, buf: bytearray) -> Secret:
        """Wrap ``buf`` without copying; the Secret owns and wipes it."""
        s = cls()
        s._buf = buf
        return s

    @classmethod
    def random(cls, size: int) -> Secret:
        """``size`` bytes from the kernel's CSPRNG, read straight into the wiped buffer."""
        s = cls(size)
        with open("/dev/urandom", "rb", buffering=0) as f:
            view = memoryview(s._buf)
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise OSError("short read from /dev/urandom")
                got += n
            view.release()
        return s

    @property
    def buffer(self) -> bytearray:
        return self._buf

    def __len__(self) -> int:
        return len(self._buf)

    def wipe(self) -> None:
        wipe(self._buf)

    def close(self) -> None:
        self.wipe()
        self._buf = bytearray()

    def __enter__(self) -> Secret:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Secret(<{len(self._buf)} bytes>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        import hmac

        if isinstance(other, Secret):
            return hmac.compare_digest(bytes(self._buf), bytes(other._buf))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def wipe(buf: bytearray) -> None:
    """Zero a bytearray in place (same length slice assignment writes into the existing buffer)."""
    buf[:] = bytes(len(buf))
