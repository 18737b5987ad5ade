# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal config: the crypttab parser/renderer, the merge of managed entries, the GRUB drop-in and kernel
command line, atomic writes, --root confinement, and the CLI handlers (with a synthetic discovery: this
tier runs neither cryptsetup nor udev). Golden files: tests/unit/golden/config/ (regenerate with regen.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmseal.cli import main
from tpmseal.config import bootloader, command
from tpmseal.config.crypttab import MARKER, ConfigParseError, Wanted, merge, parse, quote_field, split_fields
from tpmseal.config.discover import Discovery, LuksVolume
from tpmseal.config.files import BACKUP_SUFFIX, FAULT_ENV, TEMP_SUFFIX, Target, UnsafePath, atomic_write
from tpmseal.config.plan import Plan, apply_plan, make_plan
from tpmseal.config.render import BootVolume, TemplateError, Templates

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent / "golden" / "config"
CORPUS = sorted((GOLDEN / "corpus").glob("*.crypttab"))
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ADMIN = (
    "# my own notes\nswap\t/dev/sda3  /dev/urandom swap,cipher=aes-xts-plain64\n\n"
    "home UUID=0f5e9a44-1c2b-4d6e-8f90-123456789abc /k\\040ey luks\n"
)


def _load_regen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tpmseal_config_regen", GOLDEN / "regen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vol(uuid: str = U1, types: tuple[str, ...] = ("tpmseal-tpm2",), **kw: object) -> LuksVolume:
    return LuksVolume(f"/dev/disk-{uuid[:4]}", uuid, token_types=list(types), **kw)  # type: ignore[arg-type]


def tree(tmp_path: Path, crypttab: str | None = ADMIN, grub: bool = False) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if crypttab is not None:
        (root / "etc" / "crypttab").write_text(crypttab)
    if grub:
        (root / "etc" / "default").mkdir()
        (root / "etc" / "default" / "grub").write_text('GRUB_CMDLINE_LINUX=""\n')
    return root


# --- golden files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_load_regen().cases()))
def test_output_matches_golden_file(name: str) -> None:
    expected = (GOLDEN / name).read_text()
    assert _load_regen().cases()[name] == expected, f"{name} differs; if intended, run {GOLDEN / 'regen.py'}"


def test_golden_merge_keeps_every_admin_line_byte_for_byte() -> None:
    before = (GOLDEN / "crypttab.input").read_text()
    after = (GOLDEN / "crypttab.expected").read_text()
    admin = [ln.raw for ln in parse(before).lines if ln.kind in ("comment", "blank") or
             (ln.kind == "entry" and not ln.managed)]  # fmt: skip
    out = iter(after.splitlines(keepends=True))
    for line in admin:  # in order, unchanged
        assert any(o == line for o in out), f"admin line lost or changed: {line!r}"


def test_grub_dropin_appends_to_the_admins_command_line_when_sourced(tmp_path: Path) -> None:
    cfg = tmp_path / "tpmseal.cfg"
    cfg.write_text((GOLDEN / "grub-tpmseal.cfg.expected").read_text())
    script = f'GRUB_CMDLINE_LINUX="quiet splash"; . {cfg}; printf %s "$GRUB_CMDLINE_LINUX"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    words = out.split()
    assert words[:2] == ["quiet", "splash"]
    assert f"rd.luks.name={U2}=cryptroot" in words and f"rd.luks.options={U2}=discard,tpm2-device=auto" in words
    empty = subprocess.run(["sh", "-c", 'GRUB_CMDLINE_LINUX=""; . ' + str(cfg)], capture_output=True)
    assert empty.returncode == 0


# --- the parser -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_real_world_crypttab_round_trips_unchanged(path: Path) -> None:
    text = path.read_text()
    tab = parse(text, str(path))
    assert tab.render() == text
    res = merge(tab, [], set())
    assert res.text == text and not (res.added or res.updated or res.removed)


def test_parser_reads_quotes_escapes_hash_in_options_and_missing_fields() -> None:
    tab = parse((GOLDEN / "corpus" / "escaped-keyfiles.crypttab").read_text())
    assert {ln.entry.keyfile for ln in tab.entries() if ln.entry and ln.entry.name.startswith("usb")} == {
        "/media/usb stick/key.bin", "/media/its here/key",
    }  # fmt: skip
    [hashed] = [ln.entry for ln in parse((GOLDEN / "corpus" / "systemd-options.crypttab").read_text()).entries()
                if ln.entry and ln.entry.device == "/dev/sdb3"]  # fmt: skip
    assert hashed.name == "hash#tag" and "x-systemd.after=foo#bar.service" in hashed.option_list
    [two] = [ln.entry for ln in parse("a /dev/sda1\n").entries()]
    assert two is not None and (two.keyfile, two.options) == (None, None)
    assert split_fields('a\\tb \'x y\' "q\\"" \\x41') == ["a\tb", "x y", 'q"', "A"]


@pytest.mark.parametrize(
    ("text", "lineno", "what"),
    [
        ("# ok\nroot UUID=x none luks # tpmseal\n", 2, "6 fields, at most 4"),
        ("ok /dev/a\nlonely\n", 2, "at least a name and a device"),
        ('\n\nbad /dev/a "unterminated\n', 3, "unterminated"),
        ("bad /dev/a none luks\\", 1, "backslash at the end"),
    ],
)
def test_parse_error_names_the_file_and_line(text: str, lineno: int, what: str) -> None:
    with pytest.raises(ConfigParseError) as e:
        parse(text, "/etc/crypttab")
    assert e.value.lineno == lineno and f"/etc/crypttab:{lineno}:" in e.value.message and what in e.value.message
    assert f"line {lineno}" in e.value.hint


# hypothesis: any crypttab made of the admin's lines renders back byte for byte, and a merge never touches them

_plain = st.text(st.characters(blacklist_characters=" \t\r\n\\\"'#", blacklist_categories=("Cs",)), min_size=1)
_quoted = _plain.map(lambda s: '"' + s + '"') | _plain.map(lambda s: "'" + s + "'")
_escaped = st.lists(_plain | st.sampled_from(["\\040", "\\ ", "\\\\", "\\x20"]), min_size=1, max_size=4).map("".join)
_field = st.lists(_plain | _quoted | _escaped | st.just("#"), min_size=1, max_size=3).map("".join)
_sep = st.text(" \t", min_size=1, max_size=3)
_ws = st.text(" \t", max_size=2)


@st.composite
def _entry(draw: st.DrawFn) -> str:
    first = draw(_plain | _quoted | _escaped)  # a first field starting with '#' would make a comment
    rest = draw(st.lists(_field, min_size=1, max_size=3))
    text = draw(_ws) + first
    for f in rest:
        text += draw(_sep) + f
    return text + draw(_ws) + draw(st.sampled_from(["", "\r"]))


_comment = st.tuples(_ws, st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)))).map(
    lambda t: t[0] + "#" + t[1]
)
_line = _entry() | _comment | _ws
_file = st.tuples(st.lists(_line, max_size=12), st.booleans()).map(
    lambda t: "\n".join(t[0]) + ("\n" if t[0] and t[1] else "")
)


