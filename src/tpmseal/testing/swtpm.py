# SPDX-License-Identifier: LGPL-2.1-or-later
"""A private swtpm on a UNIX socket, for the demo, the tests and the benchmarks.

swtpm runs as our child, not with --daemon: PID 1 on some hosts does not reap orphans. The TCTI string is
``swtpm:path=SOCK``; the swtpm TCTI derives the control socket as ``SOCK.ctrl``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tpmseal.errors import TpmUnavailable
from tpmseal.proc import run, start


@dataclass
class SocketSwtpm:
    dir: Path
    sock: Path
    proc: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.sock}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_swtpm(d: Path, log: Path | None = None, timeout: float = 10.0) -> SocketSwtpm:
    """A fresh TPM (new state in ``d/state``) listening on ``d/sock``; every PCR is still zero."""
    state = d / "state"
    state.mkdir(parents=True, exist_ok=True)
    run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--createek", "--overwrite"])
    sock = d / "sock"
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
            raise TpmUnavailable(f"swtpm did not start in {d}")
        time.sleep(0.02)
    return SocketSwtpm(d, sock, proc)
