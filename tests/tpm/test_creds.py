# SPDX-License-Identifier: LGPL-2.1-or-later
"""Service credentials (tpmseal creds) against a real swtpm: the format, the tamper matrix, the
LoadCredential= server as systemd talks to it, and interop with systemd-creds.

The server tests put their clients into real cgroups (``/sys/fs/cgroup/...``) named like systemd units,
so the server's check of /proc/PID/cgroup runs unchanged. Only when the host has no writable cgroup
hierarchy do they fall back to an injected pid -> unit lookup (and say so in the skip-free output).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Swtpm, need, run_cli

from tpmseal.creds import envelope, reader
from tpmseal.creds.server import CredServer, bind_socket, parse_peer, unit_from_cgroup
from tpmseal.errors import (
    CredentialCorrupt,
    CredentialExpired,
    CredentialNameMismatch,
    CredentialRejected,
    CredentialTampered,
    CredentialUnitMismatch,
    CredentialUnsupported,
    PolicyMismatch,
    TpmError,
    WrongTpm,
)
from tpmseal.secret import Secret
from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs

pytestmark = pytest.mark.tpm

UNIT = "webapp.service"


# --------------------------------------------------------------------------- helpers


def enc(
    tpm: Swtpm, secret: bytes, name: str = "db", unit: str | None = UNIT, pcrs: str = "", **kw: int | None
) -> bytes:
    with open_tpm(tpm.tcti) as esapi, Secret(secret) as s:
        return envelope.encrypt(esapi, s, name, unit, parse_pcrs(pcrs), **kw)


def dec(
    tpm: Swtpm,
    data: bytes,
    name: str | None = "db",
    unit: str | None = UNIT,
    now: Callable[[], float] = time.time,
) -> bytes:
    parsed = reader.parse(data)
    with open_tpm(tpm.tcti) as esapi, reader.decrypt(esapi, parsed, name, unit, now) as s:
        return bytes(s.buffer)


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[offset] ^= 1 << bit
    return bytes(b)


def header_end(data: bytes) -> int:
    _, _, hlen = envelope.PREFIX.unpack_from(data)
    return envelope.PREFIX.size + hlen


def rewrite_header(data: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    """Re-encode the header after ``change`` (a forger who edits fields but cannot re-encrypt)."""
    end = header_end(data)
    h = json.loads(data[envelope.PREFIX.size : end])
    change(h)
    body = json.dumps(h, sort_keys=True, separators=(",", ":")).encode()
    return envelope.PREFIX.pack(envelope.MAGIC, envelope.VERSION, len(body)) + body + data[end:]


# --------------------------------------------------------------------------- round trips


def test_round_trip_cli(swtpm: Swtpm, no_leaks: None, tmp_path: Path) -> None:
    out = tmp_path / "db.cred"
    run_cli("creds", "encrypt", "db", "-", str(out), f"--tpm2-device={swtpm.tcti}", f"--unit={UNIT}", stdin=b"pw\x00x")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    p = subprocess.run(
        [sys.executable, "-m", "tpmseal", "creds", "decrypt", str(out), f"--tpm2-device={swtpm.tcti}",
         "--name=db", f"--unit={UNIT}"],
        capture_output=True, check=True,
    )  # fmt: skip
    assert p.stdout == b"pw\x00x"
    info = json.loads(run_cli("creds", "inspect", str(out), "--json").stdout)
    assert info["name"] == "db" and info["unit"] == UNIT and info["size"] == 4
    assert info["pcrs"] == [{"index": 7, "value": swtpm.pcr(7).hex()}]  # the default, see below


def test_default_binds_pcr7_like_systemd_creds_and_a_changed_pcr7_refuses(other_swtpm: Swtpm, tmp_path: Path) -> None:
    """Without --tpm2-pcrs the data key is sealed to PCR 7 (the Secure Boot state), as systemd-creds does (not to
    PCR 15, which measure-volumes has extended by the time services read credentials):
    the header names it, the policy digest is PolicyPCR(7) over the value at encryption, and once PCR 7 moves
    (another boot chain) the TPM refuses. Control: a credential encrypted with --tpm2-pcrs= (none, with a
    warning) still decrypts after the same change, so the refusal is the binding's doing."""
    from tpmseal.tpm.pcrs import Pcr, PcrSelection
    from tpmseal.tpm.policy import policy_digest

    tcti = f"--tpm2-device={other_swtpm.tcti}"
    bound, unbound = tmp_path / "bound.cred", tmp_path / "unbound.cred"
    p = run_cli("creds", "encrypt", "db", "-", str(bound), tcti, stdin=b"pw")
    assert "warning" not in p.stderr
    pcr7 = other_swtpm.pcr(7)
    h = reader.parse(bound.read_bytes()).native
    assert h is not None
    assert [(p.index, p.value) for p in h.header.pcrs.pcrs] == [(7, pcr7)] and h.header.pcrs.bank == "sha256"
    assert h.header.policy_digest == policy_digest(PcrSelection("sha256", (Pcr(7, pcr7),)), False)
    p = run_cli("creds", "encrypt", "db", "-", str(unbound), tcti, "--tpm2-pcrs=", stdin=b"pw")
    assert "tpmseal: warning: the credential is bound to no PCR" in p.stderr
    assert run_cli("creds", "decrypt", str(bound), tcti).stdout == "pw"
    # why not PCR 15: a credential bound to it at boot-time zero is dead once the initramfs measured the volumes
    zero15 = tmp_path / "zero15.cred"
    run_cli("creds", "encrypt", "db", "-", str(zero15), tcti, "--tpm2-pcrs=7+15", stdin=b"pw")
    run_cli("measure-volumes", tcti)
    assert run_cli("creds", "decrypt", str(bound), tcti).stdout == "pw"
    run_cli("creds", "decrypt", str(zero15), tcti, check=5)
    other_swtpm.extend(7, b"another boot chain")
    p = run_cli("creds", "decrypt", str(bound), tcti, check=5)
    assert "PCR(s) 7 differ" in p.stderr and p.stdout == ""
    assert run_cli("creds", "decrypt", str(unbound), tcti).stdout == "pw"
    assert other_swtpm.loaded_handles() == []