@settings(max_examples=300, deadline=None)
@given(_file)
def test_parse_then_render_of_any_admin_crypttab_is_byte_identical(text: str) -> None:
    assert parse(text).render() == text


@settings(max_examples=200, deadline=None)
@given(_file, st.booleans())
def test_merge_never_changes_unmanaged_lines(text: str, add: bool) -> None:
    assume_ok = parse(text)
    wanted = [Wanted(U2, "newvol", f"newvol UUID={U2} none luks,discard\n")] if add else []
    res = merge(assume_ok, wanted, {U2})
    if not add or res.kept_admin:
        assert res.text == text
    else:
        fixed = text if not text or text.endswith("\n") else text + "\n"
        assert res.text == fixed + MARKER + "\n" + wanted[0].line
        assert merge(parse(res.text), wanted, {U2}).text == res.text  # idempotent


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_quote_field_round_trips_any_value(value: str) -> None:
    assert split_fields("x " + quote_field(value)) == ["x", value]


# --- merge and plan -------------------------------------------------------------------------------------------


def test_new_volume_gets_a_marked_entry_and_a_second_apply_changes_nothing(tmp_path: Path) -> None:
    root = tree(tmp_path)
    disc = Discovery([vol()], "arguments")
    plan = make_plan(str(root), disc)
    assert [f.path for f in plan.changed()] == ["/etc/crypttab"]
    assert apply_plan(plan) == [f"wrote {root}/etc/crypttab (previous version: {root}/etc/crypttab{BACKUP_SUFFIX})"]
    text = (root / "etc/crypttab").read_text()
    assert text == ADMIN + f"{MARKER}\nluks-{U1} UUID={U1} none luks,discard\n"
    assert (root / f"etc/crypttab{BACKUP_SUFFIX}").read_text() == ADMIN
    st1 = os.stat(root / "etc/crypttab")
    again = make_plan(str(root), disc)
    assert again.changed() == [] and apply_plan(again) == []
    st2 = os.stat(root / "etc/crypttab")
    assert (st1.st_ino, st1.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)


