# SPDX-License-Identifier: LGPL-2.1-or-later
"""The TPM command counter (tpmseal.testing.tpmproxy) in front of a real swtpm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

import tpmseal.testing.tpmproxy as tpmproxy_module
from tpmseal.testing.tpmproxy import TpmProxy, command_name, read_log

pytestmark = pytest.mark.tpm

TOOLS = ("swtpm", "swtpm_setup", "tpm2_getrandom", "tpm2_pcrread", "tpm2_pcrextend")
SRC_DIR = Path(tpmproxy_module.__file__).resolve().parents[2]
TIMEOUT = 10.0  # seconds; a broken proxy makes clients wait forever, tests must fail instead

T = TypeVar("T")


def _within(fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Run fn (an in-process TPM client, which would block forever on a dead proxy) with a deadline."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"TPM client did not finish within {timeout} s")
    if errors:
        raise errors[0]
    return box[0]


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(str(path))
    return s


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        msg = f"missing tools: {', '.join(missing)}"
        if os.environ.get("TPMSEAL_REQUIRE_ALL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@dataclass
class Swtpm:
    dir: Path
    sock: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def swtpm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One provisioned TPM state (EK, certificates); each test runs swtpm on a copy of it."""
    _need_tools()
    state = tmp_path_factory.mktemp("swtpm-template") / "state"
    state.mkdir()
    subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--createek", "--create-ek-cert",
         "--create-platform-cert", "--lock-nvram", "--overwrite"],
        check=True, capture_output=True,
    )  # fmt: skip
    return state


def _wait_for_swtpm(sw: Swtpm, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sw.proc.poll() is not None:
            raise RuntimeError(f"swtpm exited with {sw.proc.returncode}")
        if sw.sock.exists() and Path(f"{sw.sock}.ctrl").exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(sw.sock))
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError("swtpm did not come up")


@pytest.fixture
def swtpm(tmp_path: Path, swtpm_template: Path) -> Iterator[Swtpm]:
    """A fresh swtpm (own state copy) as a child process; killed and reaped at the end."""
    state = tmp_path / "state"
    shutil.copytree(swtpm_template, state)
    sock = tmp_path / "sock"
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl",
         "--flags", "not-need-init,startup-clear"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    sw = Swtpm(tmp_path, sock, proc)
    try:
        _wait_for_swtpm(sw)
        yield sw
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def proxy(swtpm: Swtpm) -> Iterator[TpmProxy]:
    with TpmProxy(swtpm.sock, swtpm.dir / "proxy") as p:
        yield p


def _tools_env(sock: Path) -> dict[str, str]:
    return dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={sock}", TSS2_LOG="all+none")


def _tool(sock: Path, *argv: str) -> str:
    r = subprocess.run(list(argv), env=_tools_env(sock), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{argv} failed: {r.stderr}"
    return r.stdout


def _get_random_frame(n: int) -> bytes:
    return struct.pack(">HIIH", 0x8001, 12, 0x17B, n)


def _exchange(s: socket.socket, command: bytes) -> bytes:
    """Send one TPM command on a raw socket and read exactly one response frame."""
    s.sendall(command)
    buf = b""
    while len(buf) < 10 or len(buf) < struct.unpack_from(">I", buf, 2)[0]:
        chunk = s.recv(4096)
        assert chunk, "connection closed before a whole response"
        buf += chunk
    return buf


# ---------------------------------------------------------------------------- pass-through, names


def test_tpm2_getrandom_through_proxy_returns_tpm_bytes_and_counts_get_random(
    proxy: TpmProxy,
) -> None:
    out = _tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "16").strip()
    random = bytes.fromhex(out)
    assert len(random) == 16
    assert proxy.count("GetRandom") == 1
    (cmd,) = [c for c in proxy.commands if c.name == "GetRandom"]
    assert cmd.code == 0x17B
    assert cmd.response_code == 0
    assert cmd.ok
    assert cmd.command_size == 12
    # The response frame is header + TPM2B size (2) + the 16 bytes the tool printed.
    assert cmd.response == struct.pack(">HIIH", 0x8001, 28, 0, 16) + random
    assert cmd.response_size == 28
    assert cmd.latency is not None and cmd.latency >= 0
    assert cmd.response_time is not None and cmd.response_time >= cmd.command_time
    assert proxy.errors == []


def test_tpm2_pcrread_is_counted_as_pcr_read_with_the_value_the_tool_printed(
    proxy: TpmProxy, swtpm: Swtpm
) -> None:
    digest = bytes(range(32))
    _tool(swtpm.sock, "tpm2_pcrextend", f"7:sha256={digest.hex()}")  # straight to swtpm, not counted
    assert proxy.count() == 0
    out = _tool(proxy.listen_sock, "tpm2_pcrread", "sha256:7")
    value = bytes.fromhex(out.split("0x")[-1].strip())
    assert value != bytes(32)
    assert proxy.count("PCR_Read") == 1
    assert set(proxy.names()) <= {"GetCapability", "PCR_Read"}
    (cmd,) = [c for c in proxy.commands if c.name == "PCR_Read"]
    assert cmd.response is not None and value in cmd.response