def test_round_trip_1mib_binary_and_limit(swtpm: Swtpm, no_leaks: None) -> None:
    secret = os.urandom(envelope.MAX_SECRET)
    data = enc(swtpm, secret)
    assert dec(swtpm, data) == secret
    assert dec(swtpm, enc(swtpm, b"")) == b""
    with pytest.raises(Exception, match=r"at most 1048576"):
        enc(swtpm, secret + b"x")


def test_round_trip_with_pcr_policy(swtpm: Swtpm, no_leaks: None) -> None:
    data = enc(swtpm, b"bound", pcrs="7")
    assert reader.describe(reader.parse(data))["pcrs"][0]["value"] == swtpm.pcr(7).hex()
    assert dec(swtpm, data) == b"bound"


def test_pin_refused_with_reason(swtpm: Swtpm, tmp_path: Path) -> None:
    p = run_cli("creds", "encrypt", "db", "-", str(tmp_path / "x"), f"--tpm2-device={swtpm.tcti}",
                "--tpm2-with-pin", stdin=b"x", check=2)  # fmt: skip
    assert "cannot type a PIN" in p.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- the tamper matrix


@pytest.fixture
def cred(swtpm: Swtpm) -> bytes:
    return enc(swtpm, b"the secret")


def test_renamed_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    with pytest.raises(CredentialNameMismatch, match="encrypted for the name 'db', not 'db2'"):
        dec(swtpm, cred, name="db2")


def test_swapped_between_names_refused(swtpm: Swtpm, no_leaks: None) -> None:
    a, b = enc(swtpm, b"AAA", name="alpha"), enc(swtpm, b"BBB", name="beta")
    assert dec(swtpm, b, name="beta") == b"BBB"
    with pytest.raises(CredentialNameMismatch):
        dec(swtpm, a, name="beta")  # alpha's file put where beta's belongs


def test_swapped_between_units_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    with pytest.raises(CredentialUnitMismatch, match=r"encrypted for unit 'webapp\.service', not 'other\.service'"):
        dec(swtpm, cred, unit="other.service")


def test_name_edited_in_header_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    """A forger who rewrites the authenticated name (or unit) cannot fix the GCM tag."""
    forged = rewrite_header(cred, lambda h: h.update(name="db2", unit="other.service"))
    with pytest.raises(CredentialTampered):
        dec(swtpm, forged, name="db2", unit="other.service")


