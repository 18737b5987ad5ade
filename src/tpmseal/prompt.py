# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reading secrets from the terminal or stdin straight into bytearrays (no str copies)."""

from __future__ import annotations

import os
import sys
import termios

from tpmseal.errors import UsageError
from tpmseal.secret import Secret

MAX_SECRET = 8192


MAX_EMPTY_PINS = 5  # an empty line at the PIN prompt asks again, this many times


def _read_line_eof(fd: int) -> tuple[bytearray, bool]:
    """Bytes up to a newline or EOF (the newline is not kept), and whether EOF ended them."""
    buf = bytearray()
    one = bytearray(1)
    eof = False
    while len(buf) < MAX_SECRET:
        n = os.readv(fd, [one])
        if n == 0:
            eof = True
            break
        if one[0] == 0x0A:
            break
        buf += one
    one[0] = 0
    if buf.endswith(b"\r"):
        buf.pop()
    return buf, eof


def _read_line(fd: int) -> bytearray:
    """Bytes up to a newline or EOF (the newline is not kept)."""
    return _read_line_eof(fd)[0]


def ask(prompt: str) -> Secret:
    """A secret typed on the terminal (no echo), or the next line of stdin when it is not a tty."""
    if sys.stdin is None or not sys.stdin.isatty():
        if sys.stdin is None:
            return Secret(b"")
        return Secret.take(_read_line(sys.stdin.fileno()))
    return _ask_tty(prompt)[0]


def _ask_tty(prompt: str) -> tuple[Secret, bool]:
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise UsageError("no terminal to ask for a secret on", "give it on stdin") from None
    try:
        old = termios.tcgetattr(tty)
        new = list(old)
        new[3] &= ~termios.ECHO
        # echo off (dropping stale type-ahead) before the prompt shows: what is typed once it is
        # visible is kept and never echoed
        termios.tcsetattr(tty, termios.TCSAFLUSH, new)
        os.write(tty, prompt.encode())
        try:
            line, eof = _read_line_eof(tty)
            return Secret.take(line), eof
        finally:
            termios.tcsetattr(tty, termios.TCSADRAIN, old)
            os.write(tty, b"\n")
    finally:
        os.close(tty)


def ask_pin(prompt: str) -> Secret:
    """An existing PIN; empty means none (the opener then reports PinRequired and spares the TPM).

    On a terminal an empty line asks again (up to MAX_EMPTY_PINS times) and end of input (Ctrl-D) gives
    up; otherwise the next line of stdin, so empty or closed stdin gives no PIN. Never a retry after
    a PIN the TPM refused: the caller asks once and keeps the answer.
    """
    if sys.stdin is None or not sys.stdin.isatty():
        return ask(prompt)
    for _ in range(MAX_EMPTY_PINS):
        pin, eof = _ask_tty(prompt)
        if len(pin) or eof:
            return pin
        pin.close()
    return Secret(b"")


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
