# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal config show|diff|apply``: the CLI side. Only light modules at import time; jinja2, pyudev and
the rest are imported by the handlers, so ``tpmseal --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tpmseal.config.discover import Discovery
    from tpmseal.config.plan import Plan


def _discover(args: argparse.Namespace) -> Discovery:
    from tpmseal.config.discover import discover, given

    return given(args.volumes, args.root) if args.volumes else discover(args.root)


def _plan(args: argparse.Namespace) -> Plan:
    from tpmseal.config.plan import make_plan
    from tpmseal.errors import UsageError

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: no such directory")
    return make_plan(args.root, _discover(args))


def _notes(plan: Plan) -> None:
    for n in plan.notes:
        print(f"tpmseal: note: {n}", file=sys.stderr)


def _cmd(argv: list[str]) -> str:
    return shlex.join(argv)


def cmd_show(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    _notes(plan)
    print(f"volumes (found with {plan.discovery.source}):")
    if not plan.volumes:
        print("  none")
    for v in plan.volumes:
        tokens = ",".join(v.token_types) or "-"
        boot = ", needed at boot" if v.boot else ""
        print(f"  {v.device}  UUID={v.uuid}  name={v.name or '-'}  tokens={tokens}{boot}: {v.status}")
    print(f"boot loader: {plan.bootloader or 'none found'}")
    if plan.cmdline:
        print(f"kernel command line options: {' '.join(plan.cmdline)}")
    print("files:")
    for f in plan.files:
        state = "would change" if f.changed else "up to date"
        print(f"  {f.path}: {state if f.old is not None else 'would be created'}")
    if plan.regenerate:
        print("after apply, to take effect at the next boot:")
        for c in plan.regenerate:
            print(f"  {_cmd(c)}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    plan = _plan(args)
    _notes(plan)
    changed = plan.changed()
    for f in changed:
        sys.stdout.write(f.diff())
    if not changed:
        print("nothing to change: every file tpmseal manages is up to date")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from tpmseal.config.plan import apply_plan
    from tpmseal.errors import CommandFailed, MissingTool
    from tpmseal.proc import run

    plan = _plan(args)
    _notes(plan)
    written = apply_plan(plan)
    for line in written:
        print(line)
    if not written:
        print("nothing to change: every file tpmseal manages is up to date")
        return 0
    if not plan.regenerate:
        return 0
    if not plan.live:
        print(f"not run (--root {args.root}); inside that system, run:")
        for c in plan.regenerate:
            print(f"  {_cmd(c)}")
        return 0
    if not args.regenerate:
        print("to take effect at the next boot, run (or use --regenerate):")
        for c in plan.regenerate:
            print(f"  {_cmd(c)}")
        return 0
    missing: list[str] = []
    for c in plan.regenerate:
        print(f"running: {_cmd(c)}")
        try:
            run(c)
        except MissingTool:
            missing.append(_cmd(c))
            print(f"tpmseal: warning: {c[0]} is not installed; the change is written but not yet in the boot",
                  file=sys.stderr)  # fmt: skip
        except CommandFailed as e:
            raise CommandFailed(
                e.argv, e.returncode, e.stderr, f"the files are written; fix the problem and run '{_cmd(c)}'"
            ) from None
    if missing:
        raise MissingTool(
            f"could not regenerate: {', '.join(c.split()[0] for c in missing)} not installed",
            "regenerate the initramfs / boot loader configuration with your distribution's tool: " + "; ".join(missing),
        )
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``tpmseal config`` to the CLI's subcommands."""
    c = sub.add_parser(
        "config",
        help="write the crypttab lines and kernel command line options for TPM-enrolled volumes",
        description="Keep /etc/crypttab and the kernel command line in line with the volumes that carry a "
        "TPM token. Only lines tpmseal marked are changed; see tpmseal-config(8).",
    )
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "volumes", metavar="VOLUME", nargs="*",
            help="only these LUKS2 devices or image files (default: every LUKS volume found)",
        )  # fmt: skip
        p.add_argument("--root", default="/", metavar="DIR", help="the system tree to configure (default /)")

    s = csub.add_parser("show", help="list the volumes found and the state of each managed file")
    common(s)
    s.add_argument("--json", action="store_true", help="print JSON (schema: tpmseal-config(8))")
    s.set_defaults(func=cmd_show)

    d = csub.add_parser("diff", help="show what apply would change, as a unified diff")
    common(d)
    d.set_defaults(func=cmd_diff)

    a = csub.add_parser("apply", help="write the changes (atomically, keeping a .tpmseal-bak copy)")
    common(a)
    a.add_argument(
        "--regenerate", action="store_true",
        help="also rebuild the initramfs / boot loader configuration (never with --root)",
    )  # fmt: skip
    a.set_defaults(func=cmd_apply)