def test_expiry_edited_in_header_refused(swtpm: Swtpm, no_leaks: None) -> None:
    data = enc(swtpm, b"x", not_after=int(time.time()) + 60)
    forged = rewrite_header(data, lambda h: h.update(not_after=None))
    with pytest.raises(CredentialTampered):
        dec(swtpm, forged)


@pytest.mark.parametrize("where", ["empty", "magic", "prefix", "header", "header_end", "ciphertext", "tag"])
def test_truncated_refused(swtpm: Swtpm, no_leaks: None, cred: bytes, where: str) -> None:
    end = header_end(cred)
    cut = {"empty": 0, "magic": 5, "prefix": 12, "header": end // 2, "header_end": end,
           "ciphertext": end + 3, "tag": len(cred) - 1}[where]  # fmt: skip
    with pytest.raises(CredentialCorrupt):
        dec(swtpm, cred[:cut])
    with pytest.raises(CredentialCorrupt, match="trailing"):
        dec(swtpm, cred + b"\0")


def test_flipped_bit_in_ciphertext_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    with pytest.raises(CredentialTampered, match="changed after it was encrypted"):
        dec(swtpm, flip(cred, header_end(cred) + 2))


def test_flipped_bit_in_tag_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    with pytest.raises(CredentialTampered):
        dec(swtpm, flip(cred, len(cred) - 1, 7))


def test_flipped_bit_in_sealed_key_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    def change(h: dict[str, object]) -> None:
        tpm = h["tpm"]
        assert isinstance(tpm, dict)
        priv = bytearray(base64.b64decode(tpm["private"]))
        priv[-5] ^= 1
        tpm["private"] = base64.b64encode(priv).decode()

    with pytest.raises(WrongTpm, match="sealed key"):
        dec(swtpm, rewrite_header(cred, change))


def test_every_flipped_bit_refused(swtpm: Swtpm, no_leaks: None, cred: bytes) -> None:
    """Every bit of the prefix, the ciphertext and the tag, and 300 random bits of the header: each is
    refused with a named error, never decrypted, and no failure path leaves a TPM handle loaded."""
    end = header_end(cred)
    rng = random.Random(1)
    positions = [(o, b) for o in [*range(envelope.PREFIX.size), *range(end, len(cred))] for b in range(8)]
    positions += [(rng.randrange(envelope.PREFIX.size, end), rng.randrange(8)) for _ in range(300)]
    kinds: dict[str, int] = {}
    others: set[str] = set()
    with open_tpm(swtpm.tcti) as esapi:
        for offset, bit in positions:
            with (
                pytest.raises((CredentialRejected, TpmError)) as info,
                reader.decrypt(esapi, reader.parse(flip(cred, offset, bit)), "db", UNIT),
            ):
                pass
            kinds[type(info.value).__name__] = kinds.get(type(info.value).__name__, 0) + 1
            if type(info.value) is TpmError:
                others.add(str(info.value))
    print(f"\n{len(positions)} flipped bits refused: {kinds} {others}")
    assert "CredentialTampered" in kinds and "CredentialCorrupt" in kinds


def test_unknown_version_refused(cred: bytes) -> None:
    bad = cred[:8] + (2).to_bytes(2, "big") + cred[10:]
    with pytest.raises(CredentialUnsupported, match="version 2 is not supported"):
        reader.parse(bad)


def test_unknown_field_refused(cred: bytes) -> None:
    with pytest.raises(CredentialCorrupt, match="unknown field"):
        reader.parse(rewrite_header(cred, lambda h: h.update(policy="authorize")))
    with pytest.raises(CredentialCorrupt, match="given twice"):
        end = header_end(cred)
        body = cred[envelope.PREFIX.size : end].replace(b'{"cipher"', b'{"size":1,"cipher"', 1)
        reader.parse(envelope.PREFIX.pack(envelope.MAGIC, 1, len(body)) + body + cred[end:])


def test_other_tpm_refused(swtpm: Swtpm, other_swtpm: Swtpm, cred: bytes) -> None:
    with pytest.raises(WrongTpm, match="another machine"):
        dec(other_swtpm, cred)  # no SRK there at all
    enc(other_swtpm, b"x")  # now it has its own SRK at the same handle
    with pytest.raises(WrongTpm, match="another machine"):
        dec(other_swtpm, cred)
    assert other_swtpm.loaded_handles() == []


