# SPDX-License-Identifier: LGPL-2.1-or-later
"""wipe-slot (and enroll --wipe-slot): never removes the last working way in."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import PASSPHRASE, Image, Swtpm, luks_dump, opens, run_cli

import tpmseal.wipe
from tpmseal.luks.volume import Header, Volume
from tpmseal.wipe import parse_wipe_spec, select
from tpmseal.wipe import wipe as wipe_slots

pytestmark = pytest.mark.tpm


def enroll(img: Image, swtpm: Swtpm, *extra: str) -> dict:
    return json.loads(run_cli(
        "enroll", img.dev, f"--tpm2-device={swtpm.tcti}", "--unlock-key-file", str(img.keyfile), "--json", *extra
    ).stdout)  # fmt: skip


def wipe(img: Image, swtpm: Swtpm, spec: str, *extra: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    return run_cli("wipe-slot", img.dev, f"--tpm2-device={swtpm.tcti}", f"--wipe-slot={spec}", *extra, check=check)


def keyslots(img: Image) -> list[int]:
    return sorted(int(k) for k in luks_dump(img.path)["keyslots"])  # type: ignore[union-attr]


def test_wipe_refuses_last_keyslot(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "0", check=8)
    assert "no working passphrase" in p.stderr and "--force" in p.stderr
    assert keyslots(image) == [0] and opens(image.path, PASSPHRASE)


def test_wipe_all_is_refused_without_force(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    wipe(image, swtpm, "all", check=8)
    assert keyslots(image) == [0, 1]


def test_wipe_password_allowed_when_tpm_slot_works(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    out = json.loads(wipe(image, swtpm, "password", "--json").stdout)
    assert out["wiped_keyslots"] == [0]
    assert keyslots(image) == [1] and not opens(image.path, PASSPHRASE)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_tpm_slot_whose_pcrs_changed_does_not_count_as_working(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    swtpm.extend(7, b"pcr 7 moved")
    wipe(image, swtpm, "password", check=8)
    assert keyslots(image) == [0, 1] and opens(image.path, PASSPHRASE)


def test_wipe_tpm2_removes_keyslot_and_token_together(image: Image, swtpm: Swtpm) -> None:
    enroll(image, swtpm)
    wipe(image, swtpm, "tpm2")
    dump = luks_dump(image.path)
    assert sorted(dump["keyslots"]) == ["0"] and dump["tokens"] == {}  # type: ignore[arg-type]


def test_wipe_by_index_list(image: Image, swtpm: Swtpm) -> None:
    for _ in range(2):
        run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    assert keyslots(image) == [0, 1, 2]
    wipe(image, swtpm, "1,2")
    dump = luks_dump(image.path)
    assert sorted(dump["keyslots"]) == ["0"] and dump["tokens"] == {}  # type: ignore[arg-type]


def test_wipe_unused_index_is_a_usage_error(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "5", check=2)
    assert "not in use" in p.stderr


def test_wipe_empty_removes_only_empty_passphrase_slots(image: Image, swtpm: Swtpm) -> None:
    # keyslot 1 gets an empty passphrase (cryptsetup reads the new one as a line from stdin)
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", str(image.path)],
        input=PASSPHRASE + b"\n\n", check=True, capture_output=True,
    )  # fmt: skip
    run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    assert keyslots(image) == [0, 1, 2]
    wipe(image, swtpm, "empty")
    assert keyslots(image) == [0, 2]


def test_wipe_force_removes_the_last_slot_loudly(image: Image, swtpm: Swtpm) -> None:
    p = wipe(image, swtpm, "0", "--force")
    assert "WARNING" in p.stderr and "--force" in p.stderr
    assert keyslots(image) == []


def test_enroll_wipe_slot_password_runs_after_the_new_slot_is_proven(image: Image, swtpm: Swtpm) -> None:
    r = enroll(image, swtpm, "--wipe-slot=password")
    assert r["wiped_keyslots"] == [0] and keyslots(image) == [r["keyslot"]]
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_enroll_wipe_all_keeps_the_new_slot(image: Image, swtpm: Swtpm) -> None:
    run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile))
    r = enroll(image, swtpm, "--wipe-slot=all")
    assert sorted(r["wiped_keyslots"]) == [0, 1] and keyslots(image) == [r["keyslot"]]


def test_pin_token_counts_as_working_only_while_its_pcrs_hold(image: Image, swtpm: Swtpm) -> None:
    swtpm.clear_lockout()
    run_cli("enroll", image.dev, f"--tpm2-device={swtpm.tcti}", "--tpm2-with-pin", "--unlock-key-file",
            str(image.keyfile), stdin=b"2468\n")  # fmt: skip
    swtpm.extend(7, b"pcr 7 moved under a PIN token")
    wipe(image, swtpm, "password", check=8)
    p = run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}", check=5)
    assert "PCR(s) 7 differ" in p.stdout  # and no PIN was asked for (stdin is empty)
    assert keyslots(image) == [0, 1]


# --- issue 17, item 5: the last-way-in guard counts only ways in that exist --------------------------------


def old_keyslot_kind(header: Header, keyslot: int, orphans: list[int] | None = None) -> str:
    """The rule before issue 17: a keyslot's kind is the type name of the token bound to it."""
    types = {t.type for t in header.tokens_of(keyslot)}
    if types & {"tpmseal-tpm2", "systemd-tpm2"}:
        return "tpm2"
    if "systemd-recovery" in types:
        return "recovery"
    if types:
        return sorted(types)[0]
    return "orphan" if keyslot in (orphans or []) else "password"


