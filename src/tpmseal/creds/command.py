# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal creds``: encrypt, decrypt, inspect, install, uninstall and serve service credentials.

Only argparse is imported here at module level: ``tpmseal --help`` builds this parser, and must not pay
for tpm2-pytss, cryptography or jinja2. The handlers import what they need.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tpmseal.cliopts import add_tpm2_device

# What a credential is bound to when --tpm2-pcrs is not given: PCR 7, the Secure Boot state, as
# systemd-creds does. Not PCR 15: credentials are decrypted after boot, when the initramfs has already
# extended it (a zero value would never hold again). See tpmseal-creds(8), "Choosing PCRs".
DEFAULT_PCRS = "7"


def _bool_off(text: str | None) -> bool:
    return text is not None and text.strip().lower() not in ("0", "no", "false", "off")


def _read_secret(path: str) -> Any:
    """The secret to encrypt, from a file or stdin ('-'), read straight into a wiped buffer."""
    from tpmseal.creds.envelope import MAX_SECRET
    from tpmseal.errors import TpmsealError, UsageError
    from tpmseal.secret import Secret

    buf = Secret(MAX_SECRET + 1)
    got = 0
    try:
        f: Any = sys.stdin.buffer if path == "-" else open(path, "rb", buffering=0)  # noqa: SIM115
    except OSError as e:
        buf.close()
        raise TpmsealError(f"cannot read {path}: {e.strerror}") from None
    try:
        view = memoryview(buf.buffer)
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
    except OSError as e:
        buf.close()
        raise TpmsealError(f"cannot read {path}: {e.strerror}") from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    if got > MAX_SECRET:
        buf.close()
        raise UsageError(f"{path}: the secret is larger than 1 MiB, the limit of a credential")
    out = Secret(got)
    out.buffer[:] = memoryview(buf.buffer)[:got]
    buf.close()
    return out


def _write_output(path: str, data: bytes | bytearray, mode: int) -> None:
    from pathlib import Path

    from tpmseal.creds.store import atomic_write

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    p = Path(path)
    atomic_write(p if p.is_absolute() else Path.cwd() / p, data, mode)


def cmd_encrypt(args: argparse.Namespace) -> int:
    from tpmseal.creds import envelope, sdcreds
    from tpmseal.errors import UsageError
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.pcrs import parse_pcrs

    if _bool_off(args.tpm2_with_pin):
        raise UsageError(
            "--tpm2-with-pin is not available for credentials",
            "a service cannot type a PIN when it starts; bind the credential to PCRs instead (--tpm2-pcrs)",
        )
    name = envelope.check_name(args.name)
    unit = envelope.check_unit(args.unit) if args.unit else None
    if args.format == "systemd" and unit is not None:
        raise UsageError("--unit needs the tpmseal format: systemd's format cannot bind a credential to a unit")
    output = args.output if args.output is not None else args.input_or_output
    source = args.input_or_output if args.output is not None else "-"
    if output is None:
        raise UsageError("creds encrypt needs an OUTPUT file ('-' for stdout)")
    selection = parse_pcrs(DEFAULT_PCRS if args.tpm2_pcrs is None else args.tpm2_pcrs)
    _warn_weak(selection.indexes)
    not_after = envelope.parse_time(args.not_after) if args.not_after else None
    with _read_secret(source) as secret, open_tpm(args.tpm2_device) as esapi:
        if args.format == "systemd":
            data = sdcreds.encrypt(esapi, secret, name, selection, not_after)
        else:
            data = envelope.encrypt(esapi, secret, name, unit, selection, not_after)
    _write_output(output, data, 0o600)
    return 0


def _warn_weak(indexes: tuple[int, ...]) -> None:
    from tpmseal.tpm.strength import weakness

    w = weakness(indexes)
    if w is not None:
        print(f"tpmseal: warning: the credential is {w.message}; the default, PCR 7, binds it to the Secure Boot "
              "state", file=sys.stderr)  # fmt: skip