def test_pcr_extend_through_proxy_reaches_the_target_tpm(proxy: TpmProxy, swtpm: Swtpm) -> None:
    before = _tool(swtpm.sock, "tpm2_pcrread", "sha256:16")
    _tool(proxy.listen_sock, "tpm2_pcrextend", f"16:sha256={'ab' * 32}")
    after = _tool(swtpm.sock, "tpm2_pcrread", "sha256:16")  # read behind the proxy's back
    assert before != after
    assert proxy.count("PCR_Extend") == 1
    assert proxy.commands[proxy.names().index("PCR_Extend")].response_code == 0


def test_esapi_get_random_is_counted_once_per_call(proxy: TpmProxy) -> None:
    from tpm2_pytss import ESAPI

    def session() -> list[bytes]:
        with ESAPI(f"swtpm:path={proxy.listen_sock}") as esapi:
            proxy.reset()
            return [bytes(esapi.get_random(8)) for _ in range(3)]

    got = _within(session)
    assert proxy.names() == ["GetRandom"] * 3
    assert proxy.count() == 3
    assert [c.response[-8:] for c in proxy.commands if c.response] == got


def test_several_commands_on_one_connection_are_paired_with_their_responses(
    proxy: TpmProxy,
) -> None:
    with _connect(proxy.listen_sock) as s:
        responses = [_exchange(s, _get_random_frame(n)) for n in (4, 8, 12)]
    assert proxy.connections() == 1
    assert proxy.names() == ["GetRandom"] * 3
    assert [c.response for c in proxy.commands] == responses
    assert [c.response_size for c in proxy.commands] == [16, 20, 24]


def test_command_split_into_single_bytes_is_reassembled_into_one_frame(proxy: TpmProxy) -> None:
    frame = _get_random_frame(16)
    with _connect(proxy.listen_sock) as s:
        for i in range(len(frame) - 1):
            s.sendall(frame[i : i + 1])
            time.sleep(0.005)
        response = _exchange(s, frame[-1:])
    assert proxy.names() == ["GetRandom"]
    assert proxy.commands[0].command == frame
    assert proxy.commands[0].response == response


def test_unknown_command_code_is_named_in_hex_and_keeps_the_tpm_error(proxy: TpmProxy) -> None:
    with _connect(proxy.listen_sock) as s:
        response = _exchange(s, struct.pack(">HII", 0x8001, 10, 0x0FFF))
    rc = struct.unpack_from(">I", response, 6)[0]
    assert rc != 0
    assert proxy.names() == ["0x00000fff"]
    assert proxy.commands[0].response_code == rc
    assert not proxy.commands[0].ok


def test_command_name_table_agrees_with_tpm2_pytss() -> None:
    from tpm2_pytss.constants import TPM2_CC

    checked = 0
    for name in dir(TPM2_CC):
        value = getattr(TPM2_CC, name)
        aliases = ("FIRST", "LAST", "MAC", "MAC_Start")
        if not name[0].isupper() or not isinstance(value, int) or name in aliases:
            continue
        assert command_name(int(value)) == name, f"TPM2_CC.{name} = 0x{int(value):x}"
        checked += 1
    assert checked > 100
    for needed in ("Startup", "PolicyPCR", "Unseal", "NV_Read", "EncryptDecrypt2", "ECDH_ZGen"):
        assert not command_name(int(getattr(TPM2_CC, needed))).startswith("0x")


# ---------------------------------------------------------------------------- recording


def test_raw_bytes_hold_the_random_bytes_the_tpm_returned(proxy: TpmProxy) -> None:
    from tpm2_pytss import ESAPI

    def session() -> bytes:
        with ESAPI(f"swtpm:path={proxy.listen_sock}") as esapi:
            return bytes(esapi.get_random(32))

    secret = _within(session)
    raw = proxy.raw_bytes()
    assert secret in raw
    assert secret in proxy.raw_bytes("data")
    assert secret not in proxy.raw_bytes("ctrl")
    proxy.reset()
    assert proxy.raw_bytes() == b""
    assert proxy.count() == 0


def test_ctrl_traffic_is_forwarded_but_not_counted_as_tpm_commands(proxy: TpmProxy) -> None:
    _tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "4")
    assert proxy.ctrl_count() >= 1
    assert "SET_LOCALITY" in [m.name for m in proxy.ctrl_messages]
    # swtpm answered the control message through the proxy (TPM_SUCCESS as u32).
    assert any(m.direction == "response" and m.data == bytes(4) for m in proxy.ctrl_messages)
    assert proxy.names() == ["GetCapability", "GetRandom"]
    assert proxy.connections("ctrl") >= 1


# ---------------------------------------------------------------------------- robustness


def test_concurrent_clients_are_all_served_and_counted(proxy: TpmProxy) -> None:
    n = 8
    results: list[str] = []
    failures: list[BaseException] = []

    def one() -> None:
        try:
            results.append(_tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "8").strip())
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3 * TIMEOUT)
    assert failures == []
    assert len(results) == n
    assert proxy.count("GetRandom") == n
    assert proxy.count("GetCapability") == n
    answered = [c for c in proxy.commands if c.name == "GetRandom"]
    assert sorted(c.response[-8:].hex() for c in answered if c.response) == sorted(results)
    assert proxy.connections() >= 2 * n  # the swtpm TCTI opens a connection per command


