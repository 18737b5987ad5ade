# SPDX-License-Identifier: LGPL-2.1-or-later
"""VM test harness: dracut initramfs + LUKS2 images + swtpm + qemu (TCG) on a serial console.

No pytest in here: the fixtures in conftest.py and the benchmarks both use it.

    kver = default_kernel_version()
    initrd = build_initramfs(InitramfsSpec(modules=("tpmsealprobe",), ...), cache_dir)
    image = make_luks_image(tmp / "disk.img", passphrase=b"pw")
    swtpm_setup(tmp / "tpm")
    with Vm(VmConfig(kernel=..., initrd=initrd, disks=[image.path], cmdline=...,
                     tpm_state=tmp / "tpm"), log_path=tmp / "boot.log") as vm:
        vm.expect(r"Please enter passphrase", timeout=60)
        vm.send("pw\\n")
        result = vm.wait()
    result.marker("UNLOCKED")          # the "TPMSEALPROBE: UNLOCKED ..." line, with its time

Facts this relies on (see shared/README.md): the host has no device-mapper, so
anything that maps a volume runs in the guest; KVM is unusable here, qemu runs
under TCG; swtpm exits when qemu disconnects, so one swtpm is started per boot
on the same state directory; dracut finds modules only in its modules.d.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

DRACUT_MODULES_D = Path("/usr/lib/dracut/modules.d")
MARKER_PREFIX = "TPMSEALPROBE:"
DEFAULT_DRIVERS = ("virtio_blk", "virtio_pci", "dm_crypt", "tpm_tis", "tpm_crb")
# qemu's command line is fixed so that PCR 1 (which follows -m/-smp) stays stable
VM_MEMORY_MIB = 1024
VM_CPUS = 2
REQUIRED_TOOLS = (
    "qemu-system-x86_64", "dracut", "swtpm", "swtpm_setup", "cryptsetup", "timeout",
)
_LOCK_PATH = Path("/run/lock/tpmseal-vm-dracut.lock")


class HarnessError(RuntimeError):
    """A step of the harness failed; the message says which and where its log is."""


# --------------------------------------------------------------------------- environment


def default_kernel_version() -> str | None:
    """TPMSEAL_VM_KVER, or the newest /boot/vmlinuz-* that has modules installed."""
    env = os.environ.get("TPMSEAL_VM_KVER")
    if env:
        return env
    found = []
    for p in Path("/boot").glob("vmlinuz-*"):
        kver = p.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", kver).is_dir():
            found.append(kver)
    if not found:
        return None

    def key(v: str) -> list[tuple[int, str]]:
        return [(int(x), "") if x.isdigit() else (-1, x) for x in re.split(r"[.-]", v)]

    return max(found, key=key)


def missing_prerequisites() -> list[str]:
    """What the VM tier lacks on this host; empty when it can run."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    kver = default_kernel_version()
    if kver is None:
        missing.append("a kernel /boot/vmlinuz-* with /lib/modules/<version>")
    elif not os.access(f"/boot/vmlinuz-{kver}", os.R_OK):
        missing.append(f"read access to /boot/vmlinuz-{kver}")
    if not DRACUT_MODULES_D.is_dir() or not os.access(DRACUT_MODULES_D, os.W_OK):
        missing.append(f"write access to {DRACUT_MODULES_D} (run as root)")
    return missing


# --------------------------------------------------------------------------- initramfs


class Flavour(enum.Enum):
    """The two kinds of initramfs tpmseal supports."""

    SYSTEMD = "systemd"
    SHELL = "shell"  # dracut's own shell scripts, no systemd


_BASE_MODULES: dict[Flavour, tuple[str, ...]] = {
    Flavour.SYSTEMD: ("systemd", "systemd-initrd", "dracut-systemd", "crypt", "tpm2-tss", "base"),
    Flavour.SHELL: ("base", "bash", "crypt", "dm", "rootfs-block", "udev-rules"),
}
_OMIT_MODULES: dict[Flavour, tuple[str, ...]] = {
    Flavour.SYSTEMD: (),
    Flavour.SHELL: ("systemd", "systemd-initrd", "dracut-systemd"),
}


