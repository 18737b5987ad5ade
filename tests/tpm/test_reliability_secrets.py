# SPDX-License-Identifier: LGPL-2.1-or-later
"""Secret hygiene across a full run of the CLI, in memory, and on the TPM bus.

1. A run of the CLI scenarios (enroll with and without PIN, test-unlock, a wrong PIN, list, recovery key,
   systemd-tpm2 enroll and migrate, credentials), every command with ``--debug``: no key, keyslot
   passphrase, PIN, PIN-derived authValue, recovery key or credential plaintext in any child's argv or
   environment (a ``cryptsetup`` shim records both), in log output or tracebacks, or in any file under
   the test's directories (``TMPDIR`` of the commands included) - as raw bytes, hex or base64.
   (``unlock`` maps a volume, which needs device-mapper: this host has none, so it is not part of the run.)
2. The buffers tpmseal hands out (``Secret``) are zero once their context ends.
3. With a proxy recording every byte between tpmseal and swtpm during enroll and unseal (with and without
   PIN, native and systemd-tpm2 tokens) and credential encrypt/decrypt: none of those secrets, nor
   SHA-256 of the PIN, nor the PIN's authValue, ever crosses the bus.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PASSPHRASE, Image, Swtpm, make_luks2, start_swtpm

from tpmseal.interop.systemd_tpm2 import parse_systemd_tpm2, unseal_systemd_tpm2
from tpmseal.inventory import native_tokens
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.testing.tpmproxy import TpmProxy
from tpmseal.tpm.device import open_tpm
from tpmseal.unlock import keyslot_passphrase, open_native, unseal_token

pytestmark = pytest.mark.tpm

PIN = b"pin-7Hq2-x9Zr"
CRED = b"credential plaintext 5f0c2a"


def forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]  # fmt: skip


def pin_values(image: Path) -> list[bytes]:
    """The PIN, SHA-256 of it (systemd's authValue) and the authValue of every native PIN seal."""
    out = [PIN, hashlib.sha256(PIN).digest()]
    for _, nt in native_tokens(Volume(str(image)).header()):
        out += [bytes(s.pin_kdf.derive(bytearray(PIN)).buffer) for s in nt.seals if s.pin_kdf]
    return out


def native_key(image: Path, tcti: str, pin: bytes | None = None) -> bytes:
    [(_, token)] = native_tokens(Volume(str(image)).header())
    with open_tpm(tcti) as esapi, unseal_token(esapi, token, (lambda: bytearray(pin)) if pin else None) as raw:
        return bytes(raw.buffer)


def systemd_key(image: Path, tcti: str, pin: bytes | None) -> bytes:
    [t] = [t for t in Volume(str(image)).header().tokens.values() if t.type == "systemd-tpm2"]
    source = (lambda: bytearray(pin)) if pin else None
    with open_tpm(tcti) as esapi, unseal_systemd_tpm2(esapi, parse_systemd_tpm2(t.data), source) as r:
        return bytes(r.buffer)


def secret_forms(keys: list[bytes], texts: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for k in keys:
        out += forms(k) + forms(base64.b64encode(k))  # the key and its keyslot passphrase
    for t in texts:
        out += forms(t)
    return out


@pytest.fixture
def hygiene_tpm(tmp_path: Path) -> Iterator[Swtpm]:
    d = Path(tempfile.mkdtemp(prefix="tshy-", dir="/tmp"))
    t = start_swtpm(d)
    yield t
    t.stop()
    shutil.rmtree(d, ignore_errors=True)


class Recorder:
    """Runs tpmseal with --debug, a recording cryptsetup shim first on PATH, and a private TMPDIR."""

    def __init__(self, root: Path) -> None:
        real = shutil.which("cryptsetup")
        assert real
        self.root = root
        shim_dir = root / "shim"
        shim_dir.mkdir()
        self.log = shim_dir / "calls.log"
        shim = shim_dir / "cryptsetup"
        shim.write_text(
            "#!/bin/sh\n"
            f'{{ printf "ARGV:"; printf " %s" "$@"; printf "\\n"; env | sed "s/^/ENV: /"; }} >> {self.log}\n'
            f'exec {real} "$@"\n'
        )
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
        self.tmp = root / "tmpdir"
        self.tmp.mkdir()
        run = root / "run"
        run.mkdir()
        self.env = {
            **os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}", "TMPDIR": str(self.tmp),
            "TPMSEAL_RUNTIME_DIR": str(run),
        }  # fmt: skip
        self.outputs: list[tuple[str, bytes]] = []  # (label, bytes) to search

    def __call__(self, *args: str, stdin: bytes = b"", check: int = 0, stdout_is_secret: bool = False) -> bytes:
        p = subprocess.run(
            [sys.executable, "-m", "tpmseal", "--debug", *args],
            input=stdin, capture_output=True, env=self.env, cwd=self.root,
        )  # fmt: skip
        assert p.returncode == check, f"tpmseal {' '.join(args)}: exit {p.returncode}\n{p.stderr.decode()}"
        self.outputs.append((f"stderr of {args[0]}", p.stderr))
        if not stdout_is_secret:
            self.outputs.append((f"stdout of {args[0]}", p.stdout))
        return p.stdout


def test_no_secret_in_argv_env_logs_tracebacks_or_files(hygiene_tpm: Swtpm, tmp_path: Path) -> None:
    t = hygiene_tpm
    tcti = f"--tpm2-device={t.tcti}"
    rec = Recorder(tmp_path)
    img = make_luks2(tmp_path / "a.img")
    img2 = make_luks2(tmp_path / "b.img")
    keys: list[bytes] = []

    rec("enroll", img.dev, tcti, "--unlock-key-file", str(img.keyfile))
    keys.append(native_key(img.path, t.tcti))
    rec("test-unlock", img.dev, tcti)
    rec("list", img.dev, tcti)
    rec("enroll", img.dev, tcti, "--replace", "--tpm2-with-pin", stdin=PASSPHRASE + b"\n" + PIN + b"\n")
    keys.append(native_key(img.path, t.tcti, PIN))
    pins = pin_values(img.path)
    rec("test-unlock", img.dev, tcti, stdin=PIN + b"\n")
    rec("test-unlock", img.dev, tcti, stdin=PIN[::-1] + b"\n", check=6)  # wrong PIN: error text + traceback
    t.clear_lockout()
    out = rec("enroll", img.dev, "--recovery-key", "--json", stdin=PASSPHRASE + b"\n", stdout_is_secret=True)
    recovery = json.loads(out)["recovery_key"].encode()
    rec("list", img.dev, "--json", tcti)

    both = PASSPHRASE + b"\n" + PIN + b"\n"
    rec("enroll", img2.dev, tcti, "--token-type=systemd-tpm2", "--tpm2-with-pin", stdin=both)
    keys.append(systemd_key(img2.path, t.tcti, PIN))
    rec("migrate", img2.dev, tcti, "--from=systemd-tpm2", stdin=PIN + b"\n")
    keys.append(native_key(img2.path, t.tcti, PIN))
    pins += pin_values(img2.path)
    rec("test-unlock", img2.dev, tcti, stdin=PIN + b"\n")

    cred = tmp_path / "db.cred"
    rec("creds", "encrypt", "db", "-", str(cred), tcti, stdin=CRED)
    assert rec("creds", "decrypt", str(cred), tcti, stdout_is_secret=True) == CRED

    secrets = secret_forms(keys, [PASSPHRASE, recovery, CRED, *pins])
    calls = rec.log.read_bytes()
    assert calls.count(b"ARGV:") >= 20  # the shim really saw the calls
    for s in secrets:
        assert s not in calls, "a secret reached a child's argv or environment"
    for label, data in rec.outputs:
        for s in secrets:
            assert s not in data, f"a secret is in the {label}"
    scanned = 0
    for root in (tmp_path, t.dir):
        for f in root.rglob("*"):
            if not f.is_file() or f.is_socket() or f.suffix in (".img", ".key") or f.name == "calls.log":
                continue
            data = f.read_bytes()
            scanned += 1
            for s in secrets:
                assert s not in data, f"a secret is in {f}"
    assert scanned >= 3
    for image in (img, img2):  # the header holds sealed objects only
        data = image.path.read_bytes()
        for s in secret_forms(keys, [recovery, *pins]):
            assert s not in data, f"a secret is in {image.path}"


# ------------------------------------------------------------------ memory


def test_secret_buffers_are_zero_after_their_context(image: Image, swtpm: Swtpm) -> None:
    from tpmseal.interop.systemd_tpm2 import pin_auth as systemd_pin_auth
    from tpmseal.prompt import read_key_file
    from tpmseal.tpm.seal import pin_auth

    subprocess.run(
        [sys.executable, "-m", "tpmseal", "enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--tpm2-with-pin",
         "--unlock-key-file", str(image.keyfile)],
        input=PIN + b"\n", check=True, capture_output=True,
    )  # fmt: skip
    swtpm.clear_lockout()
    [(t, token)] = native_tokens(Volume(image.dev).header())
    handed_out: list[bytearray] = []

    def pin_source() -> bytearray:
        b = bytearray(PIN)
        handed_out.append(b)
        return b

    held: list[tuple[str, bytearray]] = []
    with open_tpm(swtpm.tcti) as esapi:
        with unseal_token(esapi, token, pin_source) as raw:
            held.append(("unseal_token result", raw.buffer))
            assert len(raw) == 32 and any(raw.buffer)
            with keyslot_passphrase(raw) as phrase:
                held.append(("keyslot_passphrase result", phrase.buffer))
                assert len(phrase) == 44
        with open_native(esapi, t.data, pin_source) as phrase:
            held.append(("open_native result", phrase.buffer))
    assert handed_out and all(not any(b) for b in handed_out), "a PIN copy handed to unseal was not wiped"
    kdf = token.seals[0].pin_kdf
    assert kdf is not None
    with pin_auth(bytearray(PIN), kdf) as auth:
        held.append(("pin_auth result", auth.buffer))
        salt = kdf.salt
        assert auth.buffer == hashlib.scrypt(PIN, salt=salt, n=1 << kdf.log2_n, r=kdf.r, p=kdf.p, dklen=32)
    for s in (None, b"salt" * 4):
        with systemd_pin_auth(bytearray(PIN), s) as auth:
            held.append((f"systemd pin_auth (salt {s!r})", auth.buffer))
    with read_key_file(str(image.keyfile)) as key:
        held.append(("read_key_file result", key.buffer))
    with Secret.random(32) as r:
        held.append(("Secret.random", r.buffer))
    for what, buf in held:
        assert len(buf) > 0 and not any(buf), f"{what}: buffer not zero after its context"


# ------------------------------------------------------------------ the TPM bus


def test_tpm_bus_never_carries_key_passphrase_pin_or_auth_value(swtpm: Swtpm, tmp_path: Path, no_leaks: None) -> None:
    sock = Path(tempfile.mkdtemp(prefix="tsbus-", dir="/tmp")) / "p"
    plain, pinned, sd = (make_luks2(tmp_path / f"{n}.img") for n in ("plain", "pin", "sd"))
    env = {**os.environ, "TSS2_LOG": "all+none"}

    def cli(*args: str, stdin: bytes = b"") -> bytes:
        p = subprocess.run([sys.executable, "-m", "tpmseal", *args], input=stdin, capture_output=True, env=env)
        assert p.returncode == 0, p.stderr.decode()
        return p.stdout

    swtpm.clear_lockout()
    with TpmProxy(swtpm.sock, sock) as proxy:
        dev = f"--tpm2-device=swtpm:path={sock}"
        cli("enroll", plain.dev, dev, "--unlock-key-file", str(plain.keyfile))
        cli("test-unlock", plain.dev, dev)
        cli("enroll", pinned.dev, dev, "--tpm2-with-pin", "--unlock-key-file", str(pinned.keyfile), stdin=PIN + b"\n")
        cli("test-unlock", pinned.dev, dev, stdin=PIN + b"\n")
        cli("enroll", sd.dev, dev, "--token-type=systemd-tpm2", "--tpm2-with-pin", "--unlock-key-file",
            str(sd.keyfile), stdin=PIN + b"\n")  # fmt: skip
        cli("test-unlock", sd.dev, dev, stdin=PIN + b"\n")
        cred = tmp_path / "x.cred"
        cli("creds", "encrypt", "x", "-", str(cred), dev, stdin=CRED)
        assert cli("creds", "decrypt", str(cred), dev) == CRED
        names = proxy.names()
        traffic = proxy.raw_bytes()
    shutil.rmtree(sock.parent, ignore_errors=True)
    assert names.count("Unseal") >= 6 and "Create" in names
    keys = [
        native_key(plain.path, swtpm.tcti),
        native_key(pinned.path, swtpm.tcti, PIN),
        systemd_key(sd.path, swtpm.tcti, PIN),
    ]
    secrets = secret_forms(keys, [CRED, *pin_values(pinned.path)])
    for s in secrets:
        assert s not in traffic, "a secret crossed the TPM bus in the clear"
