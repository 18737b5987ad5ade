# SPDX-License-Identifier: LGPL-2.1-or-later
"""Review R8: reseal re-reads the header just before it writes, and a token another program (which does
not take tpmseal's lock) changed in the meantime is left as it is, with HeaderChanged. The control runs the
same race with the re-read check removed and shows the other program's token overwritten."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import Image, Swtpm, luks_dump
from test_reseal_header_attack import _token

from tpmseal.errors import HeaderChanged
from tpmseal.luks.volume import Volume
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.update import reseal as rs
from tpmseal.update.signed import enroll_signed, load_policy_key

pytestmark = pytest.mark.tpm


def _race(image: Image, t: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    key_path = tmp_path / "keys" / "policy-key.pem"
    key_path.parent.mkdir(mode=0o700)
    with Secret.take(bytearray(image.keyfile.read_bytes())) as unlock:
        enroll_signed(Volume(image.dev), unlock, t.tcti, parse_pcrs("7"), None, None, key_path=str(key_path))
    tid, data = _token(image)
    foreign = {"type": "admin-note", "keyslots": data["keyslots"], "note": "written by another program"}
    real = rs.verify_approval_offline

    def meanwhile(*a: object) -> bool:  # runs between reseal's header read and its write
        subprocess.run(["cryptsetup", "token", "import", "--json-file", "-", "--token-id", str(tid),
                        "--token-replace", str(image.path)], input=json.dumps(foreign).encode(), check=True,
                       capture_output=True)  # fmt: skip
        return real(*a)

    monkeypatch.setattr(rs, "verify_approval_offline", meanwhile)
    return tid, str(key_path)


def test_reseal_leaves_a_token_another_program_wrote_meanwhile(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, key_path = _race(image, other_swtpm, tmp_path, monkeypatch)
    with pytest.raises(HeaderChanged, match="changed by another program"):
        rs.approve(Volume(image.dev), other_swtpm.tcti, load_policy_key(key_path), {7: b"\x11" * 32})
    assert luks_dump(image.path)["tokens"][str(tid)]["type"] == "admin-note"  # type: ignore[index]


def test_control_without_the_re_read_the_other_programs_token_is_overwritten(
    image: Image, other_swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, key_path = _race(image, other_swtpm, tmp_path, monkeypatch)

    def old_write(volume: Volume, header: object, token_id: int, token: object, seals: list[object]) -> None:
        from dataclasses import replace

        from tpmseal.luks.tokens import render_native

        data = render_native(replace(token, seals=tuple(seals)))  # type: ignore[type-var]
        data["keyslots"] = header.tokens[token_id].data.get("keyslots", data["keyslots"])  # type: ignore[attr-defined]
        volume.import_token(data, token_id, replace=True)

    monkeypatch.setattr(rs, "_write", old_write)
    rs.approve(Volume(image.dev), other_swtpm.tcti, load_policy_key(key_path), {7: b"\x11" * 32})
    assert luks_dump(image.path)["tokens"][str(tid)]["type"] == "tpmseal-tpm2"  # type: ignore[index]