def test_pcr_change_after_encrypt_refused(swtpm: Swtpm, no_leaks: None, tmp_path: Path) -> None:
    swtpm.tool("tpm2_pcrreset", "23")
    swtpm.extend(23, b"app state 1")
    path = tmp_path / "db.cred"
    path.write_bytes(enc(swtpm, b"sealed to 23", pcrs="7+23"))
    assert dec(swtpm, path.read_bytes()) == b"sealed to 23"
    swtpm.extend(23, b"something else ran")
    try:
        with pytest.raises(PolicyMismatch, match=r"PCR\(s\) 23 differ"):
            dec(swtpm, path.read_bytes())
        p = run_cli("creds", "decrypt", str(path), f"--tpm2-device={swtpm.tcti}", check=5)
        assert p.stdout == "" and "PCR(s) 23 differ" in p.stderr
    finally:
        swtpm.tool("tpm2_pcrreset", "23")


def test_expired_refused(swtpm: Swtpm, no_leaks: None, tmp_path: Path) -> None:
    now = int(time.time())
    data = enc(swtpm, b"short-lived", not_after=now + 60)
    assert dec(swtpm, data) == b"short-lived"
    with pytest.raises(CredentialExpired, match="expired at"):
        dec(swtpm, data, now=lambda: now + 61)
    old = tmp_path / "old.cred"
    old.write_bytes(enc(swtpm, b"old", now=now - 100, not_after=now - 50))
    p = run_cli("creds", "decrypt", str(old), f"--tpm2-device={swtpm.tcti}", check=7)
    assert "expired" in p.stderr and p.stdout == ""
    assert json.loads(run_cli("creds", "inspect", str(old), "--json").stdout)["expired"] is True
    run_cli("creds", "encrypt", "db", "-", str(tmp_path / "n"), f"--tpm2-device={swtpm.tcti}",
            f"--not-after=@{now - 1}", stdin=b"x", check=2)  # fmt: skip


# --------------------------------------------------------------------------- install / uninstall


def test_install_writes_credential_and_dropin(swtpm: Swtpm, tmp_path: Path) -> None:
    root = tmp_path / "root"
    f = tmp_path / "db.cred"
    f.write_bytes(enc(swtpm, b"x"))
    run_cli("creds", "install", UNIT, "db", str(f), f"--root={root}")
    stored = root / "etc/tpmseal/creds" / UNIT / "db.cred"
    assert stored.read_bytes() == f.read_bytes() and oct(stored.stat().st_mode & 0o777) == "0o600"
    dropin = (root / "etc/systemd/system" / f"{UNIT}.d" / "tpmseal-db.conf").read_text()
    assert "[Service]\nLoadCredential=db:/run/tpmseal/creds.sock\n" in dropin
    assert "After=tpmseal-credd.socket" in dropin
    # the wrong name or unit for this file is refused before anything is written
    run_cli("creds", "install", UNIT, "other", str(f), f"--root={root}", check=7)
    run_cli("creds", "install", "other.service", "db", str(f), f"--root={root}", check=7)
    assert not (root / "etc/tpmseal/creds/other.service").exists()
    run_cli("creds", "uninstall", UNIT, "db", f"--root={root}")
    assert not stored.exists() and not stored.parent.exists()
    run_cli("creds", "uninstall", UNIT, "db", f"--root={root}", check=1)


# --------------------------------------------------------------------------- the server, as systemd uses it


def test_peer_address_parsing() -> None:
    assert parse_peer(b"\x00a1b2c3d4e5f60718/unit/webapp.service/db") == ("webapp.service", "db")
    for bad in (b"", b"\x00xyz/unit/a.service/db", b"\x00ab/unit/a.service/../x", b"/run/x", "named"):
        with pytest.raises(Exception, match=r"not a LoadCredential|invalid"):
            parse_peer(bad)
    assert unit_from_cgroup("/system.slice/webapp.service") == "webapp.service"
    assert unit_from_cgroup("/system.slice/system-getty.slice/getty@tty1.service/sub") == "getty@tty1.service"
    assert unit_from_cgroup("/user.slice/user-0.slice/session-3.scope") == "session-3.scope"
    assert unit_from_cgroup("/") is None


