# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reading secrets from the terminal or stdin straight into bytearrays (no str copies)."""

from __future__ import annotations

import os
import sys
import termios

from tpmseal.errors import UsageError
from tpmseal.secret import Secret

MAX_SECRET = 8192


def _read_line(fd: int) -> bytearray:
    """Bytes up to a newline or EOF (the newline is not kept)."""
    buf = bytearray()
    one = bytearray(1)
    while len(buf) < MAX_SECRET:
        n = os.readv(fd, [one])
        if n == 0 or one[0] == 0x0A:
            break
        buf += one
    one[0] = 0
    if buf.endswith(b"\r"):
        buf.pop()
    return buf


def ask(prompt: str) -> Secret:
    """A secret typed on the terminal (no echo), or the next line of stdin when it is not a tty."""
    if not sys.stdin.isatty():
        return Secret.take(_read_line(sys.stdin.fileno()))
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise UsageError("no terminal to ask for a secret on", "give it on stdin") from None
    try:
        old = termios.tcgetattr(tty)
        new = list(old)
        new[3] &= ~termios.ECHO
        os.write(tty, prompt.encode())
        termios.tcsetattr(tty, termios.TCSAFLUSH, new)
        try:
            return Secret.take(_read_line(tty))
        finally:
            termios.tcsetattr(tty, termios.TCSAFLUSH, old)
            os.write(tty, b"\n")
    finally:
        os.close(tty)


def ask_new_pin() -> Secret:
    """A new PIN, asked twice on a terminal; once from stdin."""
    pin = ask("New TPM2 PIN: ")
    if not len(pin):
        pin.close()
        raise UsageError("the PIN is empty")
    if sys.stdin.isatty():
        with ask("Repeat the PIN: ") as again:
            if again != pin:
                pin.close()
                raise UsageError("the PINs do not match")
    return pin


def read_key_file(path: str) -> Secret:
    """An existing key file's bytes, as cryptsetup --key-file reads them (whole file, as is)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_SECRET:
            raise UsageError(f"key file {path} is larger than {MAX_SECRET} bytes")
        buf = bytearray(size)
        got = os.readv(fd, [buf]) if size else 0
        del buf[got:]
        return Secret.take(buf)
    finally:
        os.close(fd)
