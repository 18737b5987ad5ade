# SPDX-License-Identifier: LGPL-2.1-or-later
"""The credential server under attack: slow clients, clients that send data, clients that vanish, and
1000 connections from a wrong unit (half of them spoofing the right unit's address). Meanwhile the right
service keeps getting its credential, the server's memory stays flat, and no attacker gets a byte.

The server runs in this process on a private socket (as the creds tests run it); which unit a peer
process belongs to is injected (the right service's pid -> its unit, every other pid -> another unit),
so the test does not depend on a writable cgroup hierarchy. The peer checks (address form, SO_PEERCRED,
unit) are the server's own.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Swtpm

from tpmseal.creds import envelope
from tpmseal.creds.server import CredServer, bind_socket
from tpmseal.creds.store import install
from tpmseal.secret import Secret
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs

pytestmark = pytest.mark.tpm

UNIT = "webapp.service"
NAME = "db"
SECRET = b"the right service's secret 7d1e"

GOOD = r"""
import os, socket, sys, random, time
print(os.getpid(), flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.bind(("\0%x/unit/%s/%s" % (random.getrandbits(64), sys.argv[2], sys.argv[3])).encode())
t0 = time.monotonic()
s.connect(sys.argv[1])
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
print(data.hex(), (time.monotonic() - t0) * 1000, flush=True)
"""

ATTACKER = r"""
import json, os, random, socket, sys, threading
sock, unit, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()
res = {"connected": 0, "refused_connect": 0, "data_bytes": 0, "kinds": {}}
held = []
def addr(u):
    return ("\0%x/unit/%s/db" % (random.getrandbits(64), u)).encode()
def one(i):
    kind = ("spoof", "wrong-unit", "send", "vanish", "slow", "anonymous")[i % 6]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    if kind != "anonymous":
        s.bind(addr("evil.service" if kind == "wrong-unit" else unit))  # spoofing the right unit's address
    try:
        s.connect(sock)
    except OSError:
        with lock:
            res["refused_connect"] += 1
        s.close()
        return
    with lock:
        res["connected"] += 1
        res["kinds"][kind] = res["kinds"].get(kind, 0) + 1
    if kind == "vanish":
        s.close()
        return
    if kind == "send":
        try:
            s.sendall(os.urandom(200000))  # more than the socket buffers hold
        except OSError:
            pass
    if kind == "slow":
        with lock:
            held.append(s)
        return
    got = 0
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += len(c)
    except OSError:
        pass
    s.close()
    with lock:
        res["data_bytes"] += got
for start in range(0, n, 100):
    ts = [threading.Thread(target=one, args=(i,)) for i in range(start, min(n, start + 100))]
    for t in ts: t.start()
    for t in ts: t.join()
print("held", flush=True)
sys.stdin.readline()  # the right service is served while these slow clients hold their connections
for s in held:
    got = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += c
    except OSError:
        pass
    res["data_bytes"] += len(got)
    s.close()
print(json.dumps(res), flush=True)
"""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Server:
    def __init__(self, tpm: Swtpm, root: Path) -> None:
        self.sockdir = Path(tempfile.mkdtemp(prefix="tscd-", dir="/tmp"))
        self.sock = self.sockdir / "creds.sock"
        self.good: set[int] = set()
        self.lines: list[str] = []
        self.listener = bind_socket(self.sock)
        self.server = CredServer(
            self.listener, root, tpm.tcti, unit_of=lambda pid: UNIT if pid in self.good else "attacker.service",
            log=self.lines.append, timeout=5.0,
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self) -> tuple[bytes, float]:
        p = subprocess.Popen([sys.executable, "-c", GOOD, str(self.sock), UNIT, NAME], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert p.stdin is not None and p.stdout is not None
        self.good.add(int(p.stdout.readline()))
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=60)
        data, ms = out.split()
        return bytes.fromhex(data), float(ms)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=30)
        self.listener.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def server(swtpm: Swtpm, tmp_path: Path) -> Iterator[Server]:
    with open_tpm(swtpm.tcti) as esapi, Secret(SECRET) as s:
        install(tmp_path / "root", UNIT, NAME, envelope.encrypt(esapi, s, NAME, UNIT, parse_pcrs("")))
    srv = Server(swtpm, tmp_path / "root")
    yield srv
    srv.stop()


def attack(srv: Server, n: int) -> tuple[subprocess.Popen[str], dict[str, object] | None]:
    p = subprocess.Popen([sys.executable, "-c", ATTACKER, str(srv.sock), UNIT, str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    return p, None


def finish(p: subprocess.Popen[str]) -> dict[str, object]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=120)
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_right_service_is_served_through_1000_hostile_connections_and_memory_stays_flat(
    server: Server, swtpm: Swtpm, request: pytest.FixtureRequest
) -> None:
    assert server.request()[0] == SECRET
    warm, _ = attack(server, 120)  # warm up threads, pools and the TPM context before measuring
    assert warm.stdout is not None and warm.stdout.readline().strip() == "held"
    assert finish(warm)["data_bytes"] == 0
    gc.collect()
    before = rss_kib()
    threads_before = threading.active_count()

    p, _ = attack(server, 1000)
    assert p.stdout is not None
    latencies = []
    while True:  # the right service asks again and again while the attack runs
        data, ms = server.request()
        assert data == SECRET
        latencies.append(ms)
        if p.poll() is not None or len(latencies) >= 40:
            break
        line = p.stdout.readline() if len(latencies) > 3 else ""
        if line.strip() == "held":
            break
    for _ in range(3):  # and with every slow client still holding its connection
        data, ms = server.request()
        assert data == SECRET
        latencies.append(ms)
    res = finish(p)
    time.sleep(0.5)
    gc.collect()
    grown = rss_kib() - before

    assert res["data_bytes"] == 0, "an attacker got bytes from the server"
    assert int(str(res["connected"])) >= 900, res
    served = [ln for ln in server.lines if "result=served" in ln]
    assert all(f"unit={UNIT}" in ln for ln in served)
    assert len(served) == 1 + len(latencies)  # exactly the right service's requests
    refused = [ln for ln in server.lines if "result=served" not in ln]
    assert len(refused) >= 900
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 1000 hostile connections"
    workers = [t for t in threading.enumerate() if t.name.startswith("credd")]
    assert len(workers) <= 8  # the server's pool: bounded, whatever the number of connections
    assert threading.active_count() <= threads_before + 8
    assert max(latencies) < 5000, latencies
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(
                f"\ncredential server under attack: {res['connected']} hostile connections {res['kinds']}, "
                f"{len(latencies)} requests of the right service served (max {max(latencies):.0f} ms), "
                f"RSS {grown:+d} KiB, 0 bytes to attackers"
            )
    assert swtpm.loaded_handles() == []


def test_slow_client_of_the_right_unit_does_not_block_the_others(server: Server) -> None:
    """A client of the right unit that never reads still gets its (small) secret written; and ten such
    clients at once do not keep the next request waiting."""
    import random
    import socket

    held = []
    for _ in range(10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"\0{random.getrandbits(64):x}/unit/{UNIT}/{NAME}".encode())
        server.good.add(os.getpid())  # this process plays the right unit here
        s.connect(str(server.sock))
        held.append(s)
    try:
        data, ms = server.request()
        assert data == SECRET and ms < 5000
    finally:
        for s in held:
            s.close()