def _cgroup_hierarchies() -> list[Path]:
    """Writable hierarchies the server reads: systemd's named one (legacy/hybrid) and cgroup2."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts, *_ = line.split()
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
            found.append(Path(mnt))
    return [p for p in found if os.access(p, os.W_OK)]


class Cgroups:
    """Unit-named cgroups under a private test slice, in every hierarchy the server looks at."""

    def __init__(self) -> None:
        self.slice = f"tpmseal-test-{os.getpid()}.slice"
        self.roots = _cgroup_hierarchies()
        self.made: list[Path] = []
        self.fake: dict[int, str] = {}
        if self.roots:
            try:
                self.dirs("probe.service")
            except OSError:
                self.roots = []

    @property
    def real(self) -> bool:
        return bool(self.roots)

    def dirs(self, unit: str) -> list[Path]:
        out = []
        for r in self.roots:
            d = r / self.slice / unit
            if not d.exists():
                d.mkdir(parents=True)
                self.made.append(d)
            out.append(d)
        return out

    def unit_of(self, pid: int) -> str | None:
        from tpmseal.creds.server import unit_of_pid

        return unit_of_pid(pid) if self.real else self.fake.get(pid)

    def cleanup(self) -> None:
        for d in reversed(self.made):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
        for r in self.roots:
            with contextlib.suppress(OSError):
                (r / self.slice).rmdir()


CLIENT = r"""
import json, os, socket, sys, threading, time, random
cfg = json.loads(sys.argv[1])
for d in cfg["cgroups"]:
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
if cfg["uid"]:
    os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