@dataclasses.dataclass(frozen=True)
class InitramfsSpec:
    """What goes into one initramfs.

    module_dirs: dracut module directories (e.g. tests/vm/modules/99tpmsealprobe); each is
    copied into /usr/lib/dracut/modules.d under its own name and added with -m.
    includes: (host file, path in the initramfs) pairs for --include.
    env: extra environment for dracut (module-setup.sh reads e.g. TPMSEAL_PYTHON).
    """

    flavour: Flavour = Flavour.SYSTEMD
    module_dirs: tuple[Path, ...] = ()
    includes: tuple[tuple[Path, str], ...] = ()
    drivers: tuple[str, ...] = DEFAULT_DRIVERS
    kver: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    compress: bool = False

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(dracut_module_name(d) for d in self.module_dirs)

    def dracut_argv(self, out: Path, kver: str) -> list[str]:
        argv = [
            "dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline",
            "-m", " ".join((*_BASE_MODULES[self.flavour], *self.module_names)),
            "--drivers", " ".join(self.drivers),
        ]
        if _OMIT_MODULES[self.flavour]:
            argv += ["-o", " ".join(_OMIT_MODULES[self.flavour])]
        argv += ["--zstd"] if self.compress else ["--no-compress"]
        for src, dst in self.includes:
            argv += ["--include", str(src), dst]
        return [*argv, str(out), kver]


def dracut_module_name(module_dir: Path) -> str:
    """'99tpmsealprobe' -> 'tpmsealprobe' (dracut drops the two-digit prefix)."""
    name = module_dir.name
    return name[2:] if name[:2].isdigit() else name


