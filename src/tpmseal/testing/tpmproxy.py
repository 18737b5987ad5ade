# SPDX-License-Identifier: LGPL-2.1-or-later
"""A recording proxy between a TPM client and a running swtpm: counts TPM commands.

swtpm serves TPM commands on a data socket SOCK and its control channel on ``SOCK.ctrl``; the
``swtpm:path=X`` TCTI derives the control socket from X the same way. The proxy listens on LISTEN
and ``LISTEN.ctrl`` and forwards every client connection, byte for byte, to a new connection on
SOCK or ``SOCK.ctrl``. Nothing is changed or reordered, and swtpm still serves one data connection
at a time (the swtpm TCTI opens one per command). One deviation: a TPM command reaches swtpm only
when it is whole, in one write, as a TPM device would take it (swtpm reads one command per read);
half a command from a client that died is dropped rather than fed to swtpm.

On the way through, the data stream is cut into TPM frames (header: tag u16, size u32, command or
response code u32, all big-endian) and each command is paired with the response that follows it
on the same connection. Control traffic is forwarded and recorded apart; it is never counted as a
TPM command. Everything is kept in memory, including the raw bytes: this is a test tool, and the
recording holds whatever secrets pass through.

Use in tests::

    with TpmProxy(swtpm_sock, tmp_path / "proxy") as proxy:
        run(["tpm2_getrandom", "8"], env={"TPM2TOOLS_TCTI": f"swtpm:path={proxy.listen_sock}"})
        assert proxy.names() == [...]

Use from benchmarks (until SIGTERM/SIGINT; one JSON line per command, then a summary line)::

    python -m tpmseal.testing.tpmproxy --target SOCK --listen PROXY --log commands.jsonl
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from tpmseal.testing.tpmframes import (
    HEADER,
    Channel,
    CtrlMessage,
    Direction,
    FrameSplitter,
    TpmCommand,
    Traffic,
    command_name,
)

__all__ = ["CtrlMessage", "TpmCommand", "TpmProxy", "Traffic", "command_name", "main", "read_log"]

_RECV = 65536
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class _Connection:
    """One client connection and its upstream twin, pumped by two threads."""

    def __init__(self, proxy: TpmProxy, number: int, channel: Channel, client: socket.socket) -> None:
        self.proxy = proxy
        self.number = number
        self.channel = channel
        self.client = client
        self.upstream: socket.socket | None = None
        self.commands = FrameSplitter()
        self.responses = FrameSplitter()
        self.waiting: collections.deque[TpmCommand] = collections.deque()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running = 2
        self._closed = False

    def start(self, target: Path) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(target))
        except OSError as e:
            upstream.close()
            self.proxy._note_error(f"connection {self.number}: cannot reach {target}: {e}")
            self._close_all()
            self.proxy._forget(self)
            return
        self.upstream = upstream
        for name, src, dst, direction in (
            ("c2s", self.client, upstream, "command"),
            ("s2c", upstream, self.client, "response"),
        ):
            t = threading.Thread(
                target=self._pump,
                args=(src, dst, direction),
                name=f"tpmproxy-{self.channel}{self.number}-{name}",
                daemon=True,
            )
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: Direction) -> None:
        try:
            while True:
                try:
                    data = src.recv(_RECV)
                except OSError:
                    break
                if not data:
                    break
                # Record before forwarding: once the peer has the bytes, the record is complete.
                try:
                    for chunk in self.proxy._record(self, direction, data):
                        dst.sendall(chunk)
                except OSError:
                    break
            # Pass the end of stream on (a half-close), so the other side sees EOF as it would
            # without the proxy; the other pump ends when that side closes in turn.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            if direction == "response":
                # The server is gone: nothing more can travel either way.
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._close_all()
                self.proxy._connection_ended(self)

    def shutdown(self) -> None:
        """Wake both pumps (used by TpmProxy.stop)."""
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _close_all(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class TpmProxy:
    """Forwards ``listen_sock`` to ``target_sock`` (and ``.ctrl`` to ``.ctrl``), recording TPM commands.

    ``on_command`` is called (from a proxy thread) once per command when its response has passed,
    or when its connection ended without one.
    """

    def __init__(
        self,
        target_sock: Path | str,
        listen_sock: Path | str,
        *,
        on_command: Callable[[TpmCommand], None] | None = None,
    ) -> None:
        self.target_sock = Path(target_sock)
        self.listen_sock = Path(listen_sock)
        self.on_command = on_command
        for p in (self.listen_sock, self.target_sock):
            if len(os.fsencode(f"{p}.ctrl")) > _SUN_PATH_MAX:
                raise ValueError(f"socket path too long for AF_UNIX: {p}.ctrl")
        self._lock = threading.Lock()
        self._commands: list[TpmCommand] = []
        self._ctrl: list[CtrlMessage] = []
        self._traffic: list[Traffic] = []
        self._errors: list[str] = []
        self._connections: dict[Channel, int] = {"data": 0, "ctrl": 0}  # since the last reset
        self._live: set[_Connection] = set()
        self._next_conn = 0
        self._listeners: list[tuple[Channel, socket.socket, Path]] = []
        self._wake_r, self._wake_w = -1, -1
        self._acceptor: threading.Thread | None = None
        self._started = False

    # ---------------------------------------------------------------- life cycle

    @property
    def ctrl_sock(self) -> Path:
        return Path(f"{self.listen_sock}.ctrl")

    def start(self) -> Self:
        """Listen on both sockets; on return, clients can connect."""
        if self._started:
            raise RuntimeError("TpmProxy already started")
        self._started = True
        try:
            # The control socket first: once the data socket exists, both accept connections.
            self._listeners.append(("ctrl", self._listen(self.ctrl_sock), self.ctrl_sock))
            self._listeners.append(("data", self._listen(self.listen_sock), self.listen_sock))
        except BaseException:
            self._close_listeners()
            self._started = False
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tpmproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut live connections, remove the sockets. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._close_listeners()
        with self._lock:
            live = list(self._live)
        for conn in live:
            conn.shutdown()
        for conn in live:
            for t in conn.threads:
                t.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        # Bind under a temporary name and rename: the socket shows up at its path only once it
        # listens, so a client that waits for the path never sees ECONNREFUSED.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            path.unlink()  # a stale socket of an earlier run
        tmp = path.with_name(path.name + ".~")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(str(tmp))
            s.listen(64)
            tmp.rename(path)
        except BaseException:
            s.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return s

    def _close_listeners(self) -> None:
        for _channel, s, path in self._listeners:
            s.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._listeners.clear()

    def _accept_loop(self) -> None:
        by_fd = {s.fileno(): (channel, s) for channel, s, _ in self._listeners}
        while True:
            ready, _, _ = select.select([self._wake_r, *by_fd], [], [])
            if self._wake_r in ready:
                return
            for fd in ready:
                channel, listener = by_fd[fd]
                try:
                    client, _addr = listener.accept()
                except OSError as e:
                    self._note_error(f"accept on {channel} socket: {e}")
                    continue
                target = self.target_sock if channel == "data" else Path(f"{self.target_sock}.ctrl")
                with self._lock:
                    self._next_conn += 1
                    conn = _Connection(self, self._next_conn, channel, client)
                    self._connections[channel] += 1
                    self._live.add(conn)
                conn.start(target)

    # ---------------------------------------------------------------- recording (proxy threads)

    def _record(self, conn: _Connection, direction: Direction, data: bytes) -> list[bytes]:
        """Record bytes read from one side; returns what to forward to the other side.

        Commands are forwarded as whole frames, each in one write: swtpm takes each read of its
        socket for one command, so a client that writes a command in pieces (or dies halfway)
        would otherwise get TPM_RC_COMMAND_SIZE for the first piece. The bytes are the same; only
        the write boundaries follow the frames. A stream that cannot be framed passes as it comes.
        """
        now = time.time()
        t0 = time.perf_counter()
        finished: list[TpmCommand] = []
        with self._lock:
            self._traffic.append(Traffic(conn.channel, conn.number, direction, now, data))
            if conn.channel == "ctrl":
                self._ctrl.append(CtrlMessage(conn.number, direction, now, data))
                return [data]
            if direction == "command":
                frames, unframed = conn.commands.feed(data)
                forward = [*frames, unframed] if unframed else frames
                for frame in frames:
                    tag, _size, code = HEADER.unpack_from(frame)
                    cmd = TpmCommand(
                        index=len(self._commands),
                        connection=conn.number,
                        code=code,
                        name=command_name(code),
                        tag=tag,
                        command=frame,
                        command_time=now,
                        command_perf=t0,
                    )
                    self._commands.append(cmd)
                    conn.waiting.append(cmd)
                self._check_broken(conn, conn.commands, "command")
            else:
                forward = [data]
                for frame in conn.responses.feed(data)[0]:
                    tag, _size, rc = HEADER.unpack_from(frame)
                    if not conn.waiting:
                        self._errors.append(f"connection {conn.number}: response without a command")
                        continue
                    cmd = conn.waiting.popleft()
                    cmd.response = frame
                    cmd.response_code = rc
                    cmd.response_tag = tag
                    cmd.response_time = now
                    cmd.latency = t0 - cmd.command_perf
                    finished.append(cmd)
                self._check_broken(conn, conn.responses, "response")
        self._announce(finished)
        return forward

    def _check_broken(self, conn: _Connection, splitter: FrameSplitter, what: str) -> None:
        # Called with self._lock held. Reports a broken stream once per connection and side.
        if splitter.broken is not None and not splitter.reported:
            self._errors.append(f"connection {conn.number}: {what} stream not framed: {splitter.broken}")
            splitter.reported = True

    def _connection_ended(self, conn: _Connection) -> None:
        with self._lock:
            self._live.discard(conn)
            left = list(conn.waiting)
            conn.waiting.clear()
            if conn.channel == "data":
                for what, splitter in (("command", conn.commands), ("response", conn.responses)):
                    if splitter.pending:
                        self._errors.append(
                            f"connection {conn.number}: closed inside a {what} frame "
                            f"({splitter.pending} bytes{', not forwarded' if what == 'command' else ''})"
                        )
        self._announce(left)

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._live.discard(conn)

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _announce(self, commands: Sequence[TpmCommand]) -> None:
        if self.on_command is None:
            return
        for cmd in commands:
            try:
                self.on_command(cmd)
            except Exception as e:  # a broken callback must not stop the forwarding
                self._note_error(f"on_command callback failed: {e!r}")

    # ---------------------------------------------------------------- queries

    @property
    def commands(self) -> list[TpmCommand]:
        """The TPM commands seen since the last reset, in arrival order (a copy of the list)."""
        with self._lock:
            return list(self._commands)

    @property
    def ctrl_messages(self) -> list[CtrlMessage]:
        with self._lock:
            return list(self._ctrl)

    @property
    def traffic(self) -> list[Traffic]:
        with self._lock:
            return list(self._traffic)

    @property
    def errors(self) -> list[str]:
        """Broken framing, unreachable target, clients gone mid-frame: the proxy itself goes on."""
        with self._lock:
            return list(self._errors)

    def connections(self, channel: Channel = "data") -> int:
        """How many client connections were accepted on a channel since the last reset."""
        with self._lock:
            return self._connections[channel]

    def reset(self) -> None:
        """Forget everything recorded so far (commands still waiting for a response stay paired)."""
        with self._lock:
            self._commands.clear()
            self._ctrl.clear()
            self._traffic.clear()
            self._errors.clear()
            self._connections = {"data": 0, "ctrl": 0}

    def count(self, name: str | None = None) -> int:
        """Number of TPM commands, or of those with this name ("GetRandom", or hex for unknown codes)."""
        with self._lock:
            if name is None:
                return len(self._commands)
            return sum(1 for c in self._commands if c.name == name)

    def ctrl_count(self) -> int:
        """Number of control messages sent by clients (not TPM commands)."""
        with self._lock:
            return sum(1 for m in self._ctrl if m.direction == "command")

    def names(self) -> list[str]:
        """The names of the TPM commands in arrival order."""
        with self._lock:
            return [c.name for c in self._commands]

    def counts(self) -> dict[str, int]:
        """Command name -> how often, most frequent first."""
        return dict(collections.Counter(self.names()).most_common())

    def raw_bytes(self, channel: Channel | None = None) -> bytes:
        """All bytes that passed, both directions, in arrival order (both channels unless given)."""
        with self._lock:
            return b"".join(t.data for t in self._traffic if channel is None or t.channel == channel)

    def summary(self) -> dict[str, Any]:
        cmds = self.commands
        return {
            "commands": len(cmds),
            "by_name": dict(collections.Counter(c.name for c in cmds).most_common()),
            "failed": sum(1 for c in cmds if c.response_code not in (0, None)),
            "unanswered": sum(1 for c in cmds if c.response is None),
            "ctrl_messages": self.ctrl_count(),
            "connections": self.connections("data"),
            "ctrl_connections": self.connections("ctrl"),
            "bytes": len(self.raw_bytes("data")),
            "errors": self.errors,
        }


# -------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tpmseal.testing.tpmproxy",
        description="Forward a swtpm socket pair and count the TPM commands that pass.",
    )
    p.add_argument("--target", type=Path, required=True, help="swtpm's data socket (SOCK; SOCK.ctrl too)")
    p.add_argument("--listen", type=Path, required=True, help="socket to offer clients (and LISTEN.ctrl)")
    p.add_argument("--log", type=Path, help="write one JSON line per command, then a summary line")
    p.add_argument(
        "--with-bytes",
        action="store_true",
        help="put command and response bytes (hex) in the log: they may hold secrets",
    )
    return p.parse_args(argv)


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print(f"tpmproxy: {summary['commands']} TPM commands on {summary['connections']} connections", file=out)
    for name, n in summary["by_name"].items():
        print(f"  {n:5d}  {name}", file=out)
    print(
        f"  failed {summary['failed']}, unanswered {summary['unanswered']}, "
        f"control messages {summary['ctrl_messages']}",
        file=out,
    )
    for err in summary["errors"]:
        print(f"  note: {err}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    log: TextIO | None = None
    log_lock = threading.Lock()

    def write_line(cmd: TpmCommand) -> None:
        if log is not None:
            with log_lock:
                log.write(json.dumps(cmd.as_json(with_bytes=args.with_bytes)) + "\n")
                log.flush()

    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as stack:
        if args.log is not None:
            log = stack.enter_context(args.log.open("w", encoding="utf-8"))
        proxy = TpmProxy(args.target, args.listen, on_command=write_line)
        try:
            proxy.start()
        except OSError as e:
            print(f"tpmproxy: cannot listen on {args.listen}: {e}", file=sys.stderr)
            return 1
        print(f"tpmproxy: listening on {args.listen}, forwarding to {args.target}", file=sys.stderr)
        sys.stderr.flush()
        while not done.wait(0.5):
            pass
        proxy.stop()
        summary = proxy.summary()
        if log is not None:
            with log_lock:
                log.write(json.dumps({"summary": summary}) + "\n")
        _print_summary(summary, sys.stderr)
    return 0


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """Read a log written by the CLI (a helper for benchmarks)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":
    sys.exit(main())
