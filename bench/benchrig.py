# SPDX-License-Identifier: LGPL-2.1-or-later
"""The rig under the benchmarks: one swtpm child, LUKS2 image files, timed and counted processes.

No pytest here: bench/run is a plain script. The TPM command counts go through
tpmseal.testing.tpmproxy (in-process); timed runs talk to swtpm directly, without the proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tpmseal.testing.swtpm import start_swtpm as start_socket_swtpm

PASSPHRASE = b"bench passphrase, not a secret"
CLEVIS_CONFIG = '{"pcr_ids":"7","pcr_bank":"sha256"}'
HEAVY_IMPORTS = ("tpm2_pytss", "cryptography", "jinja2", "pyudev")


class RigError(RuntimeError):
    pass


def quiet_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TSS2_LOG": "all+none", **extra}


def tpmseal_argv() -> list[str]:
    """The `tpmseal` console script next to this interpreter (an admin's command), else `python -m tpmseal`."""
    script = Path(sys.executable).parent / "tpmseal"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "tpmseal"]


# ------------------------------------------------------------------------------------------ swtpm


@dataclass
class Swtpm:
    dir: Path
    sock: Path
    proc: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.sock}"

    def env(self, **extra: str) -> dict[str, str]:
        return quiet_env(TPM2TOOLS_TCTI=self.tcti, **extra)

    def tool(self, *argv: str) -> str:
        p = subprocess.run(argv, env=self.env(), capture_output=True, text=True)
        if p.returncode != 0:
            raise RigError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def extend(self, pcr: int, data: bytes) -> None:
        self.tool("tpm2_pcrextend", f"{pcr}:sha256={hashlib.sha256(data).hexdigest()}")

    def loaded_handles(self) -> list[str]:
        out = []
        for kind in ("transient", "loaded-session", "saved-session"):
            text = self.tool("tpm2_getcap", "handles-" + kind)
            out += [f"{kind}:{line.strip()[2:]}" for line in text.splitlines() if line.strip().startswith("-")]
        return out

    def flush(self) -> None:
        """Flush what clients left behind: swtpm over a socket has no resource manager."""
        for flag in ("-t", "-l", "-s"):
            subprocess.run(["tpm2_flushcontext", flag], env=self.env(), capture_output=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_swtpm(d: Path) -> Swtpm:
    started = start_socket_swtpm(d)
    t = Swtpm(d, started.sock, started.proc)
    # a fresh swtpm has every PCR at zero: measure something, as firmware would
    for pcr in (0, 2, 4, 7):
        t.extend(pcr, f"firmware measurement of PCR {pcr}".encode())
    return t


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # short path under /tmp: AF_UNIX paths (proxy socket + ".ctrl") must stay under 108 bytes
    d = Path(tempfile.mkdtemp(prefix="tpmseal-bench-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def swtpm_running(d: Path) -> Iterator[Swtpm]:
    t = start_swtpm(d)
    try:
        yield t
    finally:
        t.stop()


# ------------------------------------------------------------------------------------------ images


@dataclass
class Image:
    path: Path
    keyfile: Path

    @property
    def dev(self) -> str:
        return str(self.path)

    def remove(self) -> None:
        for p in (self.path, self.keyfile):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def make_luks2(path: Path) -> Image:
    """32 MiB LUKS2 image file, pbkdf2 with 1000 iterations (the test image kind)."""
    with open(path, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(
        ["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", "--key-file", "-", str(path)],
        input=PASSPHRASE, check=True, capture_output=True,
    )  # fmt: skip
    keyfile = path.with_suffix(".key")
    keyfile.write_bytes(PASSPHRASE)
    return Image(path, keyfile)


# ------------------------------------------------------------------------------------------ the tools


@dataclass(frozen=True)
class Invocation:
    """One process to run: argv, extra environment, stdin."""

    label: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes | None = None

    def environ(self) -> dict[str, str]:
        return quiet_env(**dict(self.env))


def tpmseal_enroll(img: Image, tcti: str) -> Invocation:
    return Invocation("tpmseal enroll", (*tpmseal_argv(), "enroll", img.dev, f"--tpm2-device={tcti}",
                                         "--tpm2-pcrs=7", "--unlock-key-file", str(img.keyfile)))


def tpmseal_test_unlock(img: Image, tcti: str) -> Invocation:
    return Invocation("tpmseal test-unlock", (*tpmseal_argv(), "test-unlock", img.dev, f"--tpm2-device={tcti}"))


def systemd_cryptenroll(img: Image, tcti: str) -> Invocation:
    return Invocation("systemd-cryptenroll",
                      ("systemd-cryptenroll", f"--tpm2-device={tcti}", "--tpm2-pcrs=7", img.dev),
                      env=(("PASSWORD", PASSPHRASE.decode()),))


def clevis_bind(img: Image, tcti: str) -> Invocation:
    return Invocation("clevis luks bind",
                      ("clevis", "luks", "bind", "-y", "-d", img.dev, "-k", str(img.keyfile), "tpm2", CLEVIS_CONFIG),
                      env=(("TPM2TOOLS_TCTI", tcti),))


def clevis_pass(img: Image, slot: int, tcti: str) -> Invocation:
    return Invocation("clevis luks pass", ("clevis", "luks", "pass", "-d", img.dev, "-s", str(slot)),
                      env=(("TPM2TOOLS_TCTI", tcti),))


def creds_encrypt(src: Path, dst: Path, tcti: str) -> Invocation:
    """PCR 7 given explicitly (also systemd-creds' default), the same PCRs as benchcreds' tpmseal rows."""
    return Invocation("systemd-creds encrypt (PCR 7)",
                      ("systemd-creds", "encrypt", "--with-key=tpm2", f"--tpm2-device={tcti}", "--tpm2-pcrs=7",
                       "--name=bench", str(src), str(dst)))


def creds_decrypt(src: Path, tcti: str) -> Invocation:
    return Invocation("systemd-creds decrypt (PCR 7)",
                      ("systemd-creds", "decrypt", f"--tpm2-device={tcti}", "--name=bench", str(src), "-"))


CRYPTSETUP_SHIM = """#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
printf '%s\\n' "$1" >> "{log}"
exec {real} "$@"
"""


def cryptsetup_shim(d: Path) -> tuple[Path, Path]:
    """A `cryptsetup` in front of the real one that logs each run's subcommand; returns (bin dir, log)."""
    real = shutil.which("cryptsetup")
    if real is None:
        raise RigError("cryptsetup not found")
    bindir = d / "shim"
    bindir.mkdir(exist_ok=True)
    log = d / "cryptsetup.log"
    shim = bindir / "cryptsetup"
    shim.write_text(CRYPTSETUP_SHIM.format(log=log, real=real))
    shim.chmod(0o755)
    return bindir, log


@dataclass
class Ran:
    seconds: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run(inv: Invocation, check: bool = True) -> Ran:
    """Run one whole process; the time includes its start-up (fork/exec to exit)."""
    env = inv.environ()
    t0 = time.perf_counter()
    p = subprocess.run(list(inv.argv), env=env, input=inv.stdin if inv.stdin is not None else b"",
                       capture_output=True)  # fmt: skip
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RigError(f"{inv.label}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[-500:]}")
    return Ran(dt, p.returncode, p.stdout, p.stderr)


def clevis_slot(img: Image) -> int:
    out = subprocess.run(["clevis", "luks", "list", "-d", img.dev], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        head = line.split(":", 1)[0].strip()
        if head.isdigit():
            return int(head)
    raise RigError(f"clevis luks list shows no binding: {out!r}")


# ------------------------------------------------------------------------------------------ figures


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


@dataclass
class Count:
    """TPM commands one whole process sent, and what it left loaded."""

    names: list[str]
    by_name: dict[str, int]
    left_loaded: list[str]
    failed: int = 0
    cryptsetup_runs: list[str] = field(default_factory=list)  # subcommands of the cryptsetup processes run

    @property
    def total(self) -> int:
        return len(self.names)


@dataclass
class ImportProfile:
    """`python -X importtime` of one command: top-level entries and which heavy packages it loads."""

    total_us: int
    top: list[tuple[str, int]]  # (module, cumulative µs), top-level imports, slowest first
    heavy: dict[str, int | None]  # package -> summed self time of its modules (µs), None = not loaded


def parse_importtime(stderr: str) -> ImportProfile:
    top: list[tuple[str, int]] = []
    heavy: dict[str, int | None] = dict.fromkeys(HEAVY_IMPORTS)
    total = 0
    for line in stderr.splitlines():
        # "import time:       self |  cumulative | <indent>module"
        if not line.startswith("import time:") or "[us]" in line:
            continue
        parts = line.split("|", 2)
        if len(parts) != 3:
            continue
        self_us = int(parts[0].split(":", 1)[1])
        cumulative = int(parts[1])
        name = parts[2][1:]  # one space after the bar, then two per nesting level
        module = name.strip()
        if not name.startswith(" "):  # a top-level import
            top.append((module, cumulative))
            total += cumulative
        root = module.split(".")[0]
        if root in heavy:
            # the package's own cost: the self times of all its modules (cumulative would count
            # what it imports from elsewhere, and a package's first line may be a late submodule)
            heavy[root] = (heavy[root] or 0) + self_us
    top.sort(key=lambda e: -e[1])
    return ImportProfile(total, top, heavy)


def import_profile(argv: Sequence[str], env: dict[str, str] | None = None) -> ImportProfile:
    """Run `python -X importtime -m tpmseal ARGS` twice (the first warms caches) and parse the second."""
    cmd = [sys.executable, "-X", "importtime", "-m", "tpmseal", *argv]
    p = None
    for _ in range(2):
        p = subprocess.run(cmd, env=env or quiet_env(), capture_output=True, text=True)
    assert p is not None
    return parse_importtime(p.stderr)


# ------------------------------------------------------------------------------------------ versions


def _first_line(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"n/a ({e})"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def _dpkg(package: str) -> str:
    out = _first_line(["dpkg-query", "-W", "-f", "${Version}", package])
    return out if out and "no packages" not in out else "n/a"


def _dist(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "n/a"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
            "os": _os_name()}  # fmt: skip


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def versions() -> dict[str, str]:
    return {
        "tpmseal": _dist("tpmseal"),
        "swtpm": _first_line(["swtpm", "--version"]).replace("TPM emulator version ", "").split(",")[0],
        "cryptsetup": _first_line(["cryptsetup", "--version"]).split(" flags")[0].replace("cryptsetup ", ""),
        "systemd": _first_line(["systemd-cryptenroll", "--version"]).replace("systemd ", ""),
        "clevis": _dpkg("clevis"),
        "tpm2-tools": _dpkg("tpm2-tools"),
        "tpm2-pytss": _dist("tpm2-pytss"),
        "cryptography": _dist("cryptography"),
        "python": platform.python_version(),
    }
