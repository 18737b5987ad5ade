# SPDX-License-Identifier: LGPL-2.1-or-later
"""Secret hygiene and TPM cost: keys never in argv/env/files; unseal is six TPM commands, no leaks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from support import Image, Swtpm, luks_dump, opens, run_cli

from tpmseal.inventory import native_tokens, run_test_unlock
from tpmseal.luks.tokens import pending_marker
from tpmseal.luks.volume import Volume
from tpmseal.testing.tpmproxy import TpmProxy
from tpmseal.tpm.device import open_tpm
from tpmseal.unlock import unseal_token

pytestmark = pytest.mark.tpm


def recording_shim(d: Path) -> Path:
    """A cryptsetup on PATH that appends its argv and environment to a log, then runs the real one."""
    real = shutil.which("cryptsetup")
    assert real
    d.mkdir()
    log = d / "calls.log"
    shim = d / "cryptsetup"
    shim.write_text(
        "#!/bin/sh\n"
        f'{{ printf "ARGV:"; printf " %s" "$@"; printf "\\n"; env | sed "s/^/ENV: /"; }} >> {log}\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return log


def forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret)]


def raw_key(image: Image, swtpm: Swtpm, pin: bytes | None = None) -> bytes:
    [(_, token)] = native_tokens(Volume(image.dev).header())
    with open_tpm(swtpm.tcti) as esapi, unseal_token(esapi, token, (lambda: bytearray(pin)) if pin else None) as r:
        return bytes(r.buffer)


def test_key_and_pin_never_in_argv_env_or_files(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    swtpm.clear_lockout()
    log = recording_shim(tmp_path / "shim")
    env = {"PATH": f"{log.parent}:{os.environ['PATH']}"}
    pin = b"93417"
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=pin + b"\n", env=env)  # fmt: skip
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", stdin=pin + b"\n", env=env)
    run_cli("list", image.dev, f"--tpm2-device={swtpm.tcti}", env=env)
    calls = log.read_bytes()
    assert calls.count(b"ARGV:") >= 5  # the shim really saw the calls
    key = raw_key(image, swtpm, pin)
    phrase = base64.b64encode(key)
    secrets = [*forms(key), *forms(phrase), pin]
    for s in secrets:
        assert s not in calls
    # nothing under the test's temp dirs holds the key, the keyslot passphrase or the PIN
    for root in (tmp_path, swtpm.dir):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_socket() and f.suffix != ".img":
                data = f.read_bytes()
                assert not any(s in data for s in secrets), f"secret found in {f}"
    # the image holds only the sealed object, not the key in any form
    data = image.path.read_bytes()
    assert not any(s in data for s in [*forms(key), phrase])


def test_unseal_costs_six_tpm_commands(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    """ReadPublic of the SRK (the session is salted to the TPM's key, never the header's), then five."""
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    [(_, token)] = native_tokens(Volume(image.dev).header())
    with TpmProxy(swtpm.sock, tmp_path / "proxy") as proxy, open_tpm(f"swtpm:path={tmp_path}/proxy") as esapi:
        proxy.reset()
        with unseal_token(esapi, token) as raw:
            assert len(raw) == 32
        names = proxy.names()
    assert names == ["ReadPublic", "Load", "StartAuthSession", "PolicyPCR", "Unseal", "FlushContext"]


def test_unseal_response_crosses_the_bus_encrypted(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    with TpmProxy(swtpm.sock, tmp_path / "proxy") as proxy:
        results = run_test_unlock(Volume(image.dev), Volume(image.dev).header(), f"swtpm:path={tmp_path}/proxy")
        traffic = proxy.raw_bytes()
    assert [r.ok for r in results] == [True]
    key = raw_key(image, swtpm)
    assert not any(s in traffic for s in forms(key))


def test_no_tpm_handles_left_after_success_or_failure(image: Image, swtpm: Swtpm, no_leaks: None) -> None:
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(image.keyfile))
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
    swtpm.extend(7, b"moved")
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    run_cli("list", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_interrupted_enroll_is_reported_and_cleaned_up(image: Image, swtpm: Swtpm) -> None:
    """A crash after the marker and luksAddKey, before the token: the orphan is found and removed."""
    volume = Volume(image.dev)
    volume.import_token(pending_marker(1, 1234), 0)  # the fingerprint: 1234 PBKDF2 iterations
    volume.add_keyslot(image.keyfile.read_bytes(), b"key that was lost in the crash", 1, 1234)
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    assert listing["orphan_keyslots"] == [1] and listing["orphan_tokens"] == [0]
    assert {k["keyslot"]: k["kind"] for k in listing["keyslots"]} == {0: "password", 1: "orphan"}
    assert opens(image.path, image.keyfile.read_bytes())
    # an orphan never counts as a way in
    run_cli("wipe-slot", image.dev, "--wipe-slot=0", f"--tpm2-device={swtpm.tcti}", check=8)
    r = json.loads(run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file",
                           str(image.keyfile), "--json").stdout)  # fmt: skip
    assert r["cleaned_up"] == ["removed orphan keyslot 1"]
    dump = luks_dump(image.path)
    assert [t["type"] for t in dump["tokens"].values()] == ["tpmseal-tpm2"]  # type: ignore[union-attr]
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")