def test_systemd_tpm2_token_gets_tpm2_device_auto(tmp_path: Path) -> None:
    root = tree(tmp_path)
    apply_plan(make_plan(str(root), Discovery([vol(types=("systemd-tpm2",))], "arguments")))
    assert f"luks-{U1} UUID={U1} none luks,discard,tpm2-device=auto\n" in (root / "etc/crypttab").read_text()


def test_volume_without_tpm_token_gets_no_entry_and_loses_its_managed_one(tmp_path: Path) -> None:
    root = tree(tmp_path)
    apply_plan(make_plan(str(root), Discovery([vol()], "arguments")))
    plan = make_plan(str(root), Discovery([vol(types=())], "arguments"))
    assert [v.status for v in plan.volumes] == ["no TPM token: not managed"]
    apply_plan(plan)
    assert (root / "etc/crypttab").read_text() == ADMIN


def test_managed_entry_of_a_volume_not_found_is_kept(tmp_path: Path) -> None:
    root = tree(tmp_path)
    apply_plan(make_plan(str(root), Discovery([vol()], "arguments")))
    plan = make_plan(str(root), Discovery([vol(U2)], "arguments"))
    apply_plan(plan)
    text = (root / "etc/crypttab").read_text()
    assert f"UUID={U1}" in text and f"UUID={U2}" in text
    assert any("not found now" in n for n in plan.notes)


def test_admins_own_line_for_the_volume_is_left_alone(tmp_path: Path) -> None:
    own = f"cryptroot UUID={U1} none luks,discard,x-systemd.device-timeout=0\n"
    root = tree(tmp_path, ADMIN + own)
    plan = make_plan(str(root), Discovery([vol()], "arguments"))
    assert plan.changed() == [] and plan.volumes[0].status == "the admin's own crypttab line covers it"
    assert plan.volumes[0].name == "cryptroot"


def test_edited_managed_entry_is_rewritten_and_stays_in_place(tmp_path: Path) -> None:
    edited = ADMIN + f"{MARKER}\nmine UUID={U1} none luks\n# after\n"
    root = tree(tmp_path, edited)
    apply_plan(make_plan(str(root), Discovery([vol()], "arguments")))
    assert (root / "etc/crypttab").read_text() == ADMIN + f"{MARKER}\nmine UUID={U1} none luks,discard\n# after\n"


def test_apply_refuses_a_crypttab_it_cannot_parse_and_writes_nothing(tmp_path: Path) -> None:
    bad = ADMIN + "broken UUID=x none luks # comment\n"
    root = tree(tmp_path, bad)
    with pytest.raises(ConfigParseError) as e:
        make_plan(str(root), Discovery([vol()], "arguments"))
    assert e.value.lineno == 5 and e.value.path == f"{root}/etc/crypttab"
    assert (root / "etc/crypttab").read_text() == bad and not (root / f"etc/crypttab{BACKUP_SUFFIX}").exists()