def add_passphrase(img: Image, phrase: bytes, slot: int) -> None:
    subprocess.run(
        ["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--key-file", str(img.keyfile), "--new-key-slot", str(slot), img.dev, "/dev/stdin"],
        input=phrase, check=True, capture_output=True,
    )  # fmt: skip


def import_token(img: Image, token: dict[str, object]) -> None:
    subprocess.run(
        ["cryptsetup", "token", "import", "--json-file", "-", img.dev],
        input=json.dumps(token).encode(), check=True, capture_output=True,
    )  # fmt: skip


def any_key_opens(img: Image, keys: list[bytes]) -> bool:
    return any(opens(img.path, k) for k in keys)


def test_reencryption_in_progress_every_changing_command_refuses(image: Image, swtpm: Swtpm) -> None:
    recovery = json.loads(run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile),
                                  "--json").stdout)["recovery_key"]  # fmt: skip
    subprocess.run(
        ["cryptsetup", "reencrypt", "--init-only", "--batch-mode", "--key-file", str(image.keyfile), "--key-slot", "0",
         "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", image.dev],
        check=True, capture_output=True,
    )  # fmt: skip
    before = luks_dump(image.path)
    listing = json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)
    kinds = {k["keyslot"]: k["kind"] for k in listing["keyslots"]}
    assert "reencrypt" in kinds.values() and kinds[1] == "recovery"
    key = ["--unlock-key-file", str(image.keyfile)]
    tpm = f"--tpm2-device={swtpm.tcti}"
    for argv in (
        ["wipe-slot", image.dev, tpm, "--wipe-slot=password"],
        ["wipe-slot", image.dev, tpm, "--wipe-slot=password", "--force"],
        ["wipe-slot", image.dev, tpm, "--wipe-slot=recovery"],
        ["enroll", image.dev, tpm, *key],
        ["enroll", image.dev, "--recovery-key", *key],
        ["enroll", image.dev, tpm, "--token-type=systemd-tpm2", *key],
        ["repair", image.dev],
    ):
        p = run_cli(*argv, check=8)
        assert "re-encryption in progress" in p.stderr, (argv, p.stderr)
        assert luks_dump(image.path) == before, argv
    assert opens(image.path, PASSPHRASE)
    del recovery


