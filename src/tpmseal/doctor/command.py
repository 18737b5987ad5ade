# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal tpm list|info`` and ``tpmseal doctor``: the CLI side.

Only argparse and the standard library at import time (``tpmseal --help`` builds these parsers);
tpm2-pytss and the rest are imported by the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tpmseal.cliopts import add_tpm2_device, print_json

if TYPE_CHECKING:
    from tpmseal.tpm.info import TpmInfo


def cmd_tpm_list(args: argparse.Namespace) -> int:
    from tpmseal.tpm.info import list_tpms

    tpms = list_tpms(args.sysfs)
    if args.json:
        print_json({"tpms": [t.to_json() for t in tpms]})
        return 0
    if not tpms:
        print("no TPM found", file=sys.stderr)
        return 0
    print(f"{'PATH':<14} {'RESOURCE MANAGER':<17} {'VERSION':<8} DRIVER")
    for t in tpms:
        version = (
            f"{t.version_major}.0" if t.version_major == 2 else (f"{t.version_major}.2" if t.version_major else "-")
        )
        print(f"{t.device:<14} {t.rm_device or '-':<17} {version:<8} {t.driver or '-'}")
    return 0


def _info_text(info: TpmInfo, show_pcrs: bool) -> None:
    yes = {True: "yes", False: "no"}
    lo = info.lockout
    srk = info.srk
    rows = [
        ("device", info.device),
        ("manufacturer", f"{info.manufacturer or '?'} ({info.manufacturer_id}), vendor string "
                         f"'{info.vendor_string}', vendor TPM type {info.vendor_tpm_type}"),
        ("firmware", f"{info.firmware_version} ({' '.join(info.firmware_raw)})"),
        ("specification", f"TPM {info.family}, level {info.spec_level}, revision {info.spec_revision} "
                          f"({info.spec_date})"),
        ("PCR banks", f"{', '.join(info.banks) or 'none'} active (implemented: {', '.join(info.banks_implemented)})"),
        ("algorithms", ", ".join(f"{k} {yes[v]}" for k, v in info.supports.items())),
        ("all algorithms", " ".join(info.algorithms)),
        ("ECC curves", " ".join(info.ecc_curves) or "none"),
        ("lockout", f"{lo.failed_tries} of {lo.max_tries} failed tries, one forgotten every {lo.recovery_time} s, "
                    f"lockout recovery {lo.lockout_recovery} s, "
                    f"{'IN LOCKOUT' if lo.in_lockout else 'not in lockout'}"),
        ("persistent", " ".join(info.persistent_handles) or "none"),
        ("SRK", f"{srk.handle}: "
                + (f"{srk.algorithm} storage key, name {srk.name}" if srk.usable
                   else (srk.problem or "absent") + (f" ({srk.algorithm})" if srk.algorithm else ""))),
    ]  # fmt: skip
    for k, v in rows:
        print(f"{k + ':':<16}{v}")
    if show_pcrs:
        for bank, values in info.pcrs.items():
            print(f"PCRs ({bank}):")
            for i, v in values.items():
                print(f"  {int(i):>2}: {v}")
    for a in info.advisories:
        label = "warning" if a.severity == "warn" else "note"
        print(f"{label}: {a.id}: {a.name}: {a.summary}", file=sys.stderr)
        print(f"  hint: {a.hint}; see {a.reference}", file=sys.stderr)


def cmd_tpm_info(args: argparse.Namespace) -> int:
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.info import read_info

    with open_tpm(args.tpm2_device) as esapi:
        info = read_info(esapi, args.tpm2_device)
    if args.json:
        print_json(info.to_json())
    else:
        _info_text(info, not args.no_pcrs)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import os

    from tpmseal.doctor import run_doctor
    from tpmseal.errors import UsageError

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: no such directory")
    rep = run_doctor(args.devices, args.tpm2_device, args.root, args.initrd)
    if args.json:
        print_json(rep.to_json())
        return rep.exit_code
    for c in rep.checks:
        print(c.line())
        if c.hint and c.status != "ok":
            print(f"      hint: {c.hint}")
    counts = {s: sum(1 for c in rep.checks if c.status == s) for s in ("ok", "warn", "fail")}
    print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)")
    return rep.exit_code


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``tpmseal tpm`` (list, info) and ``tpmseal doctor`` to the CLI's subcommands."""
    t = sub.add_parser(
        "tpm",
        help="list the TPMs and show what one can do",
        description="Inspect TPMs: the devices the kernel found, and a TPM's vendor, firmware, PCR banks, "
        "algorithms, dictionary-attack state and storage root key. See tpmseal-tpm(8).",
    )
    tsub = t.add_subparsers(dest="tpm_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", help="the TPM devices present, their drivers and resource managers")
    ls.add_argument("--sysfs", default="/sys", metavar="DIR", help="where sysfs is mounted (default /sys)")
    ls.add_argument("--json", action="store_true", help="print JSON (schema: tpmseal-tpm(8))")
    ls.set_defaults(func=cmd_tpm_list)
    i = tsub.add_parser("info", help="vendor, firmware, banks, algorithms, lockout state, SRK, PCRs")
    add_tpm2_device(i)
    i.add_argument("--no-pcrs", action="store_true", help="do not print the PCR values (text output)")
    i.add_argument("--json", action="store_true", help="print JSON (schema: tpmseal-tpm(8))")
    i.set_defaults(func=cmd_tpm_info)

    d = sub.add_parser(
        "doctor",
        help="check that the TPM, the enrolled volumes and the boot setup will unlock at the next boot",
        description="Check the TPM, every enrolled volume's tokens, crypttab, the kernel command line, the "
        "initramfs and the credential service; one line per check. Exit status: 0 all ok, 1 warnings, "
        "2 failures. See tpmseal-doctor(8).",
    )
    d.add_argument(
        "devices", metavar="DEVICE", nargs="*",
        help="only these LUKS2 devices or image files (default: every LUKS volume found)",
    )  # fmt: skip
    add_tpm2_device(d)
    d.add_argument("--root", default="/", metavar="DIR", help="the system tree whose configuration is checked")
    d.add_argument("--initrd", metavar="FILE", help="the initramfs to inspect (default: the running kernel's)")
    d.add_argument("--json", action="store_true", help="print JSON (schema: tpmseal-doctor(8))")
    d.set_defaults(func=cmd_doctor)