def test_missing_crypttab_is_created_with_only_the_managed_entry(tmp_path: Path) -> None:
    root = tree(tmp_path, None)
    assert apply_plan(make_plan(str(root), Discovery([vol()], "arguments"))) == [f"created {root}/etc/crypttab"]
    assert (root / "etc/crypttab").read_text() == f"{MARKER}\nluks-{U1} UUID={U1} none luks,discard\n"
    assert os.stat(root / "etc/crypttab").st_mode & 0o777 == 0o644


def test_boot_volume_goes_into_the_grub_dropin_and_stays_there_under_root(tmp_path: Path) -> None:
    root = tree(tmp_path, grub=True)
    v = vol(U2, ("tpmseal-tpm2",), mapped_name="cryptroot", boot=True)
    plan = make_plan(str(root), Discovery([v, vol()], "arguments"))
    assert plan.bootloader == "grub" and plan.regenerate == [
        ["dracut", "--regenerate-all", "--force"], ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
    ]  # fmt: skip
    apply_plan(plan)
    dropin = (root / "etc/default/grub.d/tpmseal.cfg").read_text()
    assert f"rd.luks.name={U2}=cryptroot" in dropin and U1 not in dropin
    # later, under --root nothing says which volume holds /: the drop-in keeps what it listed
    v.boot = False
    assert make_plan(str(root), Discovery([v, vol()], "arguments")).changed() == []
    # and a run for another volume only keeps it too
    assert make_plan(str(root), Discovery([vol()], "arguments")).changed() == []


