# SPDX-License-Identifier: LGPL-2.1-or-later
"""Pieces every subcommand module shares: the --tpm2-device option, spelled once, and --json printing.
Light on purpose: the CLI imports every subcommand module at start-up."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TPM2_DEVICE_HELP = "auto (/dev/tpmrm0), a TPM character device, or a TCTI such as swtpm:path=SOCK"


def tpm2_device(text: str) -> str:
    """Checked while the command line is parsed, before any prompt: a regular file (a disk image, a LUKS
    header) or a block device is refused, so no TPM command is ever written into it."""
    from tpmseal.errors import TpmUnavailable
    from tpmseal.tpm.device import check_device

    try:
        check_device(text, must_exist=False)
    except TpmUnavailable as e:
        raise argparse.ArgumentTypeError(f"{e.message} ({e.hint})") from None
    return text


def add_tpm2_device(parser: argparse.ArgumentParser) -> None:
    """``--tpm2-device``, as systemd-cryptenroll names it."""
    parser.add_argument("--tpm2-device", default="auto", type=tpm2_device, metavar="DEV", help=TPM2_DEVICE_HELP)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
