# SPDX-License-Identifier: LGPL-2.1-or-later
"""Pieces every subcommand module shares: the --tpm2-device option, spelled once, and --json printing.
Light on purpose: the CLI imports every subcommand module at start-up."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TPM2_DEVICE_HELP = "auto (/dev/tpmrm0), a device path, or a TCTI such as swtpm:path=SOCK"


def add_tpm2_device(parser: argparse.ArgumentParser) -> None:
    """``--tpm2-device``, as systemd-cryptenroll names it."""
    parser.add_argument("--tpm2-device", default="auto", metavar="DEV", help=TPM2_DEVICE_HELP)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
