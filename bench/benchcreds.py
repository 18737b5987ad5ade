# SPDX-License-Identifier: LGPL-2.1-or-later
"""Credentials figures: `tpmseal creds` processes as invocations, and the credential server under load.

The server runs in this process on a private socket; its clients are threads that connect the way systemd
does for LoadCredential= (an abstract address ending in /unit/UNIT/NAME). The unit lookup from the peer's
cgroup is replaced by a fixed answer here: the benchmark measures serving, not the cgroup check (the tests
check that with real cgroups)."""

from __future__ import annotations

import random
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import benchrig as rig

UNIT = "bench.service"


def tpmseal_creds_encrypt(src: Path, dst: Path, tcti: str) -> rig.Invocation:
    """PCR 7 given explicitly (also the default), the same PCRs as benchrig.creds_encrypt's systemd-creds."""
    return rig.Invocation("tpmseal creds encrypt (PCR 7)", (*rig.tpmseal_argv(), "creds", "encrypt", "bench",
                                                            str(src), str(dst), f"--tpm2-device={tcti}",
                                                            "--tpm2-pcrs=7"))  # fmt: skip


def tpmseal_creds_decrypt(src: Path, tcti: str) -> rig.Invocation:
    return rig.Invocation("tpmseal creds decrypt (PCR 7)", (*rig.tpmseal_argv(), "creds", "decrypt", str(src), "-",
                                                    f"--tpm2-device={tcti}"))  # fmt: skip


@dataclass
class Load:
    clients: int
    p50_ms: float
    p99_ms: float
    wall_s: float
    per_s: float
    ok: int


def _request(sock: str, name: str, barrier: threading.Barrier, out: list[tuple[float, bytes]]) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.bind(f"\0{random.getrandbits(64):x}/unit/{UNIT}/{name}".encode())
    barrier.wait()
    t0 = time.monotonic()
    try:
        s.connect(sock)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        out.append(((time.monotonic() - t0) * 1000, data))
    finally:
        s.close()


def server_load(tcti: str, counts: tuple[int, ...] = (1, 10, 200)) -> list[Load]:
    """p50/p99 latency and throughput of one credential server for each number of concurrent clients."""
    from tpmseal.creds.envelope import encrypt
    from tpmseal.creds.server import CredServer, bind_socket
    from tpmseal.creds.store import install
    from tpmseal.secret import Secret
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.pcrs import parse_pcrs

    with tempfile.TemporaryDirectory(prefix="tpmseal-bench-creds-", dir="/tmp") as d:
        root, sock = Path(d) / "root", Path(d) / "creds.sock"
        secrets = {f"key{i}": f"secret number {i}".encode() for i in range(10)}
        with open_tpm(tcti) as esapi:
            for name, value in secrets.items():
                with Secret(value) as s:
                    install(root, UNIT, name, encrypt(esapi, s, name, UNIT, parse_pcrs("7")))
        listener = bind_socket(sock)
        server = CredServer(listener, root, tcti, unit_of=lambda pid: UNIT, log=lambda line: None)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        out: list[Load] = []
        try:
            for n in counts:
                names = [f"key{i % len(secrets)}" for i in range(n)]
                got: list[tuple[float, bytes]] = []
                barrier = threading.Barrier(n)
                threads = [threading.Thread(target=_request, args=(str(sock), nm, barrier, got)) for nm in names]
                t0 = time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.monotonic() - t0
                ms = sorted(m for m, _ in got)
                ok = sum(1 for _, data in got if data in secrets.values())
                p99 = ms[max(int(len(ms) * 0.99) - 1, 0)] if ms else float("nan")
                out.append(Load(n, statistics.median(ms) if ms else float("nan"), p99, wall, n / wall, ok))
        finally:
            server.stop()
            thread.join(timeout=30)
            listener.close()
    return out
