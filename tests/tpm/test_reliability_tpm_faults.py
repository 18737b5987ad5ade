# SPDX-License-Identifier: LGPL-2.1-or-later
"""TPM faults: no TPM, dictionary-attack lockout, transient TPM errors, a TPM that dies mid-command.

swtpm cannot produce TPM_RC_RETRY or TPM_RC_PCR_CHANGED on demand, so ``FaultProxy`` (a ``TpmProxy``)
answers a chosen command itself with that response code, without passing it to swtpm - as a real TPM
does when it did not execute the command. To kill the TPM mid-command, the proxy SIGKILLs swtpm when the
chosen command arrives, before forwarding it. Every client run has a deadline (subprocess timeout): a
hang fails the test, and so does any "success" that did not really open the volume.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, make_luks2, opens, start_swtpm

from tpmseal.testing.tpmframes import HEADER
from tpmseal.testing.tpmproxy import TpmProxy

pytestmark = pytest.mark.tpm

DEADLINE = 60  # seconds for any one client run
PIN = b"2468-right"
TPM_RC_RETRY = 0x922
TPM_RC_PCR_CHANGED = 0x128
TPM_ST_NO_SESSIONS = 0x8001


class FaultProxy(TpmProxy):
    """A TpmProxy that answers the n-th command named ``name`` itself with ``rc`` (or kills swtpm then)."""

    def __init__(self, target: Path, listen: Path, name: str, rc: int | None = None, times: int = 1,
                 kill: subprocess.Popen[bytes] | None = None) -> None:  # fmt: skip
        super().__init__(target, listen)
        self.fault_name, self.rc, self.times, self.kill = name, rc, times, kill
        self.injected = 0

    def _record(self, conn: Any, direction: Any, data: bytes) -> list[bytes]:
        forward = super()._record(conn, direction, data)
        if direction != "command" or conn.channel != "data":
            return forward
        out = []
        for frame in forward:
            code = HEADER.unpack_from(frame)[2] if len(frame) >= HEADER.size else None
            hit = code is not None and self._name(code) == self.fault_name and self.injected < self.times
            if hit and self.kill is not None:
                self.injected += 1
                self.kill.send_signal(signal.SIGKILL)
                self.kill.wait()
            elif hit and self.rc is not None:
                self.injected += 1
                with self._lock:
                    if conn.waiting:
                        cmd = conn.waiting.pop()
                        cmd.response_code = self.rc
                conn.client.sendall(struct.pack(">HII", TPM_ST_NO_SESSIONS, HEADER.size, self.rc))
                continue
            out.append(frame)
        return out

    @staticmethod
    def _name(code: int) -> str:
        from tpmseal.testing.tpmframes import command_name

        return command_name(code)


def tpmseal(*args: str, stdin: bytes = b"") -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "tpmseal", *args], input=stdin, capture_output=True, timeout=DEADLINE,
        env={**os.environ, "TSS2_LOG": "all+none"},
    )  # fmt: skip
    return p.returncode, p.stdout.decode(), p.stderr.decode(), time.monotonic() - t0


def enroll(img: Image, tcti: str, pin: bytes | None = None) -> None:
    args = ["enroll", img.dev, f"--tpm2-device={tcti}", "--unlock-key-file", str(img.keyfile)]
    if pin is not None:
        args.append("--tpm2-with-pin")
    rc, _, err, _ = tpmseal(*args, stdin=(pin + b"\n") if pin else b"")
    assert rc == 0, err


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tsf-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ no TPM


@pytest.mark.parametrize("cmd", ["test-unlock", "enroll", "list"])
def test_missing_tpm_socket_is_a_clear_error_in_bounded_time(
    cmd: str, image: Image, swtpm: Swtpm, sockdir: Path
) -> None:
    if cmd != "enroll":
        enroll(image, swtpm.tcti)
    before = luks_dump(image.path)
    dev = f"--tpm2-device=swtpm:path={sockdir}/absent"
    args = [cmd, image.dev, dev] + (["--unlock-key-file", str(image.keyfile)] if cmd == "enroll" else [])
    rc, out, err, took = tpmseal(*args)
    assert took < 30
    if cmd == "list":  # list still shows the header, and says why the PCRs were not checked
        assert rc == 0 and "tpmseal-tpm2" in out and "PCR state not checked" in err
    else:
        assert rc == 4, (out, err)
        assert "TPM" in out + err and "Traceback" not in err
    assert luks_dump(image.path) == before
    assert opens(image.path, PASSPHRASE)


def test_auto_device_without_a_kernel_tpm_is_exit_4(image: Image, swtpm: Swtpm) -> None:
    if os.path.exists("/dev/tpmrm0"):
        pytest.skip("this host has a kernel TPM")
    enroll(image, swtpm.tcti)
    rc, out, err, _ = tpmseal("test-unlock", image.dev, "--tpm2-device=auto")
    assert rc == 4 and "/dev/tpmrm0" in out + err, (rc, out, err)


# ------------------------------------------------------------------ dictionary-attack lockout


def test_wrong_pins_until_lockout_give_tries_then_lockout_and_are_never_retried(
    image: Image, other_swtpm: Swtpm, sockdir: Path
) -> None:
    enroll(image, other_swtpm.tcti, PIN)
    with TpmProxy(other_swtpm.sock, sockdir / "p") as proxy:
        dev = f"--tpm2-device=swtpm:path={sockdir}/p"
        messages = []
        for attempt in range(1, 8):
            proxy.reset()
            rc, out, err, _ = tpmseal("test-unlock", image.dev, dev, stdin=b"wrong-%d\n" % attempt)
            assert rc == 6, (out, err)
            err = out + err
            assert proxy.count("Unseal") <= 1, "a wrong PIN was tried more than once"
            messages.append(err)
            if "lockout" in err:
                break
        else:
            pytest.fail(f"no lockout after 7 wrong PINs: {messages}")
        tries = [int(m.group(1)) for e in messages if (m := re.search(r"(\d+) of \d+ tries left", e))]
        assert tries and tries == sorted(tries, reverse=True) and len(set(tries)) == len(tries), messages
        assert "dictionary-attack lockout" in messages[-1]
        # in lockout even the right PIN is refused, once, with the lockout hint - never a retry loop
        proxy.reset()
        rc, out, err, _ = tpmseal("test-unlock", image.dev, dev, stdin=PIN + b"\n")
        assert rc == 6 and "lockout" in out, (out, err)
        assert proxy.count("Unseal") <= 1
    other_swtpm.clear_lockout()
    rc, _, err, _ = tpmseal("test-unlock", image.dev, f"--tpm2-device={other_swtpm.tcti}", stdin=PIN + b"\n")
    assert rc == 0, err
    assert other_swtpm.loaded_handles() == []


# ------------------------------------------------------------------ transient TPM errors (injected)


def test_one_tpm_rc_retry_on_unseal_is_resubmitted_and_opens_with_the_right_key(
    image: Image, swtpm: Swtpm, sockdir: Path, no_leaks: None
) -> None:
    """Injected: swtpm cannot produce TPM_RC_RETRY on demand. The TPM did not run the command, so the
    stack may send it again; the result must be the real key (test-unlock checks it against the keyslot)."""
    enroll(image, swtpm.tcti)
    with FaultProxy(swtpm.sock, sockdir / "p", "Unseal", rc=TPM_RC_RETRY) as proxy:
        rc, out, err, _ = tpmseal("test-unlock", image.dev, f"--tpm2-device=swtpm:path={sockdir}/p")
        assert proxy.injected == 1
    assert rc == 0 and ": ok" in out, err


def test_tpm_rc_retry_forever_is_a_clear_error_in_bounded_time(
    image: Image, swtpm: Swtpm, sockdir: Path, no_leaks: None
) -> None:
    """Injected (swtpm cannot do it): every Unseal is answered TPM_RC_RETRY."""
    enroll(image, swtpm.tcti)
    with FaultProxy(swtpm.sock, sockdir / "p", "Unseal", rc=TPM_RC_RETRY, times=10_000) as proxy:
        rc, out, err, took = tpmseal("test-unlock", image.dev, f"--tpm2-device=swtpm:path={sockdir}/p")
        assert proxy.injected >= 1
    assert rc not in (0, 5, 6), (rc, out, err)  # neither success nor a misleading "PCRs changed"/"wrong PIN"
    assert "FAILED" in out and "unsealing" in out and took < DEADLINE


@pytest.mark.parametrize("name", ["Unseal", "PolicyPCR"])
def test_pcr_changed_mid_session_is_a_clear_error_and_leaks_nothing(
    name: str, image: Image, swtpm: Swtpm, sockdir: Path, no_leaks: None
) -> None:
    """Injected (swtpm cannot do it): TPM_RC_PCR_CHANGED, the PCRs moved while the policy session ran."""
    enroll(image, swtpm.tcti)
    with FaultProxy(swtpm.sock, sockdir / "p", name, rc=TPM_RC_PCR_CHANGED):
        rc, out, err, _ = tpmseal("test-unlock", image.dev, f"--tpm2-device=swtpm:path={sockdir}/p")
    assert rc != 0 and "FAILED" in out, (rc, out, err)
    assert "Traceback" not in err
    rc, out, err, _ = tpmseal("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
    assert rc == 0, err  # nothing broken: the next try opens


# ------------------------------------------------------------------ the TPM dies mid-command


KILL_AT = [
    ("test-unlock", "Load"), ("test-unlock", "StartAuthSession"), ("test-unlock", "PolicyPCR"),
    ("test-unlock", "Unseal"),
    ("enroll", "ReadPublic"), ("enroll", "PCR_Read"), ("enroll", "Create"),
]  # fmt: skip


@pytest.mark.parametrize(("cmd", "at"), KILL_AT)
def test_swtpm_killed_mid_command_is_a_clear_error_in_bounded_time(
    cmd: str, at: str, tmp_path: Path, sockdir: Path
) -> None:
    t = start_swtpm(sockdir / "tpm")
    try:
        img = make_luks2(tmp_path / "d.img")
        if cmd == "test-unlock":
            enroll(img, t.tcti)
        before = luks_dump(img.path)
        with FaultProxy(t.sock, sockdir / "p", at, kill=t.proc) as proxy:
            args = [cmd, img.dev, f"--tpm2-device=swtpm:path={sockdir}/p"]
            if cmd == "enroll":
                args += ["--unlock-key-file", str(img.keyfile)]
            rc, out, err, took = tpmseal(*args)
            assert proxy.injected == 1
        assert took < DEADLINE
        assert rc == 4, (rc, out, err)  # TpmUnavailable: "lost the connection to the TPM"
        assert "TPM" in (out + err) and "Traceback" not in err
        assert luks_dump(img.path) == before  # nothing half-written
        assert opens(img.path, PASSPHRASE)
    finally:
        t.stop()
