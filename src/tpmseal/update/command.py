# SPDX-License-Identifier: LGPL-2.1-or-later
"""CLI of updates without lockout: ``pcrs``, ``predict``, ``reseal``, ``check-reboot``.

Wired into tpmseal.cli.build_parser() by ``register(sub)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

from tpmseal.cliopts import add_tpm2_device
from tpmseal.errors import ExitCode, TpmsealError, TpmUnavailable, UsageError
from tpmseal.update.eventlog import DEFAULT_PATH, EventLog
from tpmseal.update.predict import NOT_IN_LOG, Prediction

log = logging.getLogger("tpmseal")


def _json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _tpm_pcrs(device: str | None, bank: str) -> dict[int, bytes] | None:
    """Every PCR of ``bank`` from the TPM, or None (with a warning) when there is no TPM."""
    if device is None:
        return None
    from tpmseal.tpm.device import open_tpm
    from tpmseal.update.signed import read_pcr_values

    try:
        with open_tpm(device) as esapi:
            return read_pcr_values(esapi, bank, set(range(24)))
    except TpmUnavailable as e:
        log.warning("PCRs not read from a TPM: %s", e)
        return None


def _load_log(path: str | None) -> EventLog:
    from tpmseal.update.eventlog import load

    return load(path or DEFAULT_PATH)


def _mismatches(log_values: dict[int, bytes], tpm: dict[int, bytes] | None) -> list[int]:
    if tpm is None:
        return []
    return sorted(i for i, v in log_values.items() if tpm.get(i) != v)


# --------------------------------------------------------------------------- pcrs


def cmd_pcrs(args: argparse.Namespace) -> int:
    evlog = _load_log(args.eventlog)
    replayed = evlog.replay(args.bank)
    current = None if args.no_tpm else _tpm_pcrs(args.tpm2_device, args.bank)
    bad = _mismatches(replayed, current)
    rows: list[dict[str, Any]] = []
    for i in range(24):
        events = evlog.by_pcr(i)
        rows.append({
            "pcr": i,
            "current": current[i].hex() if current and i in current else None,
            "replayed": replayed[i].hex() if i in replayed else None,
            "match": None if current is None or i not in replayed else current.get(i) == replayed[i],
            "events": [
                {"number": e.number, "type": e.type_name, "digest": e.digests[args.bank].hex(),
                 "description": e.describe()}
                for e in events
            ],
        })  # fmt: skip
    if args.json:
        _json({"bank": args.bank, "eventlog": args.eventlog or DEFAULT_PATH, "spec": evlog.spec,
               "log_trusted": None if current is None else not bad, "mismatched_pcrs": bad, "pcrs": rows})  # fmt: skip
    else:
        for r in rows:
            if r["current"] is None and r["replayed"] is None:
                continue
            state = {True: "replay matches", False: "REPLAY MISMATCH", None: "not checked"}[r["match"]]
            if r["replayed"] is None:
                state = "not in the event log (extended after boot)"
            shown = r["current"] or r["replayed"]
            print(f"PCR {r['pcr']:2}: {shown}  {state if r['current'] else 'replayed; ' + state}")
            if r["match"] is False:
                print(f"        replayed {r['replayed']}")
            for e in r["events"]:
                print(f"        #{e['number']:<3} {e['type']:<34} {e['digest'][:16]}… {e['description']}")
        if bad:
            print(f"warning: the event log does not replay to PCR(s) {', '.join(map(str, bad))}: "
                  "it cannot be trusted, and nothing predicted from it", file=sys.stderr)  # fmt: skip
    return int(ExitCode.FAILURE) if bad else 0


# --------------------------------------------------------------------------- predict


def _predict(args: argparse.Namespace, evlog: EventLog) -> Prediction:
    from tpmseal.update.predict import file_digest, predict

    if args.initrd is None and args.cmdline is None and args.kernel is None:
        return predict(evlog, args.bank)
    try:
        initrd = file_digest(args.initrd) if args.initrd else None
        if args.kernel:
            with open(args.kernel, "rb"):
                pass
    except OSError as e:
        raise UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    return predict(evlog, args.bank, initrd_digest=initrd, cmdline=args.cmdline, kernel_changed=bool(args.kernel))


def _live_check(args: argparse.Namespace, evlog: EventLog, pred: Prediction) -> list[str]:
    """With the live event log: the log must replay to the TPM's PCRs, and the current /proc/cmdline to
    the logged command-line event. Returns warnings."""
    from tpmseal.update.predict import self_check

    if args.eventlog not in (None, DEFAULT_PATH):
        return [f"event log {args.eventlog} given: not checked against this machine's TPM"]
    out = []
    current = _tpm_pcrs(getattr(args, "tpm2_device", "auto"), args.bank)
    bad = _mismatches(evlog.replay(args.bank), current)
    if bad:
        raise TpmsealError(
            f"the event log does not replay to the TPM's PCR(s) {', '.join(map(str, bad))}: "
            "nothing can be predicted from it",
            "see 'tpmseal pcrs'",
        )
    try:
        with open("/proc/cmdline", encoding="utf-8") as f:
            ok = self_check(evlog, f.read().rstrip("\n"), args.bank)
    except OSError:
        ok = None
    if ok is False:
        out.append("the logged command-line event is not the digest of /proc/cmdline: PCR 9 predictions may be wrong")
    return out


def _prediction_json(pred: Prediction) -> dict[str, Any]:
    return {
        "bank": pred.bank,
        "pcrs": {
            str(i): {"value": pred.values[i].hex() if i in pred.values else None, "status": pred.status[i]}
            for i in range(24)
            if pred.status[i] != NOT_IN_LOG or i in pred.values
        },
        "replaced": pred.replaced,
        "notes": pred.notes,
    }


def cmd_predict(args: argparse.Namespace) -> int:
    evlog = _load_log(args.eventlog)
    pred = _predict(args, evlog)
    warnings = _live_check(args, evlog, pred)
    if args.json:
        _json({**_prediction_json(pred), "warnings": warnings})
        return 0
    for i in range(24):
        if pred.status[i] == NOT_IN_LOG:
            continue
        value = pred.values[i].hex() if i in pred.values else "-" * 16
        print(f"PCR {i:2}: {value}  {pred.status[i]}")
    for r in pred.replaced:
        print(f"replaced {r}")
    for n in [*pred.notes, *warnings]:
        print(f"note: {n}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- reseal, check-reboot


def _devices(args: argparse.Namespace) -> list[str]:
    devices = list(args.device)
    if args.all:
        from tpmseal.config.crypttab import parse

        try:
            with open("/etc/crypttab", encoding="utf-8") as f:
                tab = parse(f.read())
        except FileNotFoundError:
            tab = None
        for line in tab.entries() if tab else []:
            entry = line.entry
            if entry is None:
                continue
            uuid = entry.uuid()
            devices.append(f"/dev/disk/by-uuid/{uuid}" if uuid else entry.device)
    if not devices:
        raise UsageError("name a DEVICE, or --all for every volume in /etc/crypttab")
    return devices


def _signed_devices(devices: list[str]) -> list[str]:
    """Of ``devices``, those with a signed-policy token (for --all, others are skipped silently)."""
    from tpmseal.luks.volume import Volume
    from tpmseal.update.reseal import signed_tokens

    out = []
    for d in devices:
        try:
            if signed_tokens(Volume(d).header()):
                out.append(d)
        except TpmsealError as e:
            log.warning("%s: %s", d, e)
    return out


def _tpm_or_none(device: str) -> str | None:
    from tpmseal.tpm.device import tcti_for

    try:
        tcti_for(device)
    except TpmUnavailable as e:
        log.warning("signatures not checked by a TPM: %s", e)
        return None
    return device


def cmd_reseal(args: argparse.Namespace) -> int:
    from tpmseal.luks.volume import Volume
    from tpmseal.update.reseal import approve, cleanup
    from tpmseal.update.signed import CURRENT, NEXT_BOOT, load_policy_key

    modes = [m for m in ("next_boot", "current", "cleanup") if getattr(args, m)]
    if len(modes) != 1:
        raise UsageError("give exactly one of --next-boot, --current, --cleanup")
    if not args.next_boot and (args.kernel or args.initrd or args.cmdline is not None or args.eventlog):
        raise UsageError("--kernel, --initrd, --cmdline and --eventlog go with --next-boot")
    devices = _devices(args)
    if args.all:
        devices = _signed_devices(devices)
    results: list[dict[str, Any]] = []
    key = load_policy_key(args.private_key)  # cleanup too: it trusts only what verifies under this key
    if args.cleanup:
        from tpmseal.tpm.device import open_tpm
        from tpmseal.update.signed import read_pcr_values

        with open_tpm(args.tpm2_device) as esapi:
            current = read_pcr_values(esapi, args.bank, set(range(24)))
        for d in devices:
            results += [{"device": d, **asdict(c)} for c in cleanup(Volume(d), current, key)]
    else:
        statuses: dict[int, str] | None = None
        if args.next_boot:
            evlog = _load_log(args.eventlog)
            pred = _predict(args, evlog)
            for w in _live_check(args, evlog, pred):
                log.warning("%s", w)
            values, statuses = dict(pred.values), dict(pred.status)
            label = NEXT_BOOT
        else:
            from tpmseal.tpm.device import open_tpm
            from tpmseal.update.signed import read_pcr_values

            with open_tpm(args.tpm2_device) as esapi:
                values = read_pcr_values(esapi, args.bank, set(range(24)))
            label = CURRENT
        tpm = _tpm_or_none(args.tpm2_device)
        for d in devices:
            results += [{"device": d, **asdict(c)} for c in approve(Volume(d), tpm, key, values, label, statuses)]
    if args.json:
        _json({"results": results})
    else:
        for r in results:
            extra = f" ({r['detail']})" if r["detail"] else ""
            print(f"{r['device']}: token {r['token']} seal {r['index']} '{r['seal']}': {r['action']}; "
                  f"approved: {', '.join(r['approvals'])}{extra}")  # fmt: skip
    refused = [r for r in results if r["action"] == "refused"]
    if refused:
        from tpmseal.update.description import SealUnauthenticated

        raise SealUnauthenticated(
            f"{len(refused)} seal(s) refused, nothing signed for them: "
            + "; ".join(f"{r['device']}: {r['detail']}" for r in refused)
        )
    return 0


def cmd_check_reboot(args: argparse.Namespace) -> int:
    from tpmseal.luks.volume import Volume
    from tpmseal.update.reseal import check

    evlog = _load_log(args.eventlog)
    pred = _predict(args, evlog)
    warnings = _live_check(args, evlog, pred)
    verdicts = []
    for d in _devices(args):
        verdicts += check(d, Volume(d).header(), dict(pred.values), dict(pred.status))
    ok = all(v.will_unlock for v in verdicts)
    if args.json:
        _json({"will_unlock": ok, "volumes": [asdict(v) for v in verdicts], "warnings": warnings,
               "prediction": _prediction_json(pred)})  # fmt: skip
    else:
        for v in verdicts:
            if v.will_unlock:
                print(f"{v.device}: token {v.token}: will unlock (approved policy '{v.approval}')")
            else:
                print(f"{v.device}: token {v.token}: will not unlock: {'; '.join(v.reasons) or 'no seal matches'}")
        for w in [*pred.notes, *warnings]:
            print(f"note: {w}", file=sys.stderr)
    return 0 if ok else int(ExitCode.POLICY_MISMATCH)


# --------------------------------------------------------------------------- parsers


def register(sub: Any) -> None:
    tpm = add_tpm2_device

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--eventlog", metavar="FILE", help=f"the TCG event log (default {DEFAULT_PATH})")
        sp.add_argument("--bank", default="sha256", choices=("sha1", "sha256", "sha384", "sha512"),
                        help="PCR bank (sha256)")  # fmt: skip
        sp.add_argument("--json", action="store_true", help="print JSON")

    def files(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--kernel", metavar="FILE", help="the kernel image of the next boot")
        sp.add_argument("--initrd", metavar="FILE", help="the initramfs of the next boot")
        sp.add_argument(
            "--cmdline", metavar="STRING", help="the next boot's kernel command line, exactly as in its /proc/cmdline"
        )

    def devices(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("device", metavar="DEVICE", nargs="*", help="LUKS2 block device or image file")
        sp.add_argument("--all", action="store_true", help="every volume in /etc/crypttab")

    p = sub.add_parser("pcrs", help="show PCRs, the event log's replay and the events behind each PCR")
    common(p)
    tpm(p)
    p.add_argument("--no-tpm", action="store_true", help="do not read the TPM; show the replay only")
    p.set_defaults(func=cmd_pcrs)

    pr = sub.add_parser("predict", help="predict the PCRs of the next boot from new kernel/initramfs/command line")
    files(pr)
    common(pr)
    tpm(pr)
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("reseal", help="approve a predicted boot state for signed-policy tokens (no key needed)")
    devices(r)
    r.add_argument("--next-boot", action="store_true", help="approve the state predicted for the given files")
    r.add_argument("--current", action="store_true", help="approve the current boot state (PCR 15 at zeros)")
    r.add_argument("--cleanup", action="store_true", help="remove approvals that do not match the booted state")
    r.add_argument("--private-key", metavar="FILE", default="/etc/tpmseal/policy-key.pem",
                   help="the policy signing key (/etc/tpmseal/policy-key.pem)")  # fmt: skip
    files(r)
    common(r)
    tpm(r)
    r.set_defaults(func=cmd_reseal)

    c = sub.add_parser("check-reboot", help="say whether each volume will unlock in the predicted next boot")
    devices(c)
    files(c)
    common(c)
    tpm(c)
    c.set_defaults(func=cmd_check_reboot)
