# SPDX-License-Identifier: LGPL-2.1-or-later
"""A private swtpm on a UNIX socket, for the demo, the tests and the benchmarks.

swtpm runs as our child, not with --daemon: PID 1 on some hosts does not reap orphans. The TCTI string is
``swtpm:path=SOCK``; the swtpm TCTI derives the control socket as ``SOCK.ctrl``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen, TimeoutExpired

from tpmseal.errors import TpmUnavailable
from tpmseal.proc import run, start


@dataclass
class SocketSwtpm:
    dir: Path
    sock: Path
    proc: Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.sock}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_swtpm(d: Path, log: Path | None = None, timeout: float = 10.0) -> SocketSwtpm:
    """A fresh TPM (new state in ``d/state``) listening on ``d/sock``; every PCR is still zero."""
    state = d / "state"
    state.mkdir(parents=True, exist_ok=True)
    run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--createek", "--overwrite"])
    return serve_state(state, d / "sock", log, timeout)


def serve_state(state: Path, sock: Path, log: Path | None = None, timeout: float = 10.0) -> SocketSwtpm:
    """swtpm on an existing state directory (e.g. a VM's vTPM), listening on ``sock``."""
    proc = start(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl",
         "--flags", "not-need-init,startup-clear"],
        str(log) if log else None,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not (sock.exists() and Path(f"{sock}.ctrl").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TpmUnavailable(f"swtpm did not start on {state}")
        time.sleep(0.02)
    return SocketSwtpm(sock.parent, sock, proc)


@contextmanager
def serving(state: Path) -> Iterator[SocketSwtpm]:
    """``state`` served on a short-lived socket in /tmp (AF_UNIX paths must stay short), then stopped,
    so that the state can go back to its VM."""
    sockdir = Path(tempfile.mkdtemp(prefix="tpmseal-swtpm-", dir="/tmp"))
    tpm = serve_state(state, sockdir / "s")
    try:
        yield tpm
    finally:
        tpm.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