def cmd_decrypt(args: argparse.Namespace) -> int:
    from tpmseal.creds import envelope, reader
    from tpmseal.tpm.device import open_tpm

    name = envelope.check_name(args.name) if args.name else None
    unit = envelope.check_unit(args.unit) if args.unit else None
    parsed = reader.parse(reader.read_file(args.file))
    with open_tpm(args.tpm2_device) as esapi:
        secret = reader.decrypt(esapi, parsed, name, unit)
    with secret:
        _write_output(args.output, secret.buffer, 0o600)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tpmseal.cliopts import print_json as _print_json
    from tpmseal.creds import reader

    info = reader.describe(reader.parse(reader.read_file(args.file)))
    if args.json:
        _print_json(info)
        return 0
    pcrs = "+".join(str(p["index"]) for p in info["pcrs"]) or "none (bound to this TPM only)"
    rows = [("format", info["format"]), ("name", info.get("name") or "(encrypted)")]
    if info["format"] == "tpmseal":
        rows += [
            ("unit", info["unit"] or "any"),
            ("created", info["created"]),
            ("not after", (info["not_after"] or "never") + (" (EXPIRED)" if info["expired"] else "")),
            ("size", f"{info['size']} bytes"),
        ]
    rows += [("cipher", info["cipher"]), ("PCRs", f"{pcrs} ({info['pcr_bank']})")]
    rows += [("policy", info["policy_digest"])]
    for key, value in rows:
        print(f"{key + ':':<11} {value}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from tpmseal.cliopts import print_json as _print_json
    from tpmseal.creds import envelope, reader, store
    from tpmseal.errors import CredentialNameMismatch, CredentialUnitMismatch

    unit = envelope.check_unit(args.unit)
    name = envelope.check_name(args.name)
    data = reader.read_file(args.file)
    parsed = reader.parse(data)
    if parsed.native is not None:
        h = parsed.native.header
        if h.name != name:
            raise CredentialNameMismatch(f"{args.file} was encrypted for the name '{h.name}', not '{name}'")
        if h.unit is not None and h.unit != unit:
            raise CredentialUnitMismatch(f"{args.file} was encrypted for unit '{h.unit}', not '{unit}'")
        if h.unit is None:
            print(
                f"tpmseal: note: {args.file} is not bound to a unit (encrypt with --unit={unit} to bind it)",
                file=sys.stderr,
            )
    done = store.install(args.root, unit, name, data)
    if args.json:
        _print_json({"unit": done.unit, "name": done.name, "credential": done.credential, "dropin": done.dropin})
    else:
        print(f"installed {done.credential}")
        print(f"installed {done.dropin}")
        print(f"run 'systemctl daemon-reload' and restart {unit} to load it")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from tpmseal.creds import store

    for path in store.uninstall(args.root, args.unit, args.name):
        print(f"removed {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tpmseal.creds.server import serve

    return serve(args.socket, args.root, args.tpm2_device, args.idle_exit, args.timeout)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tpmseal creds`` and its subcommands to the top-level parser's subparsers."""
    c = sub.add_parser(
        "creds",
        help="TPM-bound encrypted credentials, delivered only to the service that owns them",
        description="Encrypt secrets with a key sealed to the TPM and hand them to systemd services "
        "through LoadCredential=.",
    )
    cs = c.add_subparsers(dest="creds_command", metavar="ACTION", required=True)

    tpm = add_tpm2_device

    def root(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--root", default="/", metavar="DIR", help="prefix for /etc paths (default /)")

    e = cs.add_parser("encrypt", help="encrypt a secret into a credential file")
    e.add_argument("name", metavar="NAME", help="credential name (the file name the service sees)")
    e.add_argument("input_or_output", metavar="INPUT", nargs="?", help="the secret ('-' or absent: stdin)")
    e.add_argument("output", metavar="OUTPUT", nargs="?", help="the credential file to write ('-': stdout)")
    e.add_argument("--unit", metavar="UNIT", help="bind the credential to this unit")
    tpm(e)
    e.add_argument(
        "--tpm2-pcrs",
        default=None,
        metavar="PCRS",
        help="PCRs to bind to: 7+11, 7:sha256=HEX (default 7, the Secure Boot state, as systemd-creds; "
        "'' for none: any system booted on this machine decrypts it)",
    )
    e.add_argument(
        "--tpm2-with-pin",
        nargs="?",
        const="yes",
        default=None,
        metavar="BOOL",
        help="refused: services cannot type PINs",
    )
    e.add_argument("--not-after", metavar="TIME", help="expiry: +30d, +12h, @EPOCH, 2027-01-31T12:00:00Z")
    e.add_argument("--format", choices=("tpmseal", "systemd"), default="tpmseal", help="file format (default tpmseal)")
    e.set_defaults(func=cmd_encrypt)

    d = cs.add_parser("decrypt", help="decrypt a credential file (tpmseal's or systemd-creds')")
    d.add_argument("file", metavar="FILE", help="the credential file ('-': stdin)")
    d.add_argument(
        "output", metavar="OUTPUT", nargs="?", default="-", help="where to write the secret (default stdout)"
    )
    d.add_argument("--name", metavar="NAME", help="refuse unless the credential was encrypted for this name")
    d.add_argument("--unit", metavar="UNIT", help="refuse if the credential is bound to another unit")
    tpm(d)
    d.set_defaults(func=cmd_decrypt)

    i = cs.add_parser("inspect", help="show a credential's header (no TPM, no secret)")
    i.add_argument("file", metavar="FILE", help="the credential file ('-': stdin)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)

    n = cs.add_parser("install", help="install a credential for a unit and wire it with a drop-in")
    n.add_argument("unit", metavar="UNIT", help="the unit that gets the credential")
    n.add_argument("name", metavar="NAME", help="the credential's name")
    n.add_argument("file", metavar="FILE", help="the credential file")
    root(n)
    n.add_argument("--json", action="store_true", help="print JSON")
    n.set_defaults(func=cmd_install)

    u = cs.add_parser("uninstall", help="remove an installed credential and its drop-in")
    u.add_argument("unit", metavar="UNIT", help="the unit")
    u.add_argument("name", metavar="NAME", help="the credential's name")
    root(u)
    u.set_defaults(func=cmd_uninstall)

    s = cs.add_parser("serve", help="serve LoadCredential= requests on a socket (tpmseal-credd)")
    s.add_argument(
        "--socket",
        metavar="PATH",
        help="listen here (default: the socket systemd passes, else /run/tpmseal/creds.sock)",
    )
    root(s)
    s.add_argument("--idle-exit", type=float, default=None, metavar="SEC", help="exit after SEC without requests")
    s.add_argument("--timeout", type=float, default=10.0, metavar="SEC", help="time limit per request (default 10)")
    tpm(s)
    s.set_defaults(func=cmd_serve)
