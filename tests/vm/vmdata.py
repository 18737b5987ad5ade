# SPDX-License-Identifier: LGPL-2.1-or-later
"""Paths and fixed test data of the VM tier, shared by conftest.py and the tests."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
PROBE_MODULE = HERE / "modules" / "99tpmsealprobe"
TPMSEAL_MODULE = PROJECT / "dracut" / "90tpmseal"

# One initramfs serves every scenario, so what it contains is fixed: a crypttab naming a
# volume by a fixed UUID (images are formatted with it), the key file it names and the
# passphrase the in-guest enrollment needs. Boots that must not use the crypttab pass
# rd.luks.crypttab=no.
VOLUME_UUID = "7e5ea1ed-0000-4000-8000-00000000c0de"
VOLUME_NAME = "tpmsealtest"
PASSPHRASE = b"correct horse battery staple"
KEYFILE_BYTES = b"tpmseal-vm-test-keyfile-0123456789abcdef"
GUEST_KEYFILE = "/etc/tpmsealprobe/test.key"
