# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal-credd: serves ``LoadCredential=NAME:/run/tpmseal/creds.sock``.

When a unit starts, systemd connects to the socket from an abstract AF_UNIX address that ends in
``/unit/UNIT/NAME`` (the address is ``@`` + a random 64-bit number in hex + ``/unit/UNIT/NAME``) and reads
until EOF; what it reads becomes ``$CREDENTIALS_DIRECTORY/NAME`` of the unit. Anyone can bind any abstract
address, so the address alone proves nothing. A request is served only when

1. the peer address has that form (unit and credential name valid),
2. the peer runs as root (SO_PEERCRED): systemd sets up credentials before it drops privileges,
3. the peer process is in the cgroup of the unit named in the address (``/proc/PID/cgroup``),
4. a credential for exactly that unit and name is installed (``/etc/tpmseal/creds/UNIT/NAME.cred``),
5. it decrypts: TPM unseal under its PCR policy, GCM tag, name, unit and expiry.

Then the secret is written and the connection closed. Any refusal closes the connection with nothing
written. One log line per request names the unit, the credential and the result, never the secret.

Threads: the accept loop hands connections to a small pool; the TPM is used under one lock (a TPM
without a resource manager must not see two clients' sessions at once). Every socket operation has a
deadline. With ``idle_exit`` the server returns after that many seconds without a connection; systemd's
socket unit keeps listening and starts it again for the next one.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpmseal.creds import reader
from tpmseal.creds.envelope import check_name, check_unit
from tpmseal.creds.store import SOCKET, credential_path
from tpmseal.errors import TpmError, TpmsealError, TpmUnavailable, UsageError

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

SD_LISTEN_FDS_START = 3
_PEER_RE = re.compile(rb"\x00[0-9a-f]{1,16}/unit/([^/\x00]{1,256})/([^/\x00]{1,256})")
_UCRED = struct.Struct("3i")

UnitOfPid = Callable[[int], "str | None"]


class Refused(Exception):
    """A request not served; the message goes into the log line."""


def parse_peer(address: Any) -> tuple[str, str]:
    """(unit, credential name) from systemd's abstract peer address."""
    raw = address if isinstance(address, bytes) else str(address).encode("utf-8", "replace")
    m = _PEER_RE.fullmatch(raw)
    if not m:
        raise Refused("peer address is not a LoadCredential= request")
    unit, name = m.group(1).decode("ascii", "replace"), m.group(2).decode("ascii", "replace")
    try:
        return check_unit(unit), check_name(name)
    except UsageError as e:
        raise Refused(e.message) from None


def unit_from_cgroup(path: str) -> str | None:
    """The unit of a cgroup path: the first component that is not a slice (``/system.slice/x.service/…``)."""
    for comp in path.strip("/").split("/"):
        if not comp or comp.endswith(".slice"):
            continue
        return comp if "." in comp else None
    return None


def unit_of_pid(pid: int) -> str | None:
    """The systemd unit a process belongs to, from /proc/PID/cgroup: systemd's own hierarchy
    (``name=systemd`` on legacy and hybrid systems), else the unified one (``0::``)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    path = paths.get("name=systemd", paths.get(""))
    return unit_from_cgroup(path) if path is not None else None


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, from the kernel (SO_PEERCRED)."""
    pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def stderr_log(line: str) -> None:
    print(f"tpmseal-credd: {line}", file=sys.stderr, flush=True)


class CredServer:
    def __init__(
        self,
        listener: socket.socket,
        root: str | Path = "/",
        tpm_device: str = "auto",
        *,
        idle_exit: float | None = None,
        timeout: float = 10.0,
        workers: int = 8,
        unit_of: UnitOfPid = unit_of_pid,
        log: Callable[[str], None] = stderr_log,
    ) -> None:
        self.listener = listener
        self.root = Path(root)
        self.tpm_device = tpm_device
        self.idle_exit = idle_exit
        self.timeout = timeout
        self.unit_of = unit_of
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="credd")
        self._tpm_lock = threading.Lock()
        self._esapi: ESAPI | None = None
        self._tpm_stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        self._last = time.monotonic()
        self.served = 0
        self.refused = 0

    # -- the TPM, shared by all requests, one at a time
    @contextlib.contextmanager
    def _tpm(self) -> Iterator[ESAPI]:
        from tpmseal.tpm.device import open_tpm

        with self._tpm_lock:
            if self._esapi is None:
                self._esapi = self._tpm_stack.enter_context(open_tpm(self.tpm_device))
            try:
                yield self._esapi
            except (TpmUnavailable, TpmError) as e:
                if type(e) in (TpmUnavailable, TpmError):  # lost the TPM: reopen for the next request
                    self._close_tpm()
                raise

    def _close_tpm(self) -> None:
        self._esapi = None
        with contextlib.suppress(Exception):
            self._tpm_stack.close()
        self._tpm_stack = contextlib.ExitStack()

    # -- one request
    def handle(self, conn: socket.socket) -> None:
        t0 = time.monotonic()
        unit = name = "-"
        pid = 0
        result = "refused"
        try:
            conn.settimeout(self.timeout)
            unit, name = parse_peer(conn.getpeername())
            pid, uid, _ = peer_credentials(conn)
            if uid != 0:
                raise Refused(f"peer process {pid} runs as uid {uid}, not root (systemd)")
            actual = self.unit_of(pid)
            if actual != unit:
                raise Refused(f"peer process {pid} belongs to {actual or 'no unit'}, not {unit}")
            path = credential_path(self.root, unit, name)
            try:
                data = reader.read_file(path)
            except TpmsealError:
                raise Refused(f"no credential '{name}' is installed for {unit}") from None
            parsed = reader.parse(data)
            with self._tpm() as esapi:
                secret = reader.decrypt(esapi, parsed, name, unit)
            with secret:
                conn.sendall(secret.buffer)
                conn.shutdown(socket.SHUT_WR)
            result = "served"
            self.served += 1
        except Refused as e:
            result = f"refused: {e}"
            self.refused += 1
        except TpmsealError as e:
            result = f"refused: {type(e).__name__}: {e.message}"
            self.refused += 1
        except OSError as e:
            result = f"failed: {e}"
            self.refused += 1
        except Exception as e:  # a bug must not take the server down (messages never carry secrets)
            result = f"failed: {type(e).__name__}: {str(e)[:200]}"
            self.refused += 1
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            ms = (time.monotonic() - t0) * 1000
            self.log(f"unit={unit} credential={name} pid={pid} result={result} time={ms:.1f}ms")
            with self._active_lock:
                self._active -= 1
                self._last = time.monotonic()

    # -- the accept loop
    def serve_forever(self) -> None:
        self.listener.setblocking(False)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.listener], [], [], 0.2)
                if not ready:
                    if self.idle_exit is not None:
                        with self._active_lock:
                            idle = self._active == 0 and time.monotonic() - self._last >= self.idle_exit
                        if idle:
                            return
                    continue
                try:
                    conn, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(True)
                with self._active_lock:
                    self._active += 1
                    self._last = time.monotonic()
                self._pool.submit(self.handle, conn)
        finally:
            self._pool.shutdown(wait=True)
            with self._tpm_lock:
                self._close_tpm()

    def stop(self) -> None:
        self._stop.set()


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS/LISTEN_PID), if any."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        fds = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return None
    if pid != os.getpid() or fds < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    s = socket.socket(fileno=SD_LISTEN_FDS_START)
    if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
        raise UsageError("the socket passed by systemd is not an AF_UNIX stream socket")
    return s


def bind_socket(path: str | Path = SOCKET, backlog: int = 512) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path``, mode 0600 (only root can connect)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(p.lstat().st_mode):
            p.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(str(p))
    finally:
        os.umask(old)
    os.chmod(p, 0o600)
    s.listen(backlog)
    return s


def serve(socket_path: str | None, root: str, tpm_device: str, idle_exit: float | None, timeout: float = 10.0) -> int:
    """``tpmseal creds serve``: the socket from systemd if it passed one, else bind ``socket_path``."""
    from tpmseal.hardening import harden
    from tpmseal.tpm.device import quiet_tss_logging

    harden()  # already done by the CLI: up to 1 MiB of plaintext per request stays out of cores and swap
    quiet_tss_logging()
    listener = activated_socket() if socket_path is None else None
    owned = listener is None
    if listener is None:
        listener = bind_socket(socket_path or SOCKET)
    server = CredServer(listener, root, tpm_device, idle_exit=idle_exit, timeout=timeout)
    import signal

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        if owned:
            with contextlib.suppress(OSError):
                os.unlink(socket_path or SOCKET)
        listener.close()
    return 0
