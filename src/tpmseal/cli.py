# SPDX-License-Identifier: LGPL-2.1-or-later
"""The command line: argparse front end, --json output, one error handler, documented exit codes.

Heavy imports (tpm2-pytss, cryptography) happen inside the commands that need them, so
``tpmseal --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tpmseal import __version__, hardening
from tpmseal.cliopts import add_tpm2_device
from tpmseal.cliopts import print_json as _print_json
from tpmseal.config.command import register as register_config
from tpmseal.creds.command import register as register_creds
from tpmseal.doctor.command import register as register_doctor
from tpmseal.errors import ExitCode, TpmsealError, UsageError
from tpmseal.install_files import register as register_install
from tpmseal.repair import register as register_repair
from tpmseal.update.command import register as register_update

if TYPE_CHECKING:
    from tpmseal.inventory import TokenInfo
    from tpmseal.luks.volume import Header, Volume
    from tpmseal.secret import Secret
    from tpmseal.tpm.pcrs import PcrSelection
    from tpmseal.wipe import WipeSpec

log = logging.getLogger("tpmseal")

# Each adds its subcommand(s) to the parser; a module-level import, so that the initramfs's import
# closure (dracut/90tpmseal/python-closure.py) sees them.
COMMAND_REGISTRARS = (
    register_config,
    register_creds,
    register_repair,
    register_install,
    register_doctor,
    register_update,
)

EXIT_CODES_HELP = """exit codes:
  0 success          1 failure           2 usage error        3 volume problem
  4 no TPM           5 PCRs changed      6 wrong PIN/lockout  7 bad token
  8 refused (safety) 9 missing program  10 wrong unlock key  11 sealed by another TPM"""


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "yes", "true", "on"):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, not '{text}'")


def _unlock_key(args: argparse.Namespace) -> Any:
    from tpmseal.prompt import ask, read_key_file

    if args.unlock_key_file:
        return read_key_file(args.unlock_key_file)
    return ask(f"Passphrase for {args.device}: ")


def _pin_source(args: argparse.Namespace) -> Callable[[], bytearray]:
    """Asks once (terminal or stdin), then hands out copies the caller wipes. An empty answer (no PIN)
    is handed out as empty: the openers report PinRequired without sending anything to the TPM."""
    from tpmseal.prompt import ask_pin

    cache: list[Any] = []

    def get() -> bytearray:
        if not cache:
            cache.append(ask_pin(f"TPM2 PIN for {args.device}: "))
        return bytearray(cache[0].buffer)

    return get


def cmd_enroll(args: argparse.Namespace) -> int:
    from tpmseal.lock import volume_lock
    from tpmseal.luks.volume import Volume
    from tpmseal.tpm.pcrs import parse_pcrs
    from tpmseal.wipe import parse_wipe_spec

    volume = Volume(args.device)
    wipe_spec = parse_wipe_spec(args.wipe_slot) if args.wipe_slot else None
    signed = args.tpm2_public_key_pcrs is not None
    selection = parse_pcrs(args.tpm2_pcrs if args.tpm2_pcrs is not None else ("" if signed else "7"))
    if args.recovery_key and (args.tpm2_with_pin or args.replace):
        raise UsageError("--recovery-key cannot be combined with --tpm2-with-pin or --replace")
    if signed and (args.token_type == "systemd-tpm2" or args.recovery_key):
        raise UsageError("--tpm2-public-key-pcrs cannot be combined with --token-type=systemd-tpm2 or --recovery-key")
    if args.token_type == "systemd-tpm2" and (args.replace or args.wipe_slot or args.recovery_key):
        raise UsageError("--token-type=systemd-tpm2 cannot be combined with --replace, --wipe-slot or --recovery-key")
    volume.check_exists()  # fail early on a wrong device, before asking for secrets
    with volume_lock(volume.path):
        header = volume.header()
        with _unlock_key(args) as key:
            return _enroll_locked(args, volume, header, key, selection, wipe_spec)


def _enroll_locked(
    args: argparse.Namespace,
    volume: Volume,
    header: Header,
    key: Secret,
    selection: PcrSelection,
    wipe_spec: WipeSpec | None,
) -> int:
    """enroll, once the volume is locked and the unlock key is in hand."""
    from tpmseal.enroll import confirm_recovery, enroll_recovery, enroll_tpm
    from tpmseal.prompt import ask_new_pin

    if args.recovery_key:
        result, recovery = enroll_recovery(volume, key)
        with recovery:
            text = recovery.buffer.decode()
            if args.json:
                _print_json({**result.to_json(), "recovery_key": text})
            else:
                print("A recovery key was added. Write it down and keep it safe; it is shown only once:")
                print(f"\n    {text}\n")
                print(f"keyslot {result.keyslot}, token {result.token} ({result.type})")
            del text
            sys.stdout.flush()  # shown (or the write failed and raised): only then is it a way in
        confirm_recovery(volume, result)
        return 0
    pin = ask_new_pin() if args.tpm2_with_pin else None
    try:
        if args.token_type == "systemd-tpm2":
            from tpmseal.interop.systemd_tpm2 import enroll_systemd_tpm2

            result = enroll_systemd_tpm2(volume, key, args.tpm2_device, selection, pin)
        elif args.tpm2_public_key_pcrs is not None:
            from tpmseal.tpm.pcrs import parse_pcrs
            from tpmseal.update.signed import enroll_signed

            fixed = selection if args.tpm2_pcrs is not None else None
            result = enroll_signed(
                volume, key, args.tpm2_device, parse_pcrs(args.tpm2_public_key_pcrs), fixed, pin,
                key_path=args.private_key, replace=args.replace, wipe_spec=wipe_spec, force=args.force,
                volume_binding=not args.no_volume_binding, header=header,
            )  # fmt: skip
        else:
            result = enroll_tpm(
                volume, key, args.tpm2_device, selection, pin, args.replace, wipe_spec, args.force,
                volume_binding=not args.no_volume_binding, header=header,
            )  # fmt: skip
    finally:
        if pin is not None:
            pin.close()
    result.check_strength()
    for line in result.warnings:
        print(f"tpmseal: warning: {line}", file=sys.stderr)
    if args.json:
        _print_json(result.to_json())
    else:
        for line in result.cleaned_up:
            print(f"cleaned up: {line}")
        print(
            f"enrolled {result.device}: keyslot {result.keyslot}, token {result.token} ({result.type}), "
            f"PCRs {result.pcrs or 'none'} ({result.pcr_bank}){', with PIN' if result.pin else ''}"
        )
        if result.verified == "key-only":
            print(
                "note: sealed for PCR values that are not the current ones; the TPM will unseal it "
                "once the PCRs reach them"
            )
        if result.replaced_keyslots:
            print(f"replaced: keyslot(s) {', '.join(map(str, result.replaced_keyslots))} removed")
        if result.wiped_keyslots:
            print(f"wiped: keyslot(s) {', '.join(map(str, result.wiped_keyslots))}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tpmseal.inventory import report
    from tpmseal.lock import volume_read_lock
    from tpmseal.luks.volume import Volume

    volume = Volume(args.device)
    volume.check_exists()
    with volume_read_lock(volume.path):
        rep = report(volume, volume.header(), None if args.no_tpm else args.tpm2_device)
    if args.json:
        _print_json(rep.to_json())
        return 0
    print(f"{'SLOT':<5} {'KIND':<10} {'TOKENS':<8} KDF")
    for slot in rep.keyslots:
        print(f"{slot.keyslot:<5} {slot.kind:<10} {','.join(map(str, slot.tokens)) or '-':<8} {slot.kdf}")
    if rep.tokens:
        print(f"\n{'TOKEN':<6} {'TYPE':<16} {'KEYSLOTS':<9} DETAILS")
        for t in rep.tokens:
            detail = ""
            if t.error:
                detail = f"unreadable: {t.error}"
            elif t.pcrs is not None:
                state = {
                    True: "PCRs match",
                    False: f"PCR(s) {','.join(map(str, t.changed_pcrs))} changed",
                    None: "PCRs not checked",
                }[t.policy_satisfied]
                detail = f"PCRs {t.pcrs or 'none'} ({t.pcr_bank}){', PIN' if t.pin else ''}; {state}"
                if t.weak_binding:
                    detail += f"; WEAK: {t.weak_binding}"
                if t.opens_keyslot is False:
                    detail += "; DEAD: the key it unseals does not open its keyslot"
            if t.orphan:
                detail = (detail + "; " if detail else "") + "orphan: left by an interrupted operation"
            print(f"{t.token:<6} {t.type:<16} {','.join(map(str, t.keyslots)) or '-':<9} {detail}")
            for line in _seal_lines(t):
                print(f"{'':<33}{line}")
    kinds = {k.keyslot: k.kind for k in rep.keyslots}
    for orphan in rep.orphan_keyslots:
        if kinds.get(orphan) == "unconfirmed":
            print(
                f"warning: keyslot {orphan} holds a recovery key that was never shown (its command was "
                "interrupted): it is not a way in; 'tpmseal repair' removes it, then enroll a new recovery key",
                file=sys.stderr,
            )
        else:
            print(
                f"warning: keyslot {orphan} is named by an interrupted enrollment and no token: not a way in; "
                "'tpmseal repair' removes it if it proves to be tpmseal's (its key is lost), else reports it",
                file=sys.stderr,
            )
    for t in rep.tokens:
        if t.opens_keyslot is False:
            print(
                f"warning: token {t.token} is dead: the key it unseals does not open keyslot(s) "
                f"{', '.join(map(str, t.keyslots))}; re-enroll ('tpmseal enroll --replace')",
                file=sys.stderr,
            )
    for t in rep.tokens:
        if t.volume_binding is False:
            print(
                f"warning: token {t.token} is not bound to PCR 15 (--no-volume-binding): a volume swapped in "
                "with a copy of it could boot code that unseals it",
                file=sys.stderr,
            )
        if t.weak_binding:
            from tpmseal.tpm.strength import MESSAGES, advice

            print(f"warning: token {t.token} is {MESSAGES[t.weak_binding]}; {advice(bool(t.pin))}", file=sys.stderr)
    for t in rep.tokens:
        for w in _seal_warnings(t):
            print(f"warning: token {t.token} {w}", file=sys.stderr)
    if rep.tpm_error:
        print(f"warning: PCR state not checked: {rep.tpm_error}", file=sys.stderr)
    return 0


def _seal_lines(t: TokenInfo) -> list[str]:
    """Every seal of a tpmseal token and every approval of an authorize seal (list's text output)."""
    if len(t.seal_details) < 2 and all(s.kind == "pcr" for s in t.seal_details):
        return []  # one plain seal: the token line says it all
    out = []
    for s in t.seal_details:
        pin = ", PIN" if s.pin else ""
        if s.kind == "pcr":
            out.append(f"seal {s.index} '{s.label}': PCRs {s.pcrs or 'none'}{pin}")
            continue
        enrolled = f" (PCRs {s.enrolled_pcrs})" if s.enrolled_pcrs else ""
        fixed = f", fixed PCRs {s.pcrs}" if s.pcrs else ""
        out.append(f"seal {s.index} '{s.label}': signed policy, key {(s.key_name or '')[:12]}…, "
                   f"description {s.description}{enrolled}{fixed}{pin}")  # fmt: skip
        for a in s.approvals:
            state = "signature ok" if a.signature_valid else "SIGNATURE DOES NOT VERIFY"
            if a.covers_enrolled_pcrs is False:
                state += ", NOT THE ENROLLED PCRS"
            out.append(f"  approved '{a.label}': PCRs {a.pcrs}; {state}")
    return out


def _seal_warnings(t: TokenInfo) -> list[str]:
    out = []
    for s in t.seal_details:
        if s.kind != "authorize":
            continue
        if s.description == "missing":
            out.append(f"seal {s.index} has no signed description: reseal refuses it; re-enroll with --replace")
        elif s.description == "invalid":
            out.append(f"seal {s.index}: its description does not verify: the header was edited")
        forged = [a.label for a in s.approvals if not a.signature_valid]
        if forged:
            out.append(f"seal {s.index}: approval(s) {', '.join(forged)}: the signature does not verify "
                       "(the TPM refuses it, reseal drops it)")  # fmt: skip
        other = [a.label for a in s.approvals if a.signature_valid and a.covers_enrolled_pcrs is False]
        if other:
            out.append(f"seal {s.index}: approval(s) {', '.join(other)} bind other PCRs than the enrolled ones: "
                       "reseal drops them, but the TPM accepts them; re-enroll with --replace")  # fmt: skip
    return out


def _consistent(volume: Volume, read: Callable[[Header], Any], tries: int = 3) -> Any:
    """``read(header)``, again if another program (which does not take tpmseal's lock) wrote the header
    meanwhile: a result is returned only from a header that did not change under it."""
    from tpmseal.errors import CommandFailed, HeaderChanged

    for _ in range(tries):
        seq = volume.seqid()
        try:
            result = read(volume.header())
        except CommandFailed:
            if volume.seqid() == seq:
                raise
            continue
        if volume.seqid() == seq:
            return result
    raise HeaderChanged(f"the LUKS2 header of {volume.path} kept changing while tpmseal read it", "try again")


def cmd_test_unlock(args: argparse.Namespace) -> int:
    from tpmseal import errors
    from tpmseal.inventory import run_test_unlock
    from tpmseal.lock import volume_read_lock
    from tpmseal.luks.volume import Volume

    volume = Volume(args.device)
    volume.check_exists()
    pin = _pin_source(args)
    with volume_read_lock(volume.path):
        results = _consistent(volume, lambda header: run_test_unlock(volume, header, args.tpm2_device, pin))
    if args.json:
        _print_json({"device": volume.path, "results": [asdict(r) for r in results]})
    else:
        for r in results:
            ks = ",".join(map(str, r.keyslots)) or "-"
            status = "ok" if r.ok else f"FAILED: {r.error}"
            print(f"token {r.token} ({r.type}, keyslot {ks}): {status}")
    if not results:
        raise TpmsealError(f"{volume.path} has no TPM token", "enroll one with 'tpmseal enroll'")
    if any(r.ok for r in results):
        return 0
    first = results[0].error_kind or ""
    cls = getattr(errors, first, None)
    code = cls.exit_code if isinstance(cls, type) and issubclass(cls, TpmsealError) else ExitCode.FAILURE
    return int(code)


def cmd_wipe_slot(args: argparse.Namespace) -> int:
    from tpmseal.lock import volume_lock
    from tpmseal.luks.volume import Volume
    from tpmseal.wipe import parse_wipe_spec, select, wipe

    volume = Volume(args.device)
    spec = parse_wipe_spec(args.wipe_slot)
    with volume_lock(volume.path):
        header = volume.header()
        wiped = wipe(volume, header, select(volume, header, spec), args.tpm2_device, args.force)
    if args.json:
        _print_json({"device": volume.path, "wiped_keyslots": wiped})
    else:
        print(f"wiped keyslot(s) {', '.join(map(str, wiped))}" if wiped else "nothing to wipe")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from tpmseal import errors
    from tpmseal.boot.unlock import unlock
    from tpmseal.luks.volume import Volume

    volume = Volume(args.device)
    name = args.name or f"luks-{volume.uuid()}"
    outcome = unlock(volume, name, args.tpm2_device, None if args.headless else _pin_source(args))
    print(f"tpmseal: {outcome.summary()}", file=sys.stderr)
    if outcome.found is not None and not args.json:
        print(f"/dev/mapper/{name}")
    if args.json:
        _print_json({
            "device": volume.path, "name": name, "unlocked": outcome.found is not None,
            "token": outcome.found.token if outcome.found else None,
            "attempts": [asdict(a) for a in outcome.attempts],
        })  # fmt: skip
    if outcome.found is not None:
        return 0
    if not outcome.attempts:
        raise TpmsealError(f"{volume.path} has no TPM token", "enroll one with 'tpmseal enroll'")
    cls = getattr(errors, outcome.attempts[0].error_kind or "", None)
    return int(cls.exit_code if isinstance(cls, type) and issubclass(cls, TpmsealError) else ExitCode.FAILURE)


def cmd_askpass_agent(args: argparse.Namespace) -> int:
    from tpmseal.boot.agent import serve

    return serve(args.tpm2_device, args.ask_dir, args.timeout, args.idle_exit)


def cmd_migrate(args: argparse.Namespace) -> int:
    from tpmseal.lock import volume_lock
    from tpmseal.luks.volume import Volume
    from tpmseal.migrate import migrate
    from tpmseal.tpm.pcrs import parse_pcrs

    volume = Volume(args.device)
    selection = parse_pcrs(args.tpm2_pcrs) if args.tpm2_pcrs is not None else None
    with volume_lock(volume.path):
        r = migrate(
            volume,
            args.source,
            args.tpm2_device,
            selection,
            args.keep,
            _pin_source(args),
            volume_binding=not args.no_volume_binding,
        )
    _warn_weak(r.token, r.pcrs, r.pin)
    if args.json:
        _print_json(asdict(r))
    else:
        print(
            f"migrated {r.device} from {r.source_type} token {r.source_token}: tpmseal token {r.token}, "
            f"keyslot {r.keyslot}, PCRs {r.pcrs or 'none'} ({r.pcr_bank})"
        )
        if r.removed_keyslots:
            print(f"removed: {r.source_type} keyslot(s) {', '.join(map(str, r.removed_keyslots))}")
        elif r.kept:
            print(f"kept the {r.source_type} token and its keyslot (--keep)")
    return 0


def _warn_weak(token: int, pcrs: str, pin: bool) -> None:
    from tpmseal.tpm.strength import advice, weakness

    w = weakness(int(i) for i in pcrs.split("+") if i)
    if w is not None:
        print(f"tpmseal: warning: token {token} is {w.message}; {advice(pin)}", file=sys.stderr)


def _boot_step_overtime(_sig: int, _frame: object) -> None:
    from tpmseal.errors import TpmUnavailable

    raise TpmUnavailable("the TPM did not finish the measurement within the time limit")


def cmd_measure_volumes(args: argparse.Namespace) -> int:
    from tpmseal.boot.measure import PRIVATE_NODE, boot_device, measure, tpm_expected, unlocked_volumes

    device = args.tpm2_device
    if args.boot:
        # the initramfs step: fail closed, within a time limit (a TPM that stops answering must not hang
        # the boot; the unit or hook stops the boot when this fails)
        signal.signal(signal.SIGALRM, _boot_step_overtime)
        signal.alarm(max(1, int(args.time_limit)))
        if device in ("", "auto"):
            why = tpm_expected()
            if why is None:
                print("tpmseal: this machine has no TPM: nothing to measure into PCR 15", file=sys.stderr)
                return 0
            try:
                device = boot_device(wait=args.wait)
            except TpmsealError as e:
                raise type(e)(f"{e.message} ({why})", e.hint) from None
    volumes = unlocked_volumes()
    try:
        n = measure(device, volumes, args.pcr)
    finally:
        if device == PRIVATE_NODE:
            os.unlink(device)
    names = ", ".join(f"{v.name} ({v.uuid})" for v in volumes) or "no volume"
    print(
        f"tpmseal: measured {names} into PCR {args.pcr} ({n} events); TPM tokens bound to it are closed "
        "for the rest of this boot",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tpmseal.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpmseal",
        description="Seal LUKS2 keys to a TPM 2.0 and unlock volumes with them.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tpmseal {__version__}")
    p.add_argument("--debug", action="store_true", help="log commands run and show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def device(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("device", metavar="DEVICE", help="LUKS2 block device or image file")

    tpm = add_tpm2_device

    def as_json(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print JSON (schema: docs/json-output.md)")

    e = sub.add_parser("enroll", help="seal a new key to the TPM (or add a recovery key)")
    device(e)
    tpm(e)
    e.add_argument(
        "--tpm2-pcrs",
        default=None,
        metavar="PCRS",
        help="PCRs to bind to: 7+11, 7:sha256, 7:sha256=HEX (default 7; '' for none)",
    )
    e.add_argument(
        "--tpm2-public-key-pcrs",
        default=None,
        metavar="PCRS",
        help="PCRs bound through signed policies (PolicyAuthorize), so 'tpmseal reseal' can approve new values",
    )
    e.add_argument(
        "--private-key",
        default="/etc/tpmseal/policy-key.pem",
        metavar="FILE",
        help="policy signing key for --tpm2-public-key-pcrs (created if missing)",
    )
    e.add_argument(
        "--tpm2-with-pin",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        metavar="BOOL",
        help="also require a PIN (asked on the terminal, or read from stdin)",
    )
    e.add_argument("--unlock-key-file", metavar="FILE", help="existing key file of the volume")
    e.add_argument("--recovery-key", action="store_true", help="add a generated recovery key instead")
    e.add_argument("--replace", action="store_true", help="rotate an existing tpmseal token")
    e.add_argument("--wipe-slot", metavar="SLOTS", help="after enrolling, wipe these keyslots")
    e.add_argument("--force", action="store_true", help="allow wiping the last working keyslot")
    e.add_argument(
        "--no-volume-binding",
        action="store_true",
        help="do not bind to PCR 15 at its boot-time value (needed for disks opened after boot)",
    )
    e.add_argument(
        "--token-type",
        choices=("tpmseal-tpm2", "systemd-tpm2"),
        default="tpmseal-tpm2",
        help="token format: tpmseal's own, or systemd's (opened by stock systemd-cryptsetup)",
    )
    as_json(e)
    e.set_defaults(func=cmd_enroll)

    ls = sub.add_parser("list", help="show keyslots, tokens and whether the PCR policies still hold")
    device(ls)
    tpm(ls)
    ls.add_argument("--no-tpm", action="store_true", help="do not read PCRs")
    as_json(ls)
    ls.set_defaults(func=cmd_list)

    t = sub.add_parser("test-unlock", help="unseal each TPM token and test its key (maps nothing)")
    device(t)
    tpm(t)
    as_json(t)
    t.set_defaults(func=cmd_test_unlock)

    w = sub.add_parser("wipe-slot", help="remove keyslots and their tokens, never the last way in")
    device(w)
    tpm(w)
    w.add_argument(
        "--wipe-slot",
        required=True,
        metavar="SLOTS",
        help="all, empty, password, recovery, tpm2, or keyslot numbers, comma-separated",
    )
    w.add_argument("--force", action="store_true", help="allow wiping the last working keyslot")
    as_json(w)
    w.set_defaults(func=cmd_wipe_slot)

    m = sub.add_parser("migrate", help="replace a systemd-tpm2 or clevis token by a tpmseal token")
    device(m)
    tpm(m)
    m.add_argument(
        "--from", dest="source", required=True, choices=("systemd-tpm2", "clevis"), help="the kind of token to migrate"
    )
    m.add_argument("--tpm2-pcrs", default=None, metavar="PCRS", help="PCRs for the new token (default: the old one's)")
    m.add_argument("--keep", action="store_true", help="keep the old token and its keyslot")
    m.add_argument("--no-volume-binding", action="store_true", help="do not bind the new token to PCR 15")
    as_json(m)
    m.set_defaults(func=cmd_migrate)

    u = sub.add_parser("unlock", help="unseal a volume's key and map it (/dev/mapper/NAME)")
    device(u)
    u.add_argument("name", metavar="NAME", nargs="?", help="mapping name (default luks-UUID)")
    tpm(u)
    u.add_argument("--headless", action="store_true", help="never ask for a PIN; skip PIN tokens")
    as_json(u)
    u.set_defaults(func=cmd_unlock)

    a = sub.add_parser("askpass-agent", help="answer disk passphrase requests from the TPM (initramfs)")
    tpm(a)
    a.add_argument("--ask-dir", default="/run/systemd/ask-password", metavar="DIR", help="where requests appear")
    a.add_argument("--timeout", type=float, default=30.0, metavar="SEC", help="time limit per request")
    a.add_argument(
        "--idle-exit", type=float, default=None, metavar="SEC", help="exit after SEC idle (default: run until stopped)"
    )
    a.set_defaults(func=cmd_askpass_agent)

    mv = sub.add_parser("measure-volumes", help="extend PCR 15 with the unlocked volumes (end of initramfs unlock)")
    tpm(mv)
    mv.add_argument("--pcr", type=int, default=15, choices=range(24), metavar="N", help="the PCR to extend (15)")
    mv.add_argument(
        "--boot",
        action="store_true",
        help="the initramfs step: no TPM at all is success; otherwise fail unless PCR 15 moved (fail closed)",
    )
    mv.add_argument(
        "--wait", type=float, default=10.0, metavar="SEC", help="with --boot: wait this long for the TPM device (10)"
    )
    mv.add_argument(
        "--time-limit", type=float, default=60.0, metavar="SEC", help="with --boot: give up after SEC in all (60)"
    )
    mv.set_defaults(func=cmd_measure_volumes)

    # commands that live in their own packages (imported at the top: they import nothing heavy)
    for register in COMMAND_REGISTRARS:
        register(sub)

    d = sub.add_parser("demo", help="run the whole job on a private swtpm and a LUKS2 image file")
    d.add_argument("--keep", action="store_true", help="keep the temporary directory")
    d.set_defaults(func=cmd_demo)
    return p


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="tpmseal: %(message)s",
        stream=sys.stderr,
    )
    # Before any subcommand reads a passphrase, PIN, key or credential: no core dumps, no ptrace by the
    # same uid, memory locked where the kernel allows it (tpmseal.hardening; never fails).
    hardening.harden()
    import signal

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIGTERM unwinds like Ctrl-C: roll-backs run
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.func(args))
    except TpmsealError as e:
        if args.debug:
            log.exception("error")
        print(f"tpmseal: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"tpmseal: hint: {e.hint}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("tpmseal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
