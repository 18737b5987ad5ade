# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal demo``: the whole job on a private swtpm and a LUKS2 image file, then clean up."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tpmseal.proc import run
from tpmseal.secret import Secret
from tpmseal.testing.swtpm import start_swtpm


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def extend_pcr(tcti: str, index: int, data: bytes) -> None:
    """Extend a sha256 PCR as firmware would (the demo's stand-in for a boot measurement)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    from tpmseal.tpm.device import open_tpm

    with open_tpm(tcti) as esapi:
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=hashlib.sha256(data).digest()))
        esapi.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES([ha]))


def run_demo(keep: bool = False) -> int:
    from tpmseal.enroll import enroll_tpm
    from tpmseal.errors import PolicyMismatch
    from tpmseal.inventory import report, run_test_unlock
    from tpmseal.luks.volume import Volume
    from tpmseal.tpm.pcrs import parse_pcrs

    d = tempfile.mkdtemp(prefix="tpmseal-demo-")
    swtpm = None
    try:
        _step(f"starting a private swtpm in {d}")
        swtpm = start_swtpm(Path(d), Path(d) / "swtpm.log")
        tcti = swtpm.tcti
        extend_pcr(tcti, 7, b"demo firmware: secure boot state")
        print("PCR 7 extended, as firmware would at boot")

        _step("making a 32 MiB LUKS2 image with a random passphrase")
        img = os.path.join(d, "disk.img")
        with open(img, "wb") as f:
            f.truncate(32 * 1024 * 1024)
        with Secret.random(24) as raw:
            passphrase = Secret.take(bytearray(raw.buffer.hex().encode()))
        run(
            [
                "cryptsetup",
                "luksFormat",
                "--type",
                "luks2",
                "--batch-mode",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                "-",
                img,
            ],
            stdin=passphrase.buffer,
        )
        volume = Volume(img)

        _step("tpmseal enroll --tpm2-pcrs=7")
        r = enroll_tpm(volume, passphrase, tcti, parse_pcrs("7"))
        print(f"keyslot {r.keyslot}, token {r.token} ({r.type}), PCRs {r.pcrs} ({r.pcr_bank})")
        print(f"proven: {r.verified}")

        _step("tpmseal list")
        rep = report(volume, volume.header(), tcti)
        for k in rep.keyslots:
            print(f"keyslot {k.keyslot}: {k.kind}")
        for t in rep.tokens:
            print(f"token {t.token}: {t.type}, PCRs {t.pcrs}, policy satisfied: {t.policy_satisfied}")

        _step("tpmseal test-unlock")
        for res in run_test_unlock(volume, volume.header(), tcti):
            print(f"token {res.token}: {'ok' if res.ok else res.error}")

        _step("the boot chain changes: PCR 7 is extended again")
        extend_pcr(tcti, 7, b"someone changed the Secure Boot state")
        for res in run_test_unlock(volume, volume.header(), tcti):
            print(f"token {res.token}: {'ok' if res.ok else 'refused: ' + (res.error or '')}")
            if res.ok:
                raise PolicyMismatch("demo failed: the TPM unsealed after PCR 7 changed")
        ok = volume.test_key(passphrase.buffer)
        print(f"the passphrase still opens the volume: {'yes' if ok else 'NO'}")
        passphrase.close()
        _step("demo finished" + ("" if keep else "; cleaning up"))
        return 0 if ok else 1
    finally:
        if swtpm is not None:
            swtpm.stop()
        if keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