def test_concurrent_raw_connections_each_get_their_own_responses(proxy: TpmProxy) -> None:
    per_client: dict[int, list[bytes]] = {}

    def client(k: int) -> None:
        with _connect(proxy.listen_sock) as s:
            per_client[k] = [_exchange(s, _get_random_frame(k + 1)) for _ in range(3)]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3 * TIMEOUT)
    assert sorted(per_client) == list(range(5))
    for k, responses in per_client.items():
        assert all(len(r) == 12 + k + 1 for r in responses)
    assert proxy.count("GetRandom") == 15
    assert all(c.response_size == 12 + c.command[-1] for c in proxy.commands)


def test_client_killed_mid_frame_does_not_stop_the_proxy(proxy: TpmProxy) -> None:
    half = _get_random_frame(8)[:7]
    script = (
        "import os, signal, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(bytes.fromhex(sys.argv[2]))\n"
        "print('sent', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(proxy.listen_sock), half.hex()], capture_output=True, text=True
    )
    assert r.returncode == -signal.SIGKILL
    assert r.stdout == "sent\n"
    deadline = time.monotonic() + 5
    while not any("inside a command frame" in e for e in proxy.errors) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("closed inside a command frame (7 bytes" in e for e in proxy.errors), proxy.errors
    assert proxy.count() == 0  # half a command is not a command
    # The proxy and swtpm still serve the next client.
    out = _tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "8").strip()
    assert len(bytes.fromhex(out)) == 8
    assert proxy.count("GetRandom") == 1


def test_client_gone_before_the_response_leaves_the_command_unanswered(proxy: TpmProxy) -> None:
    seen = threading.Event()
    proxy.on_command = lambda cmd: seen.set()
    with _connect(proxy.listen_sock) as s:
        s.sendall(_get_random_frame(8))
        s.shutdown(socket.SHUT_RDWR)
    assert seen.wait(5)
    (cmd,) = proxy.commands
    assert cmd.name == "GetRandom"
    # Either swtpm answered before the close reached it, or the command stays unanswered.
    assert cmd.response is None or cmd.response_code == 0
    assert _tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "4")


def test_garbage_on_the_data_socket_is_forwarded_and_reported_not_counted(proxy: TpmProxy) -> None:
    with _connect(proxy.listen_sock) as s:
        s.sendall(b"\x80\x01\xff\xff\xff\xff\x00\x00\x01\x7b")  # size 4 GiB
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    assert proxy.count() == 0
    assert any("not framed" in e for e in proxy.errors), proxy.errors
    assert len(bytes.fromhex(_tool(proxy.listen_sock, "tpm2_getrandom", "--hex", "4").strip())) == 4


def test_unreachable_target_drops_the_client_and_keeps_listening(tmp_path: Path) -> None:
    with TpmProxy(tmp_path / "nothing", tmp_path / "proxy") as p:
        with _connect(p.listen_sock) as s:
            assert s.recv(10) == b""
        assert any("cannot reach" in e for e in p.errors)
        assert p.listen_sock.exists()


def test_stop_removes_both_sockets_and_is_idempotent(swtpm: Swtpm) -> None:
    p = TpmProxy(swtpm.sock, swtpm.dir / "proxy")
    with p:
        assert p.listen_sock.exists() and p.ctrl_sock.exists()
    assert not p.listen_sock.exists() and not p.ctrl_sock.exists()
    p.stop()
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(p.listen_sock))


def test_stop_cuts_a_client_that_keeps_its_connection_open(proxy: TpmProxy) -> None:
    s = _connect(proxy.listen_sock)
    _exchange(s, _get_random_frame(4))
    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 5
    assert s.recv(10) == b""
    s.close()


# ---------------------------------------------------------------------------- CLI


def test_cli_logs_one_json_line_per_command_and_a_summary_on_sigterm(swtpm: Swtpm) -> None:
    listen = swtpm.dir / "cli-proxy"
    log = swtpm.dir / "commands.jsonl"
    pythonpath = os.pathsep.join(filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tpmseal.testing.tpmproxy", "--target", str(swtpm.sock),
         "--listen", str(listen), "--log", str(log)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not listen.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _tool(listen, "tpm2_getrandom", "--hex", "8")
        _tool(listen, "tpm2_pcrread", "sha256:0")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = list(read_log(log))
    *per_command, last = lines
    summary = last["summary"]
    names = [entry["name"] for entry in per_command]
    assert names == ["GetCapability", "GetRandom", "GetCapability", "PCR_Read"]
    assert all(entry["rc"] == "0x00000000" for entry in per_command)
    assert all("command_hex" not in entry for entry in per_command)  # no raw bytes unless asked
    assert summary["commands"] == 4
    assert summary["by_name"] == {"GetCapability": 2, "GetRandom": 1, "PCR_Read": 1}
    assert "4 TPM commands" in err
    assert not listen.exists()
    json.dumps(summary)
