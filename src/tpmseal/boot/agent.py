# SPDX-License-Identifier: LGPL-2.1-or-later
"""An ask-password agent (systemd's password agent protocol) that answers disk passphrase requests
by unsealing the volume's TPM token.

It watches /run/systemd/ask-password for ``ask.*`` files. For a request whose ``Id=`` is
``cryptsetup:DEVICE`` it tries the TPM tokens of DEVICE in a child process with a time limit; if one
yields a passphrase that opens its keyslot, the child sends ``+PASSPHRASE`` to the request's socket.
On any failure it answers nothing, so the console / Plymouth prompt stays for a person. Each request
is tried once. It never blocks boot: nothing waits for it, and the unit stops at switch-root.
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

ASK_DIR = "/run/systemd/ask-password"
REQUEST_TIMEOUT = 30.0
POLL_INTERVAL = 0.2


@dataclass(frozen=True)
class Request:
    path: str
    id: str
    socket: str
    not_after: int  # CLOCK_MONOTONIC µs, 0 = none
    pid: int

    @property
    def device(self) -> str | None:
        """The device of a ``cryptsetup:`` request (e.g. /dev/block/254:0), else None."""
        if not self.id.startswith("cryptsetup:"):
            return None
        dev = self.id.removeprefix("cryptsetup:")
        return dev if dev.startswith("/") else None

    def expired(self) -> bool:
        return bool(self.not_after) and time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000 > self.not_after


def parse_request(path: str) -> Request | None:
    """Read an ask file; None if it is gone, unreadable or not a request we understand."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
        ask = cp["Ask"]
        return Request(
            path, ask.get("Id", ""), ask["Socket"], int(ask.get("NotAfter", "0") or 0), int(ask.get("PID", "0") or 0)
        )
    except (OSError, KeyError, ValueError, configparser.Error, UnicodeDecodeError):
        return None


def answer(req: Request, passphrase: bytearray) -> None:
    """Send ``+PASSPHRASE`` as one datagram to the request's socket."""
    msg = bytearray(b"+") + passphrase
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg, req.socket)
    finally:
        msg[:] = bytes(len(msg))


def try_request(req: Request, tpm_device: str, log: Callable[[str], None]) -> bool:
    """In a child: unseal for ``req``'s device and answer. True when answered."""
    from tpmseal.boot.unlock import find_passphrase
    from tpmseal.errors import TpmsealError
    from tpmseal.luks.volume import Volume

    dev = req.device
    if dev is None:
        return False
    try:
        outcome = find_passphrase(Volume(dev), tpm_device)
    except TpmsealError as e:
        log(f"{dev}: {e.message}; leaving it to the passphrase prompt")
        return False
    if outcome.found is None:
        if outcome.attempts:
            log(outcome.summary())
        return False
    with outcome.found.passphrase as phrase:
        if req.expired() or not os.path.exists(req.path):
            log(f"{dev}: the request went away before the TPM answered")
            return False
        answer(req, phrase.buffer)
    log(outcome.summary())
    return True


def run_child(req: Request, tpm_device: str, timeout: float) -> bool:
    """Fork, try the request in the child, kill it after ``timeout`` seconds."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if try_request(req, tpm_device, _log) else 1
        except BaseException as e:  # never let a bug in the child escape into the agent loop
            _log(f"{req.device}: internal error: {type(e).__name__}")
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            _log(f"{req.device}: no answer from the TPM within {timeout:.0f}s; leaving it to the prompt")
            return False
        time.sleep(0.02)


def _log(line: str) -> None:
    print(f"tpmseal: {line}", file=sys.stderr, flush=True)


def warm_up() -> None:
    """Import the unlock path once, before any request: each forked child then starts warm
    (inside a TCG VM, importing tpm2-pytss takes over a second)."""
    import importlib

    for mod in ("tpmseal.boot.unlock", "tpmseal.tpm.device", "tpmseal.tpm.seal", "tpmseal.tpm.srk", "tpm2_pytss"):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            _log(f"cannot import {mod}: {e}")


def serve(
    tpm_device: str = "auto",
    ask_dir: str = ASK_DIR,
    timeout: float = REQUEST_TIMEOUT,
    idle_exit: float | None = None,
) -> int:
    """Answer requests until stopped (SIGTERM at switch-root), or after ``idle_exit`` seconds idle."""
    from tpmseal.hardening import harden

    harden()  # already done by the CLI; each forked child locks its memory again (at-fork hook)
    warm_up()
    seen: set[tuple[str, int]] = set()
    idle_since = time.monotonic()
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        try:
            names = sorted(n for n in os.listdir(ask_dir) if n.startswith("ask."))
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(ask_dir, name)
            try:
                key = (name, os.stat(path).st_ino)
            except FileNotFoundError:
                continue
            if key in seen:
                continue
            seen.add(key)
            req = parse_request(path)
            if req is None or req.device is None or req.expired():
                continue
            idle_since = time.monotonic()
            run_child(req, tpm_device, timeout)
        if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
            break
        time.sleep(POLL_INTERVAL)
    return 0
