# SPDX-License-Identifier: LGPL-2.1-or-later
"""Service credentials where systemd is PID 1: the systemd initramfs VM.

On the host, ``tpmseal creds encrypt`` seals a secret for ``credtest.service`` to the vTPM's state (swtpm in
socket mode on the same state directory, like test_boot_unlock.host_enroll); the credential file and
tpmseal-credd's units go into the initramfs. In the guest, a pre-mount hook (modules/98tpmsealcreds)
starts tpmseal-credd.socket and runs

    systemd-run --unit=credtest --wait --pipe -p LoadCredential=db:/run/tpmseal/creds.sock \\
        sh -c 'cat "$CREDENTIALS_DIRECTORY/db"'

which must print the secret, then the same for ``intruder.service``, which must get nothing.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import harness as h
import pytest
from vmdata import PROBE_MODULE, PROJECT, TPMSEAL_MODULE

from tpmseal.testing.swtpm import serving

pytestmark = pytest.mark.vm

CREDS_MODULE = Path(__file__).resolve().parent / "modules" / "98tpmsealcreds"
SECRET = b"vm-credential-" + os.urandom(6).hex().encode()
# The credential server is not part of the boot path, so 90tpmseal does not install it; this test uses the
# initramfs's systemd (PID 1) as a test bed for LoadCredential= and adds the server's modules.
PY_EXTRA = (
    "tpmseal.creds.command tpmseal.creds.server tpmseal.creds.reader tpmseal.creds.envelope "
    "tpmseal.creds.sdcreds tpmseal.creds.store tpmseal.interop.primary tpmseal.tpm.policy tpmseal.unlock "
    "cryptography.exceptions cryptography.hazmat.primitives.ciphers"
)


def host_encrypt(state: Path, out: Path) -> None:
    with serving(state) as tpm:
        p = subprocess.run(
            # --tpm2-pcrs= (none): the host's swtpm session does not hold the PCR 7 the VM's firmware makes;
            # this test is about delivery to the unit (PCR binding: tests/tpm/test_creds.py)
            [sys.executable, "-m", "tpmseal", "creds", "encrypt", "db", "-", str(out), "--unit=credtest.service",
             f"--tpm2-device={tpm.tcti}", "--tpm2-pcrs="],
            input=SECRET, capture_output=True, env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
        )  # fmt: skip
        assert p.returncode == 0, p.stderr


def test_credential_reaches_only_its_unit(
    systemd_initramfs: h.Initramfs, tpmseal_python: Path, vm_cache: Path, vtpm: Path, tmp_path: Path,
    vm_guest_files: tuple[tuple[Path, str], ...], run_vm: Callable[..., h.BootResult],
    vm_measure: Callable[[str, object], None],
) -> None:  # fmt: skip
    cred = tmp_path / "db.cred"
    host_encrypt(vtpm, cred)
    units = PROJECT / "systemd"
    includes = (
        *vm_guest_files,
        (units / "tpmseal-credd.socket", "/usr/lib/systemd/system/tpmseal-credd.socket"),
        (units / "tpmseal-credd.service", "/usr/lib/systemd/system/tpmseal-credd.service"),
        (cred, "/etc/tpmseal/creds/credtest.service/db.cred"),
    )
    spec = h.InitramfsSpec(flavour=h.Flavour.SYSTEMD, module_dirs=(PROBE_MODULE, TPMSEAL_MODULE, CREDS_MODULE),
                           includes=includes, kver=systemd_initramfs.kver,
                           env=(("TPMSEAL_PYTHON", str(tpmseal_python)), ("TPMSEAL_PY_EXTRA", PY_EXTRA)))  # fmt: skip
    initrd = h.build_initramfs(spec, vm_cache)
    config = h.VmConfig(initrd=initrd.path, disks=[], tpm_state=vtpm, timeout=240, kver=initrd.kver,
                        cmdline="rd.luks.crypttab=no rd.luks=0 tpmsealprobe.names=")  # fmt: skip
    result = run_vm("creds", config)
    assert result.marker("CREDS SOCKET started") is not None, result.summary()
    owner = result.marker("CREDS OWNER")
    assert owner is not None, result.summary()
    assert owner.text.endswith("data=" + base64.b64encode(SECRET).decode()), result.summary()
    intruder = result.marker("CREDS INTRUDER")
    assert intruder is not None, result.summary()
    assert "data= " in intruder.text or intruder.text.endswith("data="), result.summary()
    assert SECRET.decode() not in result.log and base64.b64encode(SECRET).decode() in owner.text
    logs = [m.text for m in result.markers if m.text.startswith("CREDS LOG")]
    assert any("unit=credtest.service credential=db" in m and "result=served" in m for m in logs), result.summary()
    assert any("unit=intruder.service" in m and "refused" in m for m in logs), result.summary()
    vm_measure("creds.vm.owner_s", round(owner.t, 2))
