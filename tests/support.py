# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers shared by the test tiers (imported as ``support``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tpmseal.testing.swtpm import start_swtpm as start_socket_swtpm

REQUIRE_ALL = os.environ.get("TPMSEAL_REQUIRE_ALL", "") == "1"
PASSPHRASE = b"correct horse battery staple"


def need(*tools: str) -> None:
    """Skip (locally) or fail (CI) when a program is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"missing tool(s): {', '.join(missing)}"
        if REQUIRE_ALL:
            pytest.fail(msg + " (TPMSEAL_REQUIRE_ALL=1 forbids skipping)")
        pytest.skip(msg)


@dataclass
class Swtpm:
    """A running swtpm; ``tcti`` is what --tpm2-device takes."""

    dir: Path
    sock: Path
    proc: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.sock}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "TPM2TOOLS_TCTI": self.tcti, "TSS2_LOG": "all+none"}

    def tool(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env(), check=True, capture_output=True, text=True).stdout

    def extend(self, pcr: int, data: bytes) -> None:
        self.tool("tpm2_pcrextend", f"{pcr}:sha256={hashlib.sha256(data).hexdigest()}")

    def pcr(self, pcr: int) -> bytes:
        out = self.tool("tpm2_pcrread", f"sha256:{pcr}")
        return bytes.fromhex(out.strip().splitlines()[-1].split(":")[-1].strip().removeprefix("0x"))

    def clear_lockout(self) -> None:
        self.tool("tpm2_dictionarylockout", "--clear-lockout")

    def loaded_handles(self) -> list[str]:
        """Transient objects and sessions still loaded: must be none after every test."""
        out = []
        for kind in ("transient", "loaded-session", "saved-session"):
            text = self.tool("tpm2_getcap", "handles-" + kind)
            out += [f"{kind}:{line.strip()}" for line in text.splitlines() if line.strip().startswith("-")]
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_swtpm(d: Path) -> Swtpm:
    need("swtpm", "swtpm_setup", "tpm2_pcrextend")
    started = start_socket_swtpm(d)
    t = Swtpm(d, started.sock, started.proc)
    # a fresh swtpm has every PCR at zero: measure something, as firmware would
    for pcr in (0, 2, 4, 7):
        t.extend(pcr, f"firmware measurement of PCR {pcr}".encode())
    return t


@dataclass
class Image:
    path: Path
    keyfile: Path  # holds PASSPHRASE (a test value, not a real secret)

    @property
    def dev(self) -> str:
        return str(self.path)


def make_luks2(path: Path, passphrase: bytes = PASSPHRASE) -> Image:
    need("cryptsetup")
    with open(path, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(
        ["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", "--key-file", "-", str(path)],
        input=passphrase, check=True, capture_output=True,
    )  # fmt: skip
    keyfile = path.with_suffix(".key")
    keyfile.write_bytes(passphrase)
    return Image(path, keyfile)


def run_cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tpmseal`` as a separate process, as an admin would."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(
        [sys.executable, "-m", "tpmseal", *args],
        input=stdin.decode() if stdin is not None else "",
        capture_output=True, text=True, env=full_env,
    )  # fmt: skip
    if check is not None and p.returncode != check:
        raise AssertionError(
            f"tpmseal {' '.join(args)}: exit {p.returncode}, expected {check}\n"
            f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def luks_dump(path: Path | str) -> dict[str, object]:
    import json

    out = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(path)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def opens(path: Path | str, key: bytes, keyslot: int | None = None) -> bool:
    argv = ["cryptsetup", "open", "--test-passphrase", "--key-file", "-"]
    if keyslot is not None:
        argv += ["--key-slot", str(keyslot)]
    return subprocess.run([*argv, str(path)], input=key, capture_output=True).returncode == 0
