# SPDX-License-Identifier: LGPL-2.1-or-later
"""Collects every figure of bench/run in one pass; benchreport.py turns them into the tables."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import benchcreds
import benchrig as rig

from tpmseal.testing.tpmproxy import TpmProxy

REPO = Path(__file__).resolve().parent.parent
VM_TESTS = ("tests/vm/test_boot_unlock.py", "tests/vm/test_boot_harness.py")
VM_SELECT = "unattended or systemd_tpm2 or python_and"


@dataclass
class Options:
    reps: int = 10
    startup_reps: int = 20
    quick: bool = False
    vm: bool = False


@dataclass
class Results:
    command: str
    options: Options
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # label -> Count, or a string saying why there is none ("n/a: …")
    counts: dict[str, rig.Count | str] = field(default_factory=dict)
    enroll: dict[str, rig.Timing | str] = field(default_factory=dict)
    unlock: dict[str, rig.Timing | str] = field(default_factory=dict)
    startup: dict[str, rig.Timing | str] = field(default_factory=dict)
    imports: dict[str, rig.ImportProfile | str] = field(default_factory=dict)
    creds: dict[str, rig.Timing | str] = field(default_factory=dict)
    creds_load: list[benchcreds.Load] | str = field(default_factory=list)
    vm: dict[str, object] | str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# keys of the counts table (the report refers to them)
C_TPMSEAL_UNLOCK = "unseal: tpmseal test-unlock (tpmseal-tpm2 token)"
C_INTEROP_UNLOCK = "unseal: tpmseal test-unlock (systemd-tpm2 token)"
C_CREDS_DECRYPT = "unseal: systemd-creds decrypt (PCR 7)"
C_CLEVIS_PASS = "unseal: clevis luks pass"
C_TPMSEAL_ENROLL_FIRST = "enroll: tpmseal enroll (first on this TPM: makes the SRK persistent)"
C_TPMSEAL_ENROLL = "enroll: tpmseal enroll (SRK already persistent)"
C_SD_ENROLL = "enroll: systemd-cryptenroll"
C_CLEVIS_BIND = "enroll: clevis luks bind"
C_CREDS_ENCRYPT = "seal: systemd-creds encrypt (PCR 7)"
C_TS_CREDS_ENCRYPT = "seal: tpmseal creds encrypt (PCR 7)"
C_TS_CREDS_DECRYPT = "unseal: tpmseal creds decrypt (PCR 7)"


class Collector:
    def __init__(self, results: Results, work: Path, tpm: rig.Swtpm, proxy: TpmProxy) -> None:
        self.r = results
        self.work = work
        self.tpm = tpm
        self.proxy = proxy
        self.ptcti = f"swtpm:path={proxy.listen_sock}"
        self._n = 0

    def image(self, stem: str) -> rig.Image:
        self._n += 1
        return rig.make_luks2(self.work / f"{stem}-{self._n}.img")

    # ------------------------------------------------------------------ 1. TPM commands

    def count(self, label: str, inv: rig.Invocation) -> rig.Count | str:
        self.tpm.flush()
        self.proxy.reset()
        shim_dir, shim_log = rig.cryptsetup_shim(self.work)
        shim_log.write_text("")
        inv = rig.Invocation(inv.label, inv.argv, (*inv.env, ("PATH", f"{shim_dir}:{os.environ.get('PATH', '')}")),
                             inv.stdin)
        ran = rig.run(inv, check=False)
        cryptsetup_runs = shim_log.read_text().split()
        time.sleep(0.05)  # the proxy records before forwarding; this only lets its threads settle
        commands = self.proxy.commands
        left = self.tpm.loaded_handles()
        self.tpm.flush()
        if ran.returncode != 0:
            why = ran.stderr.decode(errors="replace").strip().splitlines()
            result: rig.Count | str = f"n/a: exit {ran.returncode}: {why[-1] if why else 'no message'}"
        else:
            names = [c.name for c in commands]
            by_name: dict[str, int] = {}
            for n in names:
                by_name[n] = by_name.get(n, 0) + 1
            failed = sum(1 for c in commands if c.response_code not in (0, None))
            result = rig.Count(names, dict(sorted(by_name.items(), key=lambda kv: -kv[1])), left, failed,
                               cryptsetup_runs)
        self.r.counts[label] = result
        log(f"counted {label}: {result.total if isinstance(result, rig.Count) else result}")
        return result

    def counts(self) -> dict[str, rig.Image]:
        t = self.ptcti
        ts_img = self.image("tpmseal")
        self.count(C_TPMSEAL_ENROLL_FIRST, rig.tpmseal_enroll(ts_img, t))
        self.count(C_TPMSEAL_ENROLL, rig.tpmseal_enroll(self.image("tpmseal"), t))
        self.count(C_TPMSEAL_UNLOCK, rig.tpmseal_test_unlock(ts_img, t))
        sd_img = self.image("systemd")
        self.count(C_SD_ENROLL, rig.systemd_cryptenroll(sd_img, t))
        self.count(C_INTEROP_UNLOCK, rig.tpmseal_test_unlock(sd_img, t))
        images = {"tpmseal": ts_img, "systemd": sd_img}
        if self.r.options.quick:
            return images
        cl_img = self.image("clevis")
        bound = self.count(C_CLEVIS_BIND, rig.clevis_bind(cl_img, t))
        if isinstance(bound, rig.Count):
            slot = rig.clevis_slot(cl_img)
            self.count(C_CLEVIS_PASS, rig.clevis_pass(cl_img, slot, t))
            images["clevis"] = cl_img
        else:
            self.r.counts[C_CLEVIS_PASS] = "n/a: clevis luks bind failed"
        secret = self.work / "secret"
        secret.write_bytes(b"a credential for the benchmark\n")
        cred = self.work / "cred"
        self.count(C_CREDS_ENCRYPT, rig.creds_encrypt(secret, cred, t))
        if cred.exists():
            self.count(C_CREDS_DECRYPT, rig.creds_decrypt(cred, t))
        else:
            self.r.counts[C_CREDS_DECRYPT] = "n/a: systemd-creds encrypt failed"
        ts_cred = self.work / "ts-cred"
        self.count(C_TS_CREDS_ENCRYPT, benchcreds.tpmseal_creds_encrypt(secret, ts_cred, t))
        if ts_cred.exists():
            self.count(C_TS_CREDS_DECRYPT, benchcreds.tpmseal_creds_decrypt(ts_cred, t))
        else:
            self.r.counts[C_TS_CREDS_DECRYPT] = "n/a: tpmseal creds encrypt failed"
        return images

    # ------------------------------------------------------------------ timing helpers

    def timed(self, table: dict[str, rig.Timing | str], makers: dict[str, Callable[[], rig.Invocation]],
              reps: int, cleanup: Callable[[rig.Invocation], None] | None = None) -> None:
        """Interleaved rounds (tool A, B, C, A, B, C, …) after one discarded warm-up round."""
        timings = {label: rig.Timing() for label in makers}
        failed: dict[str, str] = {}
        for rnd in range(reps + 1):
            for label, make in makers.items():
                if label in failed:
                    continue
                inv = make()  # image creation etc. happen here, outside the timed part
                self.tpm.flush()
                try:
                    ran = rig.run(inv)
                except rig.RigError as e:
                    failed[label] = f"n/a: {e}"
                    continue
                finally:
                    if cleanup is not None:
                        cleanup(inv)
                if rnd > 0:
                    timings[label].samples.append(ran.seconds)
        self.tpm.flush()
        for label in makers:
            table[label] = failed.get(label) or timings[label]

    # ------------------------------------------------------------------ 2. enroll wall time

    def enroll_times(self) -> None:
        d = self.tpm.tcti
        made: dict[str, rig.Image] = {}

        def fresh(key: str, build: Callable[[rig.Image, str], rig.Invocation]) -> Callable[[], rig.Invocation]:
            def make() -> rig.Invocation:
                img = self.image(key)
                inv = build(img, d)
                made[inv.argv.__repr__()] = img
                return inv

            return make

        def drop(inv: rig.Invocation) -> None:
            img = made.pop(inv.argv.__repr__(), None)
            if img is not None:
                img.remove()

        makers = {"tpmseal enroll": fresh("t", rig.tpmseal_enroll),
                  "systemd-cryptenroll": fresh("s", rig.systemd_cryptenroll)}  # fmt: skip
        if not self.r.options.quick:
            makers["clevis luks bind"] = fresh("c", rig.clevis_bind)
        log(f"timing enroll: {', '.join(makers)} x {self.r.options.reps} (+1 warm-up), fresh image each")
        self.timed(self.r.enroll, makers, self.r.options.reps, cleanup=drop)

    # ------------------------------------------------------------------ 3. unlock wall time

    def unlock_times(self, images: dict[str, rig.Image]) -> None:
        d = self.tpm.tcti
        makers: dict[str, Callable[[], rig.Invocation]] = {
            "tpmseal test-unlock": lambda: rig.tpmseal_test_unlock(images["tpmseal"], d),
        }
        if isinstance(self.r.counts.get(C_INTEROP_UNLOCK), rig.Count):
            makers["tpmseal test-unlock (systemd-tpm2 token)"] = lambda: rig.tpmseal_test_unlock(images["systemd"], d)
        if "clevis" in images:
            slot = rig.clevis_slot(images["clevis"])
            makers["clevis luks pass"] = lambda: rig.clevis_pass(images["clevis"], slot, d)
        elif not self.r.options.quick:
            self.r.unlock["clevis luks pass"] = "n/a: no clevis binding"
        log(f"timing unlock: {', '.join(makers)} x {self.r.options.reps}")
        self.timed(self.r.unlock, makers, self.r.options.reps)

    # ------------------------------------------------------------------ 6. credentials (anchor only)

    def creds_times(self) -> None:
        d = self.tpm.tcti
        secret = self.work / "secret"
        cred = self.work / "cred-timed"
        ts_cred = self.work / "ts-cred-timed"
        makers = {"systemd-creds encrypt (PCR 7)": lambda: rig.creds_encrypt(secret, cred, d),
                  "tpmseal creds encrypt (PCR 7)": lambda: benchcreds.tpmseal_creds_encrypt(secret, ts_cred, d),
                  "systemd-creds decrypt (PCR 7)": lambda: rig.creds_decrypt(cred, d),
                  "tpmseal creds decrypt (PCR 7)": lambda: benchcreds.tpmseal_creds_decrypt(ts_cred, d)}  # fmt: skip
        log(f"timing systemd-creds and tpmseal creds encrypt/decrypt x {self.r.options.reps}")
        self.timed(self.r.creds, makers, self.r.options.reps)
        log("credential server: 1, 10, 200 concurrent clients")
        try:
            self.r.creds_load = benchcreds.server_load(d)
        except Exception as e:  # a figure that cannot be measured is reported, not fatal
            self.r.creds_load = f"n/a: {type(e).__name__}: {e}"

    # ------------------------------------------------------------------ 4. start-up

    def startup(self, images: dict[str, rig.Image]) -> None:
        reps = self.r.options.startup_reps
        py = sys.executable
        makers = {
            "tpmseal --help": lambda: rig.Invocation("tpmseal --help", (*rig.tpmseal_argv(), "--help")),
            "python -c pass (same interpreter)": lambda: rig.Invocation("python", (py, "-c", "pass")),
            "python -I -S -c pass": lambda: rig.Invocation("python -I -S", (py, "-I", "-S", "-c", "pass")),
            "systemd-cryptenroll --help": lambda: rig.Invocation("sd --help", ("systemd-cryptenroll", "--help")),
        }
        log(f"timing start-up x {reps}")
        self.timed(self.r.startup, makers, reps)
        log("import profiles (python -X importtime -m tpmseal …)")
        self.r.imports["tpmseal --help"] = rig.import_profile(["--help"])
        self.r.imports["tpmseal test-unlock"] = rig.import_profile(
            ["test-unlock", images["tpmseal"].dev, f"--tpm2-device={self.tpm.tcti}"])
        self.tpm.flush()


# ------------------------------------------------------------------------------------------ 5. boot (VM)


def boot_figures(python: str) -> dict[str, object] | str:
    basetemp = Path(tempfile.mkdtemp(prefix="tpmseal-bench-vm-", dir="/tmp"))
    argv = [python, "-m", "pytest", "-m", "vm", *VM_TESTS, "-k", VM_SELECT, "-q", "-p", "no:cacheprovider",
            f"--basetemp={basetemp}"]
    log(f"VM tier: {shlex.join(argv)} (minutes)")
    try:
        p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=rig.quiet_env())
        out = basetemp / "vm-measurements.json"
        if not out.exists():
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            return f"n/a: pytest exit {p.returncode}, no vm-measurements.json ({' / '.join(tail)})"
        figures: dict[str, object] = json.loads(out.read_text())
        figures["_pytest_exit"] = p.returncode
        summary = [line for line in p.stdout.splitlines() if " passed" in line or " failed" in line]
        figures["_pytest_summary"] = summary[-1].strip("= ") if summary else f"exit {p.returncode}"
        return figures
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ all of it


def missing_tools(quick: bool) -> list[str]:
    tools = ["swtpm", "swtpm_setup", "tpm2_pcrextend", "tpm2_flushcontext", "tpm2_getcap", "cryptsetup",
             "systemd-cryptenroll"]
    if not quick:
        tools += ["clevis", "systemd-creds"]
    return [t for t in tools if shutil.which(t) is None]


def collect(opts: Options, command: str) -> Results:
    t0 = time.perf_counter()
    r = Results(command=command, options=opts, machine=rig.machine(), versions=rig.versions())
    missing = missing_tools(opts.quick)
    if missing:
        raise rig.RigError(f"missing tool(s): {', '.join(missing)}")
    with rig.workdir() as work, rig.swtpm_running(work / "tpm") as tpm:
        with TpmProxy(tpm.sock, work / "proxy") as proxy:
            c = Collector(r, work, tpm, proxy)
            log("counting TPM commands through the proxy")
            images = c.counts()
        c.enroll_times()
        c.unlock_times(images)
        if not opts.quick:
            c.creds_times()
        c.startup(images)
        if tpm.loaded_handles():
            r.notes.append(f"handles left in swtpm at the end: {tpm.loaded_handles()}")
    if opts.vm:
        r.vm = boot_figures(sys.executable)
    r.seconds = time.perf_counter() - t0
    return r


def invocation_string() -> str:
    """The command that produced the run, as typed (interpreter as given), from the repository root."""
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    if len(argv) > 1 and Path(argv[1]).name == "run":
        argv[1] = "bench/run"
    prefix = "" if Path.cwd().resolve() == REPO else f"cd {shlex.quote(str(REPO))} && "
    return prefix + shlex.join(argv)