print(os.getpid(), flush=True)
sys.stdin.readline()  # go
reqs = cfg["requests"]
out = [None] * len(reqs)
barrier = threading.Barrier(len(reqs))
def one(i, unit, name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    # as systemd does: an abstract address naming the unit and the credential
    s.bind(("\0%x/unit/%s/%s" % (random.getrandbits(64), unit, name)).encode())
    barrier.wait()
    t0 = time.monotonic()
    try:
        s.connect(cfg["socket"])
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out[i] = {"data": data.hex(), "ms": (time.monotonic() - t0) * 1000}
    except OSError as e:
        out[i] = {"error": type(e).__name__, "ms": (time.monotonic() - t0) * 1000}
    finally:
        s.close()
ts = [threading.Thread(target=one, args=(i, u, n)) for i, (u, n) in enumerate(reqs)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out), flush=True)
"""


class Harness:
    def __init__(self, tpm: Swtpm, tmp: Path, cgroups: Cgroups) -> None:
        self.tpm = tpm
        self.root = tmp / "root"
        import tempfile

        self.sockdir = Path(tempfile.mkdtemp(prefix="tpmseal-credd-", dir="/tmp"))
        self.sockdir.chmod(0o755)  # like /run/tpmseal: only the socket's own mode keeps others out
        self.sock = self.sockdir / "creds.sock"
        self.cgroups = cgroups
        self.lines: list[str] = []
        self.listener = bind_socket(self.sock)
        self.server = CredServer(self.listener, self.root, tpm.tcti, unit_of=cgroups.unit_of, log=self.lines.append)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def install(self, unit: str, name: str, secret: bytes, bind_unit: bool = True) -> None:
        from tpmseal.creds.store import install

        install(self.root, unit, name, enc(self.tpm, secret, name=name, unit=unit if bind_unit else None))

    def request(self, unit_cgroup: str, requests: list[tuple[str, str]], uid: int = 0) -> list[dict[str, object]]:
        """Requests from one client process placed in the cgroup of ``unit_cgroup``."""
        cfg = {"cgroups": [str(d) for d in self.cgroups.dirs(unit_cgroup)] if self.cgroups.real else [],
               "uid": uid, "socket": str(self.sock), "requests": requests}  # fmt: skip
        p = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(cfg)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert p.stdin is not None and p.stdout is not None
        pid = int(p.stdout.readline())
        self.cgroups.fake[pid] = unit_cgroup
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        result: list[dict[str, object]] = json.loads(out)
        return result

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=30)
        self.listener.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    c = Cgroups()
    if not c.real:
        print("note: no writable cgroup hierarchy on this host; the server's unit lookup is injected")
    yield c
    c.cleanup()


@pytest.fixture
def credd(swtpm: Swtpm, tmp_path: Path, cgroups: Cgroups) -> Iterator[Harness]:
    h = Harness(swtpm, tmp_path, cgroups)
    yield h
    h.stop()


def got(r: dict[str, object]) -> bytes:
    assert "error" not in r, r
    return bytes.fromhex(str(r["data"]))


def test_server_serves_the_owning_unit(credd: Harness, no_leaks: None) -> None:
    credd.install(UNIT, "db", b"s3cret\x00\n")
    assert [got(r) for r in credd.request(UNIT, [(UNIT, "db")])] == [b"s3cret\x00\n"]
    assert len(credd.lines) == 1 and f"unit={UNIT} credential=db" in credd.lines[0]
    assert "result=served" in credd.lines[0] and "s3cret" not in credd.lines[0]


def test_server_refuses_other_units(credd: Harness, no_leaks: None) -> None:
    credd.install(UNIT, "db", b"s3cret")
    credd.install("other.service", "db", b"theirs", bind_unit=False)
    # a process of other.service names webapp.service in its address: its cgroup gives it away
    assert [got(r) for r in credd.request("other.service", [(UNIT, "db")])] == [b""]
    # asking under its own name serves only its own credential
    assert [got(r) for r in credd.request("other.service", [("other.service", "db")])] == [b"theirs"]
    # an unknown name, and a unit without credentials
    assert [got(r) for r in credd.request(UNIT, [(UNIT, "nope")])] == [b""]
    assert [got(r) for r in credd.request("third.service", [("third.service", "db")])] == [b""]
    log = "\n".join(credd.lines)
    assert "belongs to other.service, not webapp.service" in log and "no credential 'nope'" in log
    assert "s3cret" not in log and "theirs" not in log


def test_server_refuses_a_unit_bound_credential_installed_elsewhere(credd: Harness, no_leaks: None) -> None:
    from tpmseal.creds.store import credential_path

    credd.install(UNIT, "db", b"s3cret")
    moved = credential_path(credd.root, "other.service", "db")
    moved.parent.mkdir(parents=True)
    shutil.copy(credential_path(credd.root, UNIT, "db"), moved)  # swapped into another unit's store
    assert [got(r) for r in credd.request("other.service", [("other.service", "db")])] == [b""]
    assert "CredentialUnitMismatch" in credd.lines[-1]


def test_server_refuses_non_root(credd: Harness, no_leaks: None) -> None:
    credd.install(UNIT, "db", b"s3cret")
    # the socket is 0600: a non-root process cannot even connect
    assert credd.request(UNIT, [(UNIT, "db")], uid=65534)[0]["error"] == "PermissionError"
    os.chmod(credd.sock, 0o666)  # and if it could, SO_PEERCRED still shows it is not systemd
    assert [got(r) for r in credd.request(UNIT, [(UNIT, "db")], uid=65534)] == [b""]
    assert "runs as uid 65534, not root" in credd.lines[-1]


def test_server_refuses_expired_and_pcr_mismatch(credd: Harness, swtpm: Swtpm, no_leaks: None) -> None:
    from tpmseal.creds.store import install

    now = int(time.time())
    install(credd.root, UNIT, "old", enc(swtpm, b"old", name="old", now=now - 100, not_after=now - 10))
    swtpm.tool("tpm2_pcrreset", "23")
    install(credd.root, UNIT, "pcr", enc(swtpm, b"pcr", name="pcr", pcrs="23"))
    swtpm.extend(23, b"changed")
    try:
        assert [got(r) for r in credd.request(UNIT, [(UNIT, "old"), (UNIT, "pcr")])] == [b"", b""]
    finally:
        swtpm.tool("tpm2_pcrreset", "23")
    log = "\n".join(credd.lines)
    assert "CredentialExpired" in log and "PolicyMismatch" in log


def test_server_200_concurrent_clients(credd: Harness, no_leaks: None) -> None:
    secrets = {f"key{i}": os.urandom(32) for i in range(20)}
    for name, value in secrets.items():
        credd.install(UNIT, name, value)
    credd.lines.clear()
    names = [f"key{i % 20}" for i in range(200)]
    t0 = time.monotonic()
    results = credd.request(UNIT, [(UNIT, n) for n in names])
    wall = time.monotonic() - t0
    assert [got(r) for r in results] == [secrets[n] for n in names]
    ms = sorted(float(str(r["ms"])) for r in results)
    p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
    print(f"\n200 concurrent LoadCredential= requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms, wall {wall:.2f} s")
    assert len(credd.lines) == 200 and all("result=served" in line for line in credd.lines)


def _scan(dirs: list[Path], needle: bytes) -> list[str]:
    """Files under ``dirs`` that contain ``needle`` (other processes may delete files meanwhile)."""
    hits = []
    for d in dirs:
        for top, _, files in os.walk(d, onerror=lambda e: None):
            for f in files:
                p = Path(top, f)
                try:
                    small = p.is_file() and not p.is_symlink() and p.stat().st_size < 64 * 1024 * 1024
                    if small and needle in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    continue
    return hits


def test_plaintext_never_touches_storage(credd: Harness, swtpm: Swtpm, tmp_path: Path, no_leaks: None) -> None:
    marker = ("tpmseal-marker-" + os.urandom(12).hex()).encode()
    f = tmp_path / "db.cred"
    run_cli("creds", "encrypt", "db", "-", str(f), f"--tpm2-device={swtpm.tcti}", f"--unit={UNIT}", stdin=marker)
    run_cli("creds", "install", UNIT, "db", str(f), f"--root={credd.root}")
    assert [got(r) for r in credd.request(UNIT, [(UNIT, "db")])] == [marker]
    out = subprocess.run([sys.executable, "-m", "tpmseal", "creds", "decrypt", str(f),
                          f"--tpm2-device={swtpm.tcti}"], capture_output=True, check=True).stdout  # fmt: skip
    assert out == marker
    dirs = [tmp_path, Path("/tmp"), Path("/var/tmp"), swtpm.dir]
    assert _scan(dirs, marker) == []
    assert _scan(dirs, marker.hex().encode()) == [] and _scan(dirs, base64.b64encode(marker)[:24]) == []


# --------------------------------------------------------------------------- systemd-creds interop


def _flush_systemd_leaks(tpm: Swtpm) -> None:
    """systemd-creds 252 leaves sessions loaded on a TPM without a resource manager (measured: two per
    run; the third run fails). That is systemd's leak, on a TPM of its own in these tests; our calls are
    checked for leaks separately."""
    tpm.tool("tpm2_flushcontext", "--loaded-session")


@pytest.fixture
def sd_tpm(other_swtpm: Swtpm) -> Swtpm:
    need("systemd-creds", "tpm2_flushcontext")
    return other_swtpm


def test_systemd_creds_file_decrypts(sd_tpm: Swtpm, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"from systemd\x00\xff")
    out = tmp_path / "db.cred"
    subprocess.run(["systemd-creds", "encrypt", "--with-key=tpm2", f"--tpm2-device={sd_tpm.tcti}",
                    "--tpm2-pcrs=7", "--name=db", str(src), str(out)], check=True, capture_output=True)  # fmt: skip
    _flush_systemd_leaks(sd_tpm)
    assert dec(sd_tpm, out.read_bytes(), name="db", unit=None) == b"from systemd\x00\xff"
    assert sd_tpm.loaded_handles() == []
    with pytest.raises(CredentialNameMismatch):
        dec(sd_tpm, out.read_bytes(), name="other", unit=None)
    info = json.loads(run_cli("creds", "inspect", str(out), "--json").stdout)
    assert info["format"] == "systemd" and info["pcrs"][0]["index"] == 7
    with pytest.raises(CredentialTampered):
        raw = base64.b64decode(b"".join(out.read_bytes().split()))
        dec(sd_tpm, flip(raw, len(raw) - 20), name="db", unit=None)
    sd_tpm.extend(7, b"boot chain changed")
    with pytest.raises(PolicyMismatch):
        dec(sd_tpm, out.read_bytes(), name="db", unit=None)
    assert sd_tpm.loaded_handles() == []


def test_systemd_format_written_for_systemd_creds(sd_tpm: Swtpm, tmp_path: Path) -> None:
    out = tmp_path / "db.cred"
    run_cli("creds", "encrypt", "db", "-", str(out), "--format=systemd", "--tpm2-pcrs=7",
            f"--tpm2-device={sd_tpm.tcti}", "--not-after=+1h", stdin=b"to systemd")  # fmt: skip
    assert sd_tpm.loaded_handles() == []
    p = subprocess.run(["systemd-creds", "decrypt", f"--tpm2-device={sd_tpm.tcti}", "--name=db", str(out), "-"],
                       capture_output=True)  # fmt: skip
    _flush_systemd_leaks(sd_tpm)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"to systemd"
    p = subprocess.run(["systemd-creds", "decrypt", f"--tpm2-device={sd_tpm.tcti}", "--name=x", str(out), "-"],
                       capture_output=True)  # fmt: skip
    _flush_systemd_leaks(sd_tpm)
    assert p.returncode != 0 and b"does not match" in p.stderr
    assert dec(sd_tpm, out.read_bytes(), name="db", unit=None) == b"to systemd"
    run_cli("creds", "encrypt", "db", "-", str(tmp_path / "x"), "--format=systemd", "--tpm2-pcrs=",
            f"--tpm2-device={sd_tpm.tcti}", stdin=b"x", check=2)  # no PCR: systemd 252 could not read it  # fmt: skip


def test_commands_and_latency_vs_systemd_creds(sd_tpm: Swtpm, tmp_path: Path) -> None:
    """TPM commands per decrypt (counted at the socket by TpmProxy) and process wall time, tpmseal vs
    systemd-creds on the same swtpm. Printed for the report; the bounds guard against regressions."""
    from tpmseal.testing.tpmproxy import TpmProxy

    native = tmp_path / "n.cred"
    native.write_bytes(enc(sd_tpm, b"n", unit=None))
    native7 = tmp_path / "n7.cred"
    native7.write_bytes(enc(sd_tpm, b"n", unit=None, pcrs="7"))
    src = tmp_path / "in"
    src.write_bytes(b"s")
    sd = tmp_path / "db.cred"
    subprocess.run(["systemd-creds", "encrypt", "--with-key=tpm2", f"--tpm2-device={sd_tpm.tcti}",
                    "--tpm2-pcrs=7", "--name=db", str(src), str(sd)], check=True, capture_output=True)  # fmt: skip
    _flush_systemd_leaks(sd_tpm)
    pdir = Path(tempfile_dir())
    counts: dict[str, int] = {}
    with TpmProxy(sd_tpm.sock, pdir / "p") as proxy:
        tcti = f"swtpm:path={proxy.listen_sock}"
        for label, path in (("tpmseal", native), ("tpmseal+pcr7", native7), ("tpmseal reads systemd", sd)):
            proxy.reset()
            parsed = reader.parse(path.read_bytes())
            with open_tpm(tcti) as esapi, reader.decrypt(esapi, parsed, None, None):
                pass
            counts[label] = proxy.count()
        proxy.reset()
        subprocess.run(["systemd-creds", "decrypt", f"--tpm2-device={tcti}", "--name=db", str(sd), "-"],
                       check=True, capture_output=True)  # fmt: skip
        counts["systemd-creds"] = proxy.count()
    _flush_systemd_leaks(sd_tpm)
    shutil.rmtree(pdir, ignore_errors=True)

    def timed(argv: list[str], flush: bool) -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        dt = time.perf_counter() - t0
        if flush:
            _flush_systemd_leaks(sd_tpm)
        return dt * 1000

    ours = [timed([sys.executable, "-m", "tpmseal", "creds", "decrypt", str(native7),
                   f"--tpm2-device={sd_tpm.tcti}"], False) for _ in range(5)]  # fmt: skip
    theirs = [timed(["systemd-creds", "decrypt", f"--tpm2-device={sd_tpm.tcti}", "--name=db", str(sd), "-"], True)
              for _ in range(5)]  # fmt: skip
    t0 = time.perf_counter()
    for _ in range(20):
        dec(sd_tpm, native7.read_bytes(), name=None, unit=None)
    inproc = (time.perf_counter() - t0) / 20 * 1000
    print(f"\nTPM commands per decrypt: {counts}")
    print(f"decrypt, whole process, median of 5: tpmseal {statistics.median(ours):.1f} ms, "
          f"systemd-creds {statistics.median(theirs):.1f} ms; tpmseal in-process {inproc:.1f} ms")  # fmt: skip
    assert counts["tpmseal"] <= 4 and counts["tpmseal+pcr7"] <= 5 and counts["tpmseal reads systemd"] <= 7
    assert sd_tpm.loaded_handles() == []


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="tpmseal-proxy-", dir="/tmp")  # short path: AF_UNIX limit