def test_kernel_install_cmdline_keeps_other_words_and_is_idempotent(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/kernel").mkdir()
    original = f'root=UUID=x ro quiet rd.luks.uuid={U2} init="/sbin/my init"\n'
    (root / "etc/kernel/cmdline").write_text(original)
    (root / "usr/lib/modules/6.1.0-9-amd64").mkdir(parents=True)
    (root / "usr/lib/modules/6.1.0-9-amd64/vmlinuz").write_text("")
    v = vol(U2, ("systemd-tpm2",))
    plan = make_plan(str(root), Discovery([v], "arguments"))
    assert plan.bootloader == "kernel-install"
    assert ["kernel-install", "add", "6.1.0-9-amd64", "/usr/lib/modules/6.1.0-9-amd64/vmlinuz"] in plan.regenerate
    apply_plan(plan)
    words = (root / "etc/kernel/cmdline").read_text().split()
    assert words[:3] == ["root=UUID=x", "ro", "quiet"] and 'init="/sbin/my' in words
    assert f"rd.luks.options={U2}=discard,tpm2-device=auto" in words
    assert make_plan(str(root), Discovery([v], "arguments")).changed() == []


def test_merge_cmdline_leaves_a_line_that_already_has_the_words_byte_for_byte() -> None:
    words = [f"rd.luks.uuid={U1}", f"rd.luks.name={U1}=r"]
    text = f"  quiet rd.luks.uuid={U1}   rd.luks.name={U1}=r splash\n"
    assert bootloader.merge_cmdline(text, words) == text
    assert bootloader.merge_cmdline("quiet\n", words) == f"quiet rd.luks.uuid={U1} rd.luks.name={U1}=r\n"


def test_no_boot_loader_found_prints_the_options_to_add(tmp_path: Path) -> None:
    root = tree(tmp_path)
    plan = make_plan(str(root), Discovery([vol(boot=True)], "arguments"))
    assert any(f"rd.luks.uuid={U1}" in n and "yourself" in n for n in plan.notes)


# --- templates ------------------------------------------------------------------------------------------------


def test_admin_template_override_is_used(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/tpmseal/templates").mkdir(parents=True)
    (root / "etc/tpmseal/templates/crypttab-entry.j2").write_text(
        "{{ name }}\tUUID={{ uuid }}\tnone\t{{ (options + ['x-systemd.device-timeout=0']) | join(',') }}\n"
    )
    apply_plan(make_plan(str(root), Discovery([vol()], "arguments")))
    assert (
        f"luks-{U1}\tUUID={U1}\tnone\tluks,discard,x-systemd.device-timeout=0\n" in (root / "etc/crypttab").read_text()
    )


@pytest.mark.parametrize(
    "body", ["{{ name }} UUID=wrong none luks\n", "{{ name }} UUID={{ uuid }} none a b\n", "{{ nosuchvar }}\n"]
)
def test_broken_template_override_is_refused_naming_the_template(tmp_path: Path, body: str) -> None:
    root = tree(tmp_path)
    (root / "etc/tpmseal/templates").mkdir(parents=True)
    (root / "etc/tpmseal/templates/crypttab-entry.j2").write_text(body)
    with pytest.raises(TemplateError) as e:
        make_plan(str(root), Discovery([vol()], "arguments"))
    assert "etc/tpmseal/templates/crypttab-entry.j2" in e.value.message
    assert (root / "etc/crypttab").read_text() == ADMIN


def test_packaged_templates_render_the_boot_path_lines() -> None:
    t = Templates("/nonexistent")
    assert t.entry("cryptroot", U1, ["luks", "discard"]) == f"cryptroot UUID={U1} none luks,discard\n"
    assert t.cmdline_words([BootVolume(U1, "r", ())]) == [f"rd.luks.uuid={U1}", f"rd.luks.name={U1}=r"]


# --- files: atomic, confined to --root ------------------------------------------------------------------------


def test_atomic_write_keeps_mode_owner_and_one_backup(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "f"
    p.parent.mkdir()
    p.write_text("one\n")
    os.chmod(p, 0o600)
    t = Target(str(tmp_path), "/etc/f")
    assert atomic_write(t, b"two\n") and atomic_write(t, b"three\n")
    assert p.read_text() == "three\n" and (tmp_path / f"etc/f{BACKUP_SUFFIX}").read_text() == "two\n"
    assert os.stat(p).st_mode & 0o777 == 0o600 and os.stat(tmp_path / f"etc/f{BACKUP_SUFFIX}").st_mode & 0o777 == 0o600
    assert not atomic_write(t, b"three\n")
    assert sorted(os.listdir(p.parent)) == ["f", f"f{BACKUP_SUFFIX}"]


def test_killed_between_write_and_rename_leaves_the_old_file_intact(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "crypttab"
    p.parent.mkdir()
    p.write_text(ADMIN)
    code = (
        "from tpmseal.config.files import Target, atomic_write\n"
        f"atomic_write(Target({str(tmp_path)!r}, '/etc/crypttab'), b'new content\\n')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_ENV: "before-rename"})
    assert r.returncode == -9  # SIGKILL, no cleanup ran
    assert p.read_text() == ADMIN
    assert (p.parent / f".crypttab{TEMP_SUFFIX}").read_bytes() == b"new content\n"  # written, never renamed
    # the next run cleans up and succeeds
    assert atomic_write(Target(str(tmp_path), "/etc/crypttab"), b"new content\n")
    assert p.read_text() == "new content\n" and not (p.parent / f".crypttab{TEMP_SUFFIX}").exists()


def test_root_refuses_a_symlink_that_leads_out_of_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "crypttab").write_text("precious\n")
    root = tree(tmp_path, None)
    (root / "etc/crypttab").symlink_to(outside / "crypttab")
    with pytest.raises(UnsafePath):
        apply_plan(make_plan(str(root), Discovery([vol()], "arguments")))
    (root / "etc/crypttab").unlink()
    (root / "etc/default").symlink_to(outside)
    (root / "etc/kernel").mkdir()
    with pytest.raises(UnsafePath):
        atomic_write(Target(str(root), "/etc/default/grub.d/tpmseal.cfg"), b"x\n")
    assert (outside / "crypttab").read_text() == "precious\n" and not (outside / "grub.d").exists()


def test_apply_under_root_writes_only_inside_the_tree(tmp_path: Path) -> None:
    root = tree(tmp_path, grub=True)
    before = {p for p in tmp_path.rglob("*")}
    apply_plan(make_plan(str(root), Discovery([vol(U2, boot=True, mapped_name="r"), vol()], "arguments")))
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(root in p.parents for p in new)
    assert {str(p.relative_to(root)) for p in new} == {
        "etc/crypttab.tpmseal-bak", "etc/default/grub.d", "etc/default/grub.d/tpmseal.cfg",
    }  # fmt: skip


def test_write_refuses_when_the_file_changed_since_it_was_read(tmp_path: Path) -> None:
    root = tree(tmp_path)
    plan = make_plan(str(root), Discovery([vol()], "arguments"))
    (root / "etc/crypttab").write_text(ADMIN + "late /dev/sdz none luks\n")
    with pytest.raises(Exception, match="changed while tpmseal was working"):
        apply_plan(plan)
    assert (root / "etc/crypttab").read_text().endswith("late /dev/sdz none luks\n")


# --- the CLI --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_discovery(monkeypatch: pytest.MonkeyPatch) -> list[LuksVolume]:
    vols = [vol()]
    monkeypatch.setattr(command, "_discover", lambda args: Discovery(vols, "blkid", ["no udev database: used blkid"]))
    return vols


def test_cli_diff_shows_the_line_apply_writes_it_and_a_second_apply_changes_nothing(
    tmp_path: Path, fake_discovery: list[LuksVolume], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(tmp_path)
    assert main(["config", "diff", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert f"+luks-{U1} UUID={U1} none luks,discard" in out and "no udev database" in err
    assert (root / "etc/crypttab").read_text() == ADMIN
    assert main(["config", "apply", "--root", str(root)]) == 0
    out, _ = capsys.readouterr()
    assert "wrote" in out and f"not run (--root {root})" in out and "dracut --regenerate-all --force" in out
    assert main(["config", "apply", "--root", str(root)]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_cli_show_json_reports_volumes_files_and_the_blkid_fallback(
    tmp_path: Path, fake_discovery: list[LuksVolume], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    root = tree(tmp_path)
    assert main(["config", "show", "--json", "--root", str(root)]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["discovery"] == "blkid" and j["notes"] == ["no udev database: used blkid"]
    assert j["volumes"][0]["name"] == f"luks-{U1}" and j["files"] == [
        {"path": "/etc/crypttab", "exists": True, "changed": True}
    ]


def test_cli_never_runs_regenerate_commands_with_root(
    tmp_path: Path, fake_discovery: list[LuksVolume], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tpmseal.proc

    ran: list[object] = []
    monkeypatch.setattr(tpmseal.proc, "run", lambda *a, **k: ran.append(a))
    assert main(["config", "apply", "--regenerate", "--root", str(tree(tmp_path))]) == 0
    assert ran == []


def test_cli_missing_regenerate_tool_is_a_clear_message(
    tmp_path: Path, fake_discovery: list[LuksVolume], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(Plan, "live", property(lambda self: True))  # pretend the tree is the running system
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["config", "apply", "--regenerate", "--root", str(tree(tmp_path))]) == 9
    err = capsys.readouterr().err
    assert "dracut is not installed" in err and "tpmseal: error: could not regenerate: dracut not installed" in err
    assert "Traceback" not in err


def test_cli_parse_error_exits_1_pointing_at_the_line(
    tmp_path: Path, fake_discovery: list[LuksVolume], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(tmp_path, "ok /dev/a\nbad\n")
    assert main(["config", "apply", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{root}/etc/crypttab:2:" in err and "hint: fix line 2" in err


def test_config_help_imports_neither_jinja2_nor_pyudev() -> None:
    code = (
        "import sys\nfrom tpmseal.cli import main\n"
        "for argv in (['--help'], ['config', '--help'], ['config', 'apply', '--help']):\n"
        "    try: main(argv)\n    except SystemExit: pass\n"
        "print([m for m in ('jinja2', 'pyudev') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_regenerate_prefers_update_grub_and_update_initramfs_when_installed(tmp_path: Path) -> None:
    for prog in ("update-grub", "update-initramfs"):
        p = tmp_path / "usr/sbin" / prog
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    assert bootloader.regenerate_commands(str(tmp_path), "grub", True, True) == [
        ["update-initramfs", "-u", "-k", "all"], ["update-grub"],
    ]  # fmt: skip
    assert shutil.which("true")  # (the tree, not our PATH, decides)