def install_dracut_module(module_dir: Path) -> Path:
    """Copy a module directory into /usr/lib/dracut/modules.d, replacing an older copy."""
    if not (module_dir / "module-setup.sh").is_file():
        raise HarnessError(f"{module_dir} has no module-setup.sh")
    dest = DRACUT_MODULES_D / module_dir.name
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(module_dir, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in dest.iterdir():
        if f.suffix == ".sh":
            f.chmod(0o755)
    return dest


def _tree_digest(h: hashlib._Hash, root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")


def spec_digest(spec: InitramfsSpec, kver: str) -> str:
    """Cache key: the spec, the module sources and the included files' contents."""
    h = hashlib.sha256()
    h.update(repr((spec.flavour.value, spec.drivers, kver, spec.env, spec.compress)).encode())
    for d in spec.module_dirs:
        h.update(d.name.encode())
        _tree_digest(h, d)
    for src, dst in spec.includes:
        h.update(dst.encode() + b"\0")
        h.update(src.read_bytes() if src.is_file() else str(src).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _dracut_lock() -> Iterator[None]:
    """Serialize module copies + builds: other sessions may build with other module versions."""
    _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class Initramfs:
    path: Path
    spec: InitramfsSpec
    kver: str
    build_seconds: float  # 0.0 when it came from the cache
    log_path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def build_initramfs(spec: InitramfsSpec, cache_dir: Path, timeout: float = 600) -> Initramfs:
    """Build (or reuse from cache_dir) the initramfs for spec."""
    kver = spec.kver or default_kernel_version()
    if kver is None:
        raise HarnessError("no kernel found in /boot")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = spec_digest(spec, kver)
    out = cache_dir / f"initramfs-{spec.flavour.value}-{key}.img"
    log = out.with_suffix(".log")
    if out.is_file():
        return Initramfs(out, spec, kver, 0.0, log)
    env = {**os.environ, **dict(spec.env)}
    tmp = out.with_suffix(".tmp")
    with _dracut_lock():
        for d in spec.module_dirs:
            install_dracut_module(d)
        t0 = time.monotonic()
        with open(log, "wb") as logf:
            proc = subprocess.run(
                spec.dracut_argv(tmp, kver), stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False,
            )
        seconds = time.monotonic() - t0
    if proc.returncode != 0 or not tmp.is_file():
        raise HarnessError(f"dracut failed (rc={proc.returncode}), see {log}")
    tmp.rename(out)
    return Initramfs(out, spec, kver, seconds, log)


def initramfs_files(path: Path) -> dict[str, int]:
    """Path -> size of every entry in a dracut initramfs (from lsinitrd's `ls -l` lines)."""
    proc = subprocess.run(["lsinitrd", str(path)], capture_output=True, text=True, check=True)
    files = {}
    for line in proc.stdout.splitlines():
        if re.match(r"[-dlcbps][rwxsStT-]{9} ", line):
            fields = line.split(maxsplit=8)
            if len(fields) == 9 and fields[4].isdigit():
                files[fields[8].split(" -> ")[0]] = int(fields[4])
    return files


def initramfs_listing(path: Path) -> list[str]:
    """Paths in a dracut initramfs (symlink targets dropped)."""
    return list(initramfs_files(path))


def compressed_size(path: Path, tool: Sequence[str] = ("zstd", "-q", "-c", "-15", "-T0")) -> int:
    """Size of path after piping it through a compressor (zstd by default)."""
    with open(path, "rb") as f:
        proc = subprocess.run(list(tool), stdin=f, stdout=subprocess.PIPE, check=True)
    return len(proc.stdout)


# --------------------------------------------------------------------------- LUKS images


@dataclasses.dataclass(frozen=True)
class LuksImage:
    path: Path
    uuid: str


_FAST_PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


def _cryptsetup(args: Sequence[str], secret: bytes | None = None) -> str:
    proc = subprocess.run(
        ["cryptsetup", *args], input=secret if secret is not None else b"",
        capture_output=True, check=False,
    )
    if proc.returncode != 0:
        shown = " ".join(args)
        raise HarnessError(f"cryptsetup {shown} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def make_luks_image(
    path: Path, passphrase: bytes, *, size_mib: int = 32, uuid: str | None = None,
    keyfile: Path | None = None,
) -> LuksImage:
    """A LUKS2 image file with a passphrase keyslot (pbkdf2, 1000 iterations: fast, never argon2).

    keyfile, if given, is added as a second keyslot.
    """
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    args = ["luksFormat", "--type", "luks2", "--batch-mode", *_FAST_PBKDF, "--key-file", "-"]
    if uuid:
        args += ["--uuid", uuid]
    _cryptsetup([*args, str(path)], passphrase)
    if keyfile is not None:
        luks_add_key(path, passphrase, keyfile)
    return LuksImage(path, _cryptsetup(["luksUUID", str(path)]).strip())


def luks_add_key(path: Path, existing: bytes, new_keyfile: Path) -> None:
    _cryptsetup(["luksAddKey", "--batch-mode", *_FAST_PBKDF, "--key-file", "-", str(path),
                 str(new_keyfile)], existing)


def luks_dump(path: Path) -> dict[str, object]:
    """The LUKS2 JSON metadata of an image."""
    data: dict[str, object] = json.loads(_cryptsetup(["luksDump", "--dump-json-metadata", str(path)]))
    return data


def luks_token_types(path: Path) -> list[str]:
    tokens = luks_dump(path).get("tokens", {})
    assert isinstance(tokens, dict)
    return [str(t.get("type")) for t in tokens.values()]


# --------------------------------------------------------------------------- swtpm


def swtpm_setup(state_dir: Path) -> None:
    """A fresh TPM 2.0 state (EK + certificates) in state_dir; sha256 bank only."""
    state_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(state_dir), "--createek", "--create-ek-cert",
         "--create-platform-cert", "--lock-nvram", "--overwrite"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"swtpm_setup failed: {proc.stdout}{proc.stderr}")


class Swtpm:
    """swtpm as qemu's vTPM: a child process (not --daemon) serving a control socket.

    It exits by itself when qemu disconnects; stop() waits for that, and only then
    terminates it. Socket paths must stay short (sun_path), so they live in /tmp.
    """

    def __init__(self, state_dir: Path, log_path: Path | None = None, log_level: int = 1) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.log_level = log_level
        self._sockdir = Path(tempfile.mkdtemp(prefix="tpmseal-vtpm-", dir="/tmp"))
        self.ctrl_socket = self._sockdir / "ctrl.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
                "--ctrl", f"type=unixio,path={self.ctrl_socket}"]
        if self.log_path is not None:
            argv += ["--log", f"file={self.log_path},level={self.log_level}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ctrl_socket.exists():
            if self.proc.poll() is not None:
                raise HarnessError(f"swtpm exited at start (rc={self.proc.returncode})")
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError("swtpm did not create its socket")
            time.sleep(0.02)

    def qemu_args(self) -> list[str]:
        return ["-chardev", f"socket,id=chrtpm,path={self.ctrl_socket}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", "tpm-tis,tpmdev=tpm0"]

    def stop(self, grace: float = 3) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- Python for the initramfs


def ensure_tpmseal_venv(dest: Path, project: Path, base_python: str = "/usr/bin/python3.11",
                        log_path: Path | None = None) -> Path:
    """A venv of the distribution's Python with tpmseal (and tpm2-pytss, cryptography) installed.

    Created once (pip builds tpm2-pytss from source); tpmseal itself is reinstalled on every
    call so the initramfs gets the current sources. The project is copied first: pip builds
    in the source tree and would leave build/ and *.egg-info behind in the checkout.
    Returns the venv's python, to be passed to dracut as TPMSEAL_PYTHON.
    """
    python = dest / "bin" / "python"
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115
    try:
        if not python.exists():
            subprocess.run([base_python, "-m", "venv", str(dest)], check=True, stdout=log, stderr=log)
            fresh = True
        else:
            fresh = False
        with tempfile.TemporaryDirectory(prefix="tpmseal-src-") as tmp:
            src = Path(tmp) / "tpmseal"
            shutil.copytree(project, src, ignore=shutil.ignore_patterns(
                ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", ".venv"))
            argv = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            argv += [str(src)] if fresh else ["--no-deps", "--force-reinstall", str(src)]
            proc = subprocess.run(argv, stdout=log, stderr=log, check=False)
        if proc.returncode != 0:
            if fresh:
                shutil.rmtree(dest, ignore_errors=True)
            raise HarnessError(f"pip install into {dest} failed; see {log_path}")
    finally:
        log.close()
    return python


# --------------------------------------------------------------------------- qemu


@dataclasses.dataclass(frozen=True)
class ConsoleLine:
    t: float  # seconds from qemu start until the line's first byte arrived
    text: str


@dataclasses.dataclass
class BootResult:
    log: str
    lines: list[ConsoleLine]
    wall: float  # seconds from qemu start to qemu exit (or kill)
    returncode: int | None
    timed_out: bool
    log_path: Path
    cmdline: str

    @property
    def markers(self) -> list[ConsoleLine]:
        """The probe's result lines, prefix removed."""
        out = []
        for line in self.lines:
            idx = line.text.find(MARKER_PREFIX)
            if idx >= 0:
                out.append(ConsoleLine(line.t, line.text[idx + len(MARKER_PREFIX):].strip()))
        return out

    def marker(self, key: str) -> ConsoleLine | None:
        """First marker whose text starts with key (e.g. "UNLOCKED tpmsealtest")."""
        return next((m for m in self.markers if m.text.startswith(key)), None)

    def time_to(self, pattern: str) -> float | None:
        """Seconds from qemu start to the first console line matching the regex."""
        rx = re.compile(pattern)
        return next((line.t for line in self.lines if rx.search(line.text)), None)

    def summary(self) -> str:
        marks = "\n".join(f"  {m.t:6.2f}s {m.text}" for m in self.markers)
        return (f"wall={self.wall:.1f}s rc={self.returncode} timed_out={self.timed_out} "
                f"log={self.log_path}\n{marks}")


@dataclasses.dataclass(frozen=True)
class VmConfig:
    initrd: Path
    disks: Sequence[Path] = ()
    cmdline: str = ""
    tpm_state: Path | None = None  # swtpm state dir (from swtpm_setup); None = no vTPM
    kver: str | None = None
    timeout: float = 600  # judged by markers; a loaded 2-core host needs minutes (seen: 160 s per boot)
    memory_mib: int = VM_MEMORY_MIB
    cpus: int = VM_CPUS
    swtpm_log: Path | None = None
    extra_qemu: Sequence[str] = ()
    # UEFI: a writable copy of OVMF_VARS (see ovmf_vars_copy); None = SeaBIOS, qemu's default.
    # OVMF measures the -kernel boot (initramfs and command line into PCR 9) and keeps an event log.
    ovmf_vars: Path | None = None

    def kernel(self) -> Path:
        kver = self.kver or default_kernel_version()
        return Path(f"/boot/vmlinuz-{kver}")

    def full_cmdline(self) -> str:
        # rd.emergency=poweroff: a failed boot ends the VM instead of waiting at a shell;
        # systemd.default_*_sec: systemd's 90 s for a unit to start or a device to appear are not enough when
        # the host is loaded (seen: "Timed out waiting for device" with six jobs on two cores)
        return (f"console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff systemd.default_timeout_start_sec=600 "
                f"systemd.default_device_timeout_sec=600 "
                f"{self.cmdline}").strip()

    def qemu_argv(self, tpm: Swtpm | None) -> list[str]:
        argv = [
            "timeout", "--kill-after=5", str(int(self.timeout) + 5),
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", str(self.kernel()), "-initrd", str(self.initrd),
            "-append", self.full_cmdline(),
        ]
        if self.ovmf_vars is not None:
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={self.ovmf_vars}"]
        for disk in self.disks:
            argv += ["-drive", f"file={disk},if=virtio,format=raw"]
        if tpm is not None:
            argv += tpm.qemu_args()
        return [*argv, *self.extra_qemu]


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def ovmf_available() -> bool:
    return OVMF_CODE.is_file() and OVMF_VARS_TEMPLATE.is_file()


def ovmf_vars_copy(dest: Path) -> Path:
    """A fresh copy of the OVMF variable store for one VM (PCRs are the same across fresh copies)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OVMF_VARS_TEMPLATE, dest)
    return dest


class Vm:
    """One boot. The serial console is qemu's stdio: read into a log, writable with send().

    Use as a context manager; wait() returns the BootResult. swtpm (if configured) is
    started before qemu and reaped after it.
    """

    def __init__(self, config: VmConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._tpm: Swtpm | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0
        self._lines: list[ConsoleLine] = []
        self._partial = b""
        self._partial_t = 0.0
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._result: BootResult | None = None
        self._stderr_path = log_path.with_suffix(log_path.suffix + ".stderr")

    # -- lifecycle
    def start(self) -> None:
        if self.config.tpm_state is not None:
            self._tpm = Swtpm(self.config.tpm_state, self.config.swtpm_log)
            self._tpm.start()
        argv = self.config.qemu_argv(self._tpm)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self._errf = open(self._stderr_path, "wb")  # noqa: SIM115
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._errf)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 4096)
            now = time.monotonic() - self._t0
            if not chunk:
                break
            self._logf.write(chunk)
            self._logf.flush()
            with self._cond:
                for piece in chunk.splitlines(keepends=True):
                    if not self._partial:
                        self._partial_t = now
                    self._partial += piece
                    if piece.endswith((b"\n", b"\r")):
                        self._finish_partial()
                self._cond.notify_all()
        with self._cond:
            if self._partial:
                self._finish_partial()
            self._eof = True
            self._cond.notify_all()

    def _finish_partial(self) -> None:
        text = self._partial.decode("utf-8", "replace").strip("\r\n")
        if text:
            self._lines.append(ConsoleLine(self._partial_t, text))
        self._partial = b""

    # -- interaction
    def expect(self, pattern: str, timeout: float = 60) -> ConsoleLine:
        """Wait until a console line (or the unfinished last line, e.g. a prompt) matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if rx.search(line.text):
                        return line
                seen = len(self._lines)
                partial = self._partial.decode("utf-8", "replace")
                if partial and rx.search(partial):
                    return ConsoleLine(self._partial_t, partial.strip("\r\n"))
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise HarnessError(
                        f"console never matched {pattern!r} ({'qemu exited' if self._eof else 'timeout'});"
                        f" log {self.log_path}")
                self._cond.wait(min(left, 0.5))

    def send(self, text: str | bytes) -> None:
        """Type into the serial console (the guest sees a terminal: end lines with \\n)."""
        assert self._proc is not None and self._proc.stdin is not None
        data = text.encode() if isinstance(text, str) else text
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 10) -> None:
        """Wait until the console has been silent for `quiet` seconds (a prompt is complete)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < deadline and not self._eof:
                before = (len(self._lines), len(self._partial))
                self._cond.wait(quiet)
                if (len(self._lines), len(self._partial)) == before:
                    return

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def wait(self, timeout: float | None = None) -> BootResult:
        """Wait for qemu to exit (power-off by the probe); kill it at the configured timeout."""
        if self._result is not None:
            return self._result
        assert self._proc is not None
        budget = self.config.timeout if timeout is None else timeout
        remaining = max(0.0, budget - self.elapsed())
        timed_out = False
        try:
            self._proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._proc.send_signal(signal.SIGTERM)  # the `timeout` wrapper passes it on to qemu
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        wall = self.elapsed()
        if self._proc.returncode == 124:  # the `timeout` wrapper fired
            timed_out = True
        if self._reader is not None:
            self._reader.join(timeout=5)
        with contextlib.suppress(BrokenPipeError, OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        self._logf.close()
        self._errf.close()
        if self._tpm is not None:
            self._tpm.stop()
            self._tpm = None
        log = self.log_path.read_bytes().decode("utf-8", "replace")
        self._result = BootResult(log=log, lines=list(self._lines), wall=wall,
                                  returncode=self._proc.returncode, timed_out=timed_out,
                                  log_path=self.log_path, cmdline=self.config.full_cmdline())
        return self._result

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._result is None and self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self.wait(timeout=self.elapsed() + 10)


def boot(
    config: VmConfig, log_path: Path, answers: Mapping[str, str] | None = None,
) -> BootResult:
    """Boot to the end. answers maps a console regex to text typed once it appears, in order."""
    with Vm(config, log_path) as vm:
        for pattern, text in (answers or {}).items():
            vm.expect(pattern, timeout=max(1.0, config.timeout - vm.elapsed()))
            vm.wait_quiet()
            vm.send(text)
        return vm.wait()


def _newc_entry(name: str, data: bytes, mode: int, ino: int) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def append_to_initramfs(src: Path, dest: Path, files: Mapping[str, bytes]) -> Path:
    """dest = src followed by an uncompressed newc cpio archive holding ``files`` (path -> content).

    The kernel unpacks concatenated archives in order, so this is a changed initramfs (other bytes,
    other size, other measurement) that boots like the original, made in milliseconds.
    """
    archive = b"".join(_newc_entry(name.lstrip("/"), data, 0o100644, i + 1)
                       for i, (name, data) in enumerate(sorted(files.items())))
    archive += _newc_entry("TRAILER!!!", b"", 0, 0)
    archive += b"\0" * (-len(archive) % 512)
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.write(archive)
    return dest
