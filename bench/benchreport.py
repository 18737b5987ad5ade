# SPDX-License-Identifier: LGPL-2.1-or-later
"""Renders the figures of one bench/run as Markdown: the tables, then what they mean.

Every statement in "What the figures mean" is computed from the figures of the same run.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence

import benchrig as rig
import benchsuite as s

UNSEAL_TARGET = 6  # 5 + ReadPublic of the SRK: the session is salted to the TPM's key, not the header's (issue 16)
UNSEAL_NAMES = ["ReadPublic", "Load", "StartAuthSession", "PolicyPCR", "Unseal", "FlushContext"]
ENROLL_TARGET = 1.5
# real TPMs take 20-250 ms per command (shared/README.md): commands decide unlock time there
TPM_MS_PER_COMMAND = (20, 250)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _count(r: s.Results, key: str) -> rig.Count | None:
    c = r.counts.get(key)
    return c if isinstance(c, rig.Count) else None


def _timing(table_: dict[str, rig.Timing | str], key: str) -> rig.Timing | None:
    t = table_.get(key)
    return t if isinstance(t, rig.Timing) and t.n else None


# ------------------------------------------------------------------------------------------ sections


def header(r: s.Results) -> list[str]:
    m, v = r.machine, r.versions
    mode = "quick (smoke) run" if r.options.quick else "full run"
    lines = [
        "<!-- SPDX-License-Identifier: LGPL-2.1-or-later -->",
        "# Benchmarks",
        "",
        "Written by `bench/run` (do not edit by hand). Reproduce with:",
        "",
        "```sh",
        r.command,
        "```",
        "",
        f"{mode}, {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"took {r.seconds:.0f} s; {r.options.reps} runs per timed figure "
        f"(start-up: {r.options.startup_reps}), after one discarded warm-up round, tools interleaved.",
        "",
        f"**Machine:** {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, {m['os']}.  ",
        "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "All tools talk to the same swtpm (one instance, socket TCTI, PCRs 0/2/4/7 extended first). Between",
        "runs the rig flushes transient objects and sessions (`tpm2_flushcontext -t -l -s`): swtpm has no",
        "resource manager, and systemd-cryptenroll and clevis leave sessions loaded. Timed runs are whole",
        "processes (start-up included) talking to swtpm directly; command counts go through",
        "`tpmseal.testing.tpmproxy`. Ratios compare with the anchors measured in the same run.",
    ]
    return lines


def counts_section(r: s.Results) -> list[str]:
    anchors = {"unseal": (s.C_CREDS_DECRYPT, s.C_CLEVIS_PASS), "enroll": (s.C_SD_ENROLL, s.C_CLEVIS_BIND)}
    rows = []
    order = {"unseal": 0, "enroll": 1, "seal": 2}
    for key, c in sorted(r.counts.items(), key=lambda kv: order.get(kv[0].split(": ", 1)[0], 9)):
        kind, label = key.split(": ", 1)
        if isinstance(c, str):
            rows.append([kind, label, "n/a", "", "", c.removeprefix("n/a: ")])
            continue
        refs = []
        for a in anchors.get(kind, ()):
            ac = _count(r, a)
            if ac is not None and a != key:
                refs.append(f"{ratio(c.total, ac.total)} {a.split(': ', 1)[1]}")
        names = " ".join(c.names) if c.total <= 8 else ", ".join(f"{n}x{k}" for n, k in c.by_name.items())
        if c.failed:
            names += f" ({c.failed} answered with an error code)"
        left = ", ".join(c.left_loaded) if c.left_loaded else "none"
        rows.append([kind, label, str(c.total), "; ".join(refs), left, names, _cryptsetup(c.cryptsetup_runs)])
    return ["## 1. TPM commands per operation (whole process, counted at the socket)", "",
            *table(["op", "process", "commands", "ratio vs anchor", "left loaded", "commands sent",
                    "cryptsetup processes"], rows), "",
            "\"left loaded\": transient objects and sessions still in the TPM after the process exited.",
            "\"cryptsetup processes\": runs of the cryptsetup binary (by subcommand); systemd's tools link",
            "libcryptsetup instead."]


def _cryptsetup(runs: list[str]) -> str:
    if not runs:
        return "0"
    by: dict[str, int] = {}
    for sub in runs:
        by[sub] = by.get(sub, 0) + 1
    return f"{len(runs)} (" + ", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) + ")"


def _timing_rows(t: dict[str, rig.Timing | str], anchors: Sequence[str]) -> list[list[str]]:
    rows = []
    for label, tm in t.items():
        if isinstance(tm, str) or not tm.n:
            rows.append([label, "n/a", "", "", "0", tm if isinstance(tm, str) else "no samples"])
            continue
        refs = []
        subject = label not in anchors and not label.startswith("python")
        for a in anchors if subject else ():
            at = _timing(t, a)
            if at is not None and a != label:
                refs.append(f"{ratio(tm.median, at.median)} {a}")
        rows.append([label, ms(tm.median), ms(tm.min), ms(tm.max), str(tm.n), "; ".join(refs)])
    return rows


TIMING_HEADER = ["process", "median ms", "min ms", "max ms", "runs", "ratio (median) vs anchor"]


def enroll_section(r: s.Results) -> list[str]:
    return ["## 2. Enroll wall time (fresh 32 MiB LUKS2 image per run, pbkdf2 1000 iterations, PCR 7)", "",
            *table(TIMING_HEADER, _timing_rows(r.enroll, ["systemd-cryptenroll"])), "",
            "tpmseal's SRK is persistent after its first enroll on a TPM (that run is in the command counts);",
            "systemd-cryptenroll 252 and clevis create a primary key in every run."]


def unlock_section(r: s.Results) -> list[str]:
    return ["## 3. Unlock wall time (unseal + key check, whole process; nothing is mapped)", "",
            *table(TIMING_HEADER, _timing_rows(r.unlock, ["clevis luks pass"]))]


def startup_section(r: s.Results) -> list[str]:
    lines = ["## 4. Start-up", "",
             *table(TIMING_HEADER, _timing_rows(r.startup, ["python -c pass (same interpreter)",
                                                            "systemd-cryptenroll --help"])), ""]
    rows = []
    for label, prof in r.imports.items():
        if isinstance(prof, str):
            rows.append([label, "n/a", prof, ""])
            continue
        heavy = [f"{k} {v / 1000:.1f}" for k, v in prof.heavy.items() if v is not None]
        top = ", ".join(f"{m} {us / 1000:.1f}" for m, us in prof.top[:5])
        rows.append([label, f"{prof.total_us / 1000:.1f}", ", ".join(heavy) or "none", top])
    lines += ["`python -X importtime -m tpmseal …` (one run after a warm-up):", "",
              *table(["command", "imports ms", "heavy imports loaded (ms, own modules' self time)",
                      "slowest top-level imports (ms, cumulative)"], rows)]
    return lines


VM_KEYS = [
    ("initramfs without tpmseal, raw", "size.without_tpmseal.raw_bytes", "MB"),
    ("initramfs with tpmseal, raw", "size.with_tpmseal.raw_bytes", "MB"),
    ("initramfs without tpmseal, zstd", "size.without_tpmseal.zstd_bytes", "MB"),
    ("initramfs with tpmseal, zstd", "size.with_tpmseal.zstd_bytes", "MB"),
    ("boot start → unlocked: tpmseal agent (systemd flavour)", "boot.tpmseal.unlock_s", "s"),
    ("boot start → unlocked: systemd's own systemd-tpm2", "boot.systemd_tpm2.unlock_s", "s"),
    ("boot start → unlocked: tpmseal, non-systemd flavour", "boot.tpmseal_shell.unlock_s", "s"),
    ("password asked → unlocked (tpmseal agent)", "boot.tpmseal.ask_to_unlock_s", "s"),
    ("systemd-cryptenroll inside the guest", "boot.systemd_tpm2.enroll_in_guest_ms", "ms"),
]


def _fmt_vm(value: object, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "MB":
        return f"{int(str(value)) / 1e6:.1f} MB"
    return f"{value} {unit}"


def vm_section(r: s.Results) -> list[str]:
    head = ["## 5. Boot (qemu TCG + vTPM, dracut initramfs)", ""]
    if r.vm is None:
        return [*head, "n/a: not measured in this run (`bench/run --vm` boots VMs; it takes minutes)."]
    if isinstance(r.vm, str):
        return [*head, r.vm]
    f = r.vm
    rows = [[label, _fmt_vm(f.get(key), unit)] for label, key, unit in VM_KEYS]

    def num(key: str) -> float | None:
        v = f.get(key)
        try:
            return float(str(v)) if v is not None else None
        except ValueError:
            return None

    for a, b, label in (("size.with_tpmseal.raw_bytes", "size.without_tpmseal.raw_bytes", "raw"),
                        ("size.with_tpmseal.zstd_bytes", "size.without_tpmseal.zstd_bytes", "zstd")):
        x, y = num(a), num(b)
        rows.append([f"initramfs growth from tpmseal, {label}",
                     f"+{(x - y) / 1e6:.1f} MB ({ratio(x, y)})" if x is not None and y is not None else "n/a"])
    x, y = num("boot.tpmseal.unlock_s"), num("boot.systemd_tpm2.unlock_s")
    rows.append(["boot → unlocked, tpmseal vs systemd-tpm2",
                 f"{ratio(x, y)} (+{x - y:.2f} s)" if x is not None and y is not None else "n/a"])
    guest = sorted(k for k in f if k.startswith("guest."))
    runs: dict[str, list[str]] = {}
    for k in guest:  # guest.py_start.run1_ms, … -> one row per measurement, runs in order
        m = re.fullmatch(r"guest\.(.+)\.run(\d+)_ms", k)
        if m:
            runs.setdefault(m.group(1), []).append(f"run {m.group(2)}: {f[k]}")
    for name, values in runs.items():
        rows.append([f"in the guest: {name} (ms)", ", ".join(values)])
    for k in guest:
        if not re.fullmatch(r"guest\.(.+)\.run(\d+)_ms", k):
            rows.append([f"in the guest: {k.removeprefix('guest.').removesuffix('_ms')} (ms)", str(f[k])])
    if not guest:
        rows.append(["Python start-up in the guest", "n/a"])
    return [*head, *table(["figure", "value"], rows), "",
            f"pytest: {f.get('_pytest_summary', 'n/a')}; times are from qemu start (host clock, TCG)."]


def creds_section(r: s.Results) -> list[str]:
    lines = ["## 6. Credentials", ""]
    if r.creds:
        lines += [*table(TIMING_HEADER, _timing_rows(r.creds, [])), ""]
    else:
        lines += ["systemd-creds anchor: not measured in this run.", ""]
    if isinstance(r.creds_load, str):
        lines.append(f"credential server under load: {r.creds_load}")
    elif r.creds_load:
        lines += ["Credential server (one process, TPM use serialized; clients connect as systemd does for",
                  "`LoadCredential=`, all at once):", ""]
        lines += table(["concurrent clients", "p50 ms", "p99 ms", "wall s", "requests/s", "served"],
                       [[str(x.clients), f"{x.p50_ms:.1f}", f"{x.p99_ms:.1f}", f"{x.wall_s:.2f}", f"{x.per_s:.1f}",
                         f"{x.ok}/{x.clients}"] for x in r.creds_load])  # fmt: skip
    return lines


# ------------------------------------------------------------------------------------------ meaning


def meaning(r: s.Results) -> list[str]:
    out = ["## What the figures mean / which targets are met", ""]

    def say(text: str) -> None:
        out.append(f"- {text}")

    u = _count(r, s.C_TPMSEAL_UNLOCK)
    if u is None:
        say(f"Unseal command count: n/a ({r.counts.get(s.C_TPMSEAL_UNLOCK)}).")
    else:
        met = u.total <= UNSEAL_TARGET
        exact = u.names == UNSEAL_NAMES
        say(f"**Unseal costs {u.total} TPM commands** (target {UNSEAL_TARGET}: {'met' if met else 'NOT met'}"
            f"{'' if exact else '; sequence differs from ' + ' '.join(UNSEAL_NAMES)}). On a real TPM at "
            f"{TPM_MS_PER_COMMAND[0]}-{TPM_MS_PER_COMMAND[1]} ms a command that is "
            f"≈ {u.total * TPM_MS_PER_COMMAND[0] / 1000:.2f}-{u.total * TPM_MS_PER_COMMAND[1] / 1000:.2f} s "
            "of TPM time.")
        for key, name in ((s.C_CLEVIS_PASS, "clevis luks pass"),
                          (s.C_CREDS_DECRYPT, "systemd-creds decrypt (PCR 7)")):
            a = _count(r, key)
            if a is not None:
                say(f"{name} sends {a.total} commands for its unseal: tpmseal sends {a.total / u.total:.1f}x fewer "
                    f"(≈ {(a.total - u.total) * TPM_MS_PER_COMMAND[0] / 1000:.2f}-"
                    f"{(a.total - u.total) * TPM_MS_PER_COMMAND[1] / 1000:.2f} s less on real hardware).")
    i = r.counts.get(s.C_INTEROP_UNLOCK)
    if isinstance(i, rig.Count):
        say(f"Interop: tpmseal opens a `systemd-tpm2` token made by systemd-cryptenroll with {i.total} commands "
            f"({' '.join(i.names) if i.total <= 8 else i.by_name}).")
    elif i is not None:
        say(f"Interop with systemd-tpm2 tokens: {i}.")
    leaks = {k.split(': ', 1)[1]: c.left_loaded for k, c in r.counts.items()
             if isinstance(c, rig.Count) and c.left_loaded}
    ours = [k for k in leaks if k.startswith("tpmseal")]
    others = [f"{k} left {', '.join(v)}" for k, v in leaks.items() if k not in ours]
    say("Handles left loaded in a TPM without resource manager: "
        + ("tpmseal leaves none" if not ours else "**tpmseal leaks** in " + ", ".join(ours))
        + "".join(f"; {o}" for o in others) + ".")
    e, sd = _timing(r.enroll, "tpmseal enroll"), _timing(r.enroll, "systemd-cryptenroll")
    if e is not None and sd is not None:
        q = e.median / sd.median
        say(f"**Enroll takes {q:.2f}x systemd-cryptenroll** (median {ms(e.median)} vs {ms(sd.median)} ms; target "
            f"≤ {ENROLL_TARGET}x: {'met' if q <= ENROLL_TARGET else 'NOT met'}). tpmseal's enroll includes proving "
            "the new keyslot by unsealing through the written token"
            + (f"; it runs cryptsetup {len(ec_runs)} times, systemd-cryptenroll links libcryptsetup"
               if (ec_runs := (_count(r, s.C_TPMSEAL_ENROLL) or rig.Count([], {}, [])).cryptsetup_runs) else "")
            + ".")
    else:
        say("Enroll ratio: n/a.")
    ec = _count(r, s.C_TPMSEAL_ENROLL)
    sdc = _count(r, s.C_SD_ENROLL)
    if ec is not None and sdc is not None:
        say(f"Enroll sends {ec.total} TPM commands (systemd-cryptenroll {sdc.total}"
            + (f", clevis luks bind {c.total}" if (c := _count(r, s.C_CLEVIS_BIND)) else "") + ").")
    tu, cp = _timing(r.unlock, "tpmseal test-unlock"), _timing(r.unlock, "clevis luks pass")
    if tu is not None and cp is not None:
        say(f"Unlock wall time on swtpm: tpmseal test-unlock {ratio(tu.median, cp.median)} clevis luks pass "
            f"({ms(tu.median)} vs {ms(cp.median)} ms). swtpm answers in microseconds, so this is mostly process "
            "start-up; on real hardware the command counts above dominate.")
    h, py = _timing(r.startup, "tpmseal --help"), _timing(r.startup, "python -c pass (same interpreter)")
    if h is not None and py is not None:
        say(f"`tpmseal --help` takes {ms(h.median)} ms, {ms(h.median - py.median)} ms above a bare `python -c pass`.")
    for label, prof in r.imports.items():
        if isinstance(prof, rig.ImportProfile):
            heavy = [k for k, v in prof.heavy.items() if v is not None]
            say(f"`{label}` imports " + (", ".join(heavy) if heavy else "none of the heavy packages")
                + f" ({', '.join(rig.HEAVY_IMPORTS)} checked).")
    if isinstance(r.vm, dict):
        x, y = r.vm.get("boot.tpmseal.unlock_s"), r.vm.get("boot.systemd_tpm2.unlock_s")
        if x is not None and y is not None:
            fx, fy = float(str(x)), float(str(y))
            say(f"Boot to unlocked volume: tpmseal {x} s vs systemd's own systemd-tpm2 unlock {y} s "
                f"({fx / fy:.2f}x, {fx - fy:+.2f} s) under TCG emulation; the difference is what tpmseal's agent "
                "path costs there, not a hardware figure.")
        else:
            say("Boot comparison: n/a (a VM figure is missing).")
        a, b = r.vm.get("size.with_tpmseal.zstd_bytes"), r.vm.get("size.without_tpmseal.zstd_bytes")
        if a is not None and b is not None:
            say(f"The tpmseal dracut module adds {(int(str(a)) - int(str(b))) / 1e6:.1f} MB (zstd) to the initramfs.")
    enc, dec = r.creds.get("tpmseal creds decrypt (PCR 7)"), r.creds.get("systemd-creds decrypt (PCR 7)")
    if isinstance(enc, rig.Timing) and isinstance(dec, rig.Timing) and enc.samples and dec.samples:
        say(f"Credentials (both bound to PCR 7): a whole `tpmseal creds decrypt` process takes "
            f"{enc.median * 1000:.1f} ms, {enc.median / dec.median:.2f}x `systemd-creds decrypt` "
            f"({dec.median * 1000:.1f} ms): Python start-up "
            "and imports; the server keeps them loaded and answers in the times of the load table.")
    tc, sc = r.counts.get(s.C_TS_CREDS_DECRYPT), r.counts.get(s.C_CREDS_DECRYPT)
    if isinstance(tc, rig.Count) and isinstance(sc, rig.Count):
        say(f"A credential decrypt bound to PCR 7 sends {tc.total} TPM commands (systemd-creds decrypt, PCR 7: "
            f"{sc.total}).")
    out += [f"- note: {n}" for n in r.notes]
    return out


def render(r: s.Results) -> str:
    parts = [header(r), counts_section(r), enroll_section(r), unlock_section(r), startup_section(r),
             vm_section(r), creds_section(r), meaning(r)]
    return "\n".join("\n".join(p) + "\n" for p in parts)