def test_control_without_the_refusal_wipe_password_locks_everyone_out(
    image: Image, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = json.loads(run_cli("enroll", image.dev, "--recovery-key", "--unlock-key-file", str(image.keyfile),
                                  "--json").stdout)["recovery_key"].encode()  # fmt: skip
    subprocess.run(
        ["cryptsetup", "reencrypt", "--init-only", "--batch-mode", "--key-file", str(image.keyfile), "--key-slot", "0",
         "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", image.dev],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setattr(Header, "refuse_changes", lambda self, path: None)
    volume = Volume(image.dev)
    header = volume.header()
    wipe_slots(volume, header, select(volume, header, parse_wipe_spec("password")), swtpm.tcti)
    assert not any_key_opens(image, [PASSPHRASE, recovery])  # the hole: nothing opens the volume any more


def _repointed_native(img: Image, swtpm: Swtpm, damaged: bool) -> None:
    """slot 0 passphrase, slot 1 TPM (token 0), slot 2 recovery; plus a tpmseal token naming slot 0."""
    enroll(img, swtpm)
    run_cli("enroll", img.dev, "--recovery-key", "--unlock-key-file", str(img.keyfile))
    tok = dict(luks_dump(img.path)["tokens"]["0"])  # type: ignore[index]
    tok["keyslots"] = ["0"]
    if damaged:
        tok["seals"] = "garbage"
    import_token(img, tok)


@pytest.mark.parametrize("damaged", [True, False], ids=["damaged", "well-formed-copy"])
def test_tpmseal_token_repointed_at_the_passphrase_slot_takes_nothing_with_it(
    damaged: bool, image: Image, swtpm: Swtpm
) -> None:
    _repointed_native(image, swtpm, damaged)
    kinds = {k["keyslot"]: k["kind"] for k in json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)[
        "keyslots"]}  # fmt: skip
    assert kinds == {0: "damaged", 1: "tpm2", 2: "recovery"}
    out = json.loads(wipe(image, swtpm, "tpm2", "--json").stdout)
    assert out["wiped_keyslots"] == [1] and opens(image.path, PASSPHRASE)
    # the recovery key is the last way in besides slot 0, whose claim cannot be trusted: refused
    wipe(image, swtpm, "recovery", check=8)
    assert keyslots(image) == [0, 2] and opens(image.path, PASSPHRASE)


def test_replace_with_a_token_repointed_at_the_passphrase_slot_keeps_the_passphrase(image: Image, swtpm: Swtpm) -> None:
    _repointed_native(image, swtpm, damaged=False)
    r = enroll(image, swtpm, "--replace")
    assert r["replaced_keyslots"] == [1] and opens(image.path, PASSPHRASE)
    run_cli("test-unlock", image.dev, f"--tpm2-device={swtpm.tcti}")


def test_control_the_old_kind_rule_wipes_the_passphrase_with_the_tpm_slot(
    image: Image, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    _repointed_native(image, swtpm, damaged=True)
    monkeypatch.setattr(tpmseal.wipe, "keyslot_kind", old_keyslot_kind)
    volume = Volume(image.dev)
    header = volume.header()
    assert 0 in select(volume, header, parse_wipe_spec("tpm2"))  # the hole: the passphrase is a "TPM slot"


@pytest.mark.parametrize("ttype", ["tpm2", "password", "recovery"])
def test_third_party_token_named_like_a_kind_counts_for_nothing(ttype: str, image: Image, swtpm: Swtpm) -> None:
    add_passphrase(image, b"a key only the third-party tool knows", 1)
    import_token(image, {"type": ttype, "keyslots": ["1"]})
    kinds = {k["keyslot"]: k["kind"] for k in json.loads(run_cli("list", image.dev, "--no-tpm", "--json").stdout)[
        "keyslots"]}  # fmt: skip
    assert kinds == {0: "password", 1: "foreign"}
    p = wipe(image, swtpm, "0", check=8)
    assert "no working passphrase" in p.stderr
    wipe(image, swtpm, ttype, check=8 if ttype == "password" else 0)  # selects only what really is one
    assert keyslots(image) == [0, 1] and opens(image.path, PASSPHRASE)


@pytest.mark.parametrize("ttype", ["tpm2", "password", "recovery"])
def test_control_the_old_kind_rule_wipes_the_real_passphrase(
    ttype: str, image: Image, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_passphrase(image, b"a key only the third-party tool knows", 1)
    import_token(image, {"type": ttype, "keyslots": ["1"]})
    monkeypatch.setattr(tpmseal.wipe, "keyslot_kind", old_keyslot_kind)
    volume = Volume(image.dev)
    header = volume.header()
    if ttype == "tpm2":  # the old rule counted a TPM slot only if it test-unlocks: the hole is in select
        assert 1 in select(volume, header, parse_wipe_spec("tpm2"))
        return
    wipe_slots(volume, header, [0], swtpm.tcti)
    assert not opens(image.path, PASSPHRASE)  # the hole: wiped without --force


def _replace_keyslot_1_meanwhile(image: Image) -> tuple[Header, bytes]:
    """The admin's key A in keyslot 1; tpmseal reads the header; then another program replaces keyslot 1
    with the admin's new key B (luksKillSlot + luksAddKey into the same keyslot)."""
    subprocess.run(["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                    "1000", "--key-slot", "1", "--key-file", str(image.keyfile), str(image.path), "-"],
                   input=b"admin key A", check=True, capture_output=True)  # fmt: skip
    stale = Volume(image.dev).header()
    subprocess.run(["cryptsetup", "luksKillSlot", "--batch-mode", str(image.path), "1"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                    "1000", "--key-slot", "1", "--key-file", str(image.keyfile), str(image.path), "-"],
                   input=b"admin key B", check=True, capture_output=True)  # fmt: skip
    assert opens(image.path, b"admin key B", 1) and not opens(image.path, b"admin key A", 1)
    return stale, b"admin key B"


def test_a_keyslot_another_program_replaced_since_the_header_was_read_is_not_removed(image: Image) -> None:
    from tpmseal.errors import HeaderChanged

    stale, new_key = _replace_keyslot_1_meanwhile(image)
    with pytest.raises(HeaderChanged, match="changed by another program"):
        wipe_slots(Volume(image.dev), stale, [1], None)
    assert opens(image.path, new_key, 1)


def test_control_without_the_re_read_the_replaced_keyslot_is_destroyed(
    image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale, new_key = _replace_keyslot_1_meanwhile(image)
    monkeypatch.setattr(Volume, "header", lambda self: stale)  # the decision's header is taken as current
    wipe_slots(Volume(image.dev), stale, [1], None)
    assert not opens(image.path, new_key)
