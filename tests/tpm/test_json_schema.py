# SPDX-License-Identifier: LGPL-2.1-or-later
"""--json outputs have the shapes documented in docs/json-output.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import Image, Swtpm, make_luks2, run_cli

pytestmark = pytest.mark.tpm

OPT_STR = (str, type(None))
OPT_BOOL = (bool, type(None))
OPT_INT = (int, type(None))

LIST_SCHEMA = {
    "device": str, "keyslots": [{"keyslot": int, "kind": str, "tokens": [int], "kdf": str}],
    "tokens": [{"token": int, "type": str, "keyslots": [int], "orphan": bool, "pcrs": OPT_STR,
                "pcr_bank": OPT_STR, "pin": OPT_BOOL, "seals": OPT_INT, "created": OPT_STR,
                "policy_satisfied": OPT_BOOL, "changed_pcrs": [int], "volume_binding": OPT_BOOL, "error": OPT_STR,
                "weak_binding": OPT_STR, "opens_keyslot": OPT_BOOL,
                "seal_details": [{"index": int, "label": str, "kind": str, "pcrs": str, "pin": bool,
                                  "key_name": OPT_STR, "description": OPT_STR, "enrolled_pcrs": OPT_STR,
                                  "approvals": [{"label": str, "pcrs": str, "created": str, "signature_valid": bool,
                                                 "covers_enrolled_pcrs": OPT_BOOL}]}]}],
    "orphan_keyslots": [int], "orphan_tokens": [int], "tpm_error": OPT_STR,
}  # fmt: skip
TEST_UNLOCK_SCHEMA = {
    "device": str,
    "results": [{"token": int, "type": str, "keyslots": [int], "ok": bool, "error": OPT_STR, "error_kind": OPT_STR}],
}
ENROLL_SCHEMA = {
    "device": str, "keyslot": int, "token": int, "type": str, "pcrs": str, "pcr_bank": str, "pin": bool,
    "verified": str, "replaced_keyslots": [int], "wiped_keyslots": [int], "cleaned_up": [str],
    "warnings": [str],
}  # fmt: skip
WIPE_SCHEMA = {"device": str, "wiped_keyslots": [int]}


def check(value: Any, schema: Any, where: str = "$") -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), where
        assert set(value) == set(schema), f"{where}: keys {sorted(value)} != {sorted(schema)}"
        for k, s in schema.items():
            check(value[k], s, f"{where}.{k}")
    elif isinstance(schema, list):
        assert isinstance(value, list), where
        for i, v in enumerate(value):
            check(v, schema[0], f"{where}[{i}]")
    else:
        assert isinstance(value, schema) and not (schema is int and isinstance(value, bool)), f"{where}: {value!r}"


def test_json_outputs_match_documented_schema(image: Image, swtpm: Swtpm, tmp_path: Path) -> None:
    tpm = f"--tpm2-device={swtpm.tcti}"
    enrolled = json.loads(run_cli("enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile), "--json").stdout)
    check(enrolled, ENROLL_SCHEMA)
    rec = json.loads(run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile),
                             "--json").stdout)  # fmt: skip
    check(rec, {**ENROLL_SCHEMA, "recovery_key": str})
    listing = json.loads(run_cli("list", image.dev, tpm, "--json").stdout)
    check(listing, LIST_SCHEMA)
    assert len(listing["keyslots"]) == 3 and listing["tokens"][0]["policy_satisfied"] is True
    check(json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout), LIST_SCHEMA)
    check(json.loads(run_cli("test-unlock", image.dev, tpm, "--json").stdout), TEST_UNLOCK_SCHEMA)
    check(json.loads(run_cli("wipe-slot", image.dev, tpm, "--wipe-slot=recovery", "--json").stdout), WIPE_SCHEMA)
    assert enrolled["warnings"] == [] and listing["tokens"][0]["weak_binding"] is None  # PCR 7: not weak
    weak = json.loads(run_cli("enroll", image.dev, tpm, "--unlock-key-file", str(image.keyfile), "--replace",
                              "--tpm2-pcrs=", "--json").stdout)  # fmt: skip
    check(weak, ENROLL_SCHEMA)
    assert len(weak["warnings"]) == 1
    weak_listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    check(weak_listing, LIST_SCHEMA)
    assert [t["weak_binding"] for t in weak_listing["tokens"]] == ["volume-only"]
    # a signed-policy token: its seal, description and approvals
    signed = make_luks2(tmp_path / "signed.img")
    run_cli("enroll", signed.dev, tpm, "--unlock-key-file", str(signed.keyfile), "--tpm2-public-key-pcrs=7",
            f"--private-key={tmp_path / 'k.pem'}")  # fmt: skip
    listing = json.loads(run_cli("list", signed.dev, tpm, "--json").stdout)
    check(listing, LIST_SCHEMA)
    [seal] = listing["tokens"][0]["seal_details"]
    assert seal["kind"] == "authorize" and seal["description"] == "valid" and len(seal["approvals"]) == 1
