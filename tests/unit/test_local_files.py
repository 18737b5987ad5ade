# SPDX-License-Identifier: LGPL-2.1-or-later
"""Local files another uid can plant or point elsewhere: the volume lock directory and lock files.

Each attack has a control: the same step against a directory/file that is not hostile works (or, for a
link, the weakened open without O_NOFOLLOW really writes through it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nobody import NOBODY, needs_root, nobody_dir, run_cli_as_nobody

from tpmseal.lock import UnsafeLockDir, volume_lock

pytestmark = pytest.mark.unit


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    v = tmp_path / "disk.img"
    v.write_bytes(b"\0" * 4096)
    return v


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("TPMSEAL_RUNTIME_DIR", str(d))
    return d


def lock_name(volume: Path) -> str:
    st = volume.stat()
    return f"volume-{st.st_dev}-{st.st_ino}.lock"


def test_control_a_private_lock_dir_is_created_0700_and_used(volume: Path, runtime: Path) -> None:
    with volume_lock(str(volume)):
        pass
    assert runtime.stat().st_mode & 0o777 == 0o700
    assert (runtime / lock_name(volume)).stat().st_mode & 0o777 == 0o600


def test_a_lock_dir_owned_by_another_uid_is_refused(volume: Path, runtime: Path) -> None:
    needs_root()
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY.pw_uid, NOBODY.pw_gid)  # planted by nobody before root's first run
    with pytest.raises(UnsafeLockDir, match=f"belongs to uid {NOBODY.pw_uid}"), volume_lock(str(volume)):
        pass
    assert not (runtime / lock_name(volume)).exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_lock_dir_writable_by_group_or_others_is_refused(volume: Path, runtime: Path, mode: int) -> None:
    runtime.mkdir()
    runtime.chmod(mode)
    with pytest.raises(UnsafeLockDir, match="writable by group or others"), volume_lock(str(volume)):
        pass
    runtime.chmod(0o755)  # control: the same directory, writable only by its owner
    with volume_lock(str(volume)):
        pass


def test_a_symlinked_lock_dir_is_not_followed(volume: Path, runtime: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    runtime.symlink_to(elsewhere)
    with pytest.raises(UnsafeLockDir, match="symbolic link"), volume_lock(str(volume)):
        pass
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_planted_as_the_lock_file_is_not_followed(
    volume: Path, runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (runtime / lock_name(volume)).symlink_to(victim)
    with pytest.raises(UnsafeLockDir, match="symbolic link"), volume_lock(str(volume)):
        pass
    assert not victim.exists()
    monkeypatch.setattr(os, "O_NOFOLLOW", 0)  # control: the open of old, without O_NOFOLLOW
    with volume_lock(str(volume)):
        pass
    assert victim.exists()  # it created the file the link points to


def test_a_lock_file_owned_by_another_uid_is_refused(volume: Path, runtime: Path) -> None:
    needs_root()
    runtime.mkdir(mode=0o700)
    planted = runtime / lock_name(volume)
    planted.touch(mode=0o600)
    os.chown(planted, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(UnsafeLockDir, match="belongs to uid"), volume_lock(str(volume)):
        pass


def test_a_lock_path_that_is_a_fifo_is_refused(volume: Path, runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    os.mkfifo(runtime / lock_name(volume), 0o600)
    with pytest.raises(UnsafeLockDir, match="not a regular file"), volume_lock(str(volume)):
        pass


@pytest.fixture
def nobody_tmp() -> Iterator[Path]:
    with nobody_dir() as d:
        yield d


def test_a_non_root_caller_does_not_touch_a_root_made_run_tpmseal(nobody_tmp: Path) -> None:
    needs_root()
    os.makedirs("/run/tpmseal", mode=0o700, exist_ok=True)  # what a root tpmseal leaves behind
    image = nobody_tmp / "disk.img"
    image.write_bytes(b"\0" * 4096)
    os.chown(image, NOBODY.pw_uid, NOBODY.pw_gid)
    p = run_cli_as_nobody("wipe-slot", str(image), "--wipe-slot=empty", env={"TMPDIR": str(nobody_tmp)})
    assert "Traceback" not in p.stderr and "lock" not in p.stderr, p.stderr
    assert p.returncode == 3, p.stderr  # it got past the lock, to "not a LUKS2 volume"
    private = nobody_tmp / f"tpmseal-{NOBODY.pw_uid}"
    assert private.stat().st_uid == NOBODY.pw_uid and private.stat().st_mode & 0o777 == 0o700
    # control: the root-made directory is indeed unusable for nobody (the traceback of old came from here)
    q = run_cli_as_nobody("wipe-slot", str(image), "--wipe-slot=empty", env={"TPMSEAL_RUNTIME_DIR": "/run/tpmseal"})
    assert q.returncode == 1 and "Traceback" not in q.stderr, q.stderr
    assert "tpmseal: error: no usable directory for the volume lock (/run/tpmseal: Permission denied)" in q.stderr


def test_a_per_uid_dir_squatted_by_another_uid_gives_a_clear_error(nobody_tmp: Path) -> None:
    needs_root()
    image = nobody_tmp / "disk.img"
    image.write_bytes(b"\0" * 4096)
    os.chown(image, NOBODY.pw_uid, NOBODY.pw_gid)
    (nobody_tmp / f"tpmseal-{NOBODY.pw_uid}").mkdir(mode=0o777)  # root (the other uid here) got there first
    os.chmod(nobody_tmp / f"tpmseal-{NOBODY.pw_uid}", 0o777)
    p = run_cli_as_nobody("wipe-slot", str(image), "--wipe-slot=empty", env={"TMPDIR": str(nobody_tmp)})
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "belongs to uid 0, not to uid" in p.stderr and "TPMSEAL_RUNTIME_DIR" in p.stderr


# --------------------------------------------------------------------------- creds install --root

UNIT = "db.service"


def image_root(tmp_path: Path, link: str) -> tuple[Path, Path]:
    """An image root whose ``link`` (etc/tpmseal or etc/systemd/system) is a symlink to a host directory."""
    root, host = tmp_path / "image", tmp_path / "host"
    host.mkdir()
    (root / Path(link).parent).mkdir(parents=True)
    (root / link).symlink_to(host)
    return root, host


@pytest.mark.parametrize("link", ["etc/tpmseal", "etc/systemd/system", "etc"])
def test_creds_install_does_not_follow_a_symlink_out_of_the_root(
    tmp_path: Path, link: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tpmseal.config.files import UnsafePath
    from tpmseal.creds import store

    root, host = image_root(tmp_path, link)
    with pytest.raises(UnsafePath, match="outside"):
        store.install(root, UNIT, "db", b"credential")
    assert list(host.rglob("*")) == []
    monkeypatch.setattr(store, "contained", lambda root, path: None)  # control: without the check
    store.install(root, UNIT, "db", b"credential")
    assert list(host.rglob("*.cred")) or list(host.rglob("*.conf"))  # it wrote into the host


def test_creds_install_refuses_a_symlinked_credential_file(tmp_path: Path) -> None:
    from tpmseal.config.files import UnsafePath
    from tpmseal.creds import store

    root = tmp_path / "image"
    cred = store.credential_path(root, UNIT, "db")
    cred.parent.mkdir(parents=True)
    target = tmp_path / "host-file"
    cred.symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        store.install(root, UNIT, "db", b"credential")
    assert not target.exists()


def test_creds_uninstall_does_not_delete_through_a_symlink_out_of_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tpmseal.config.files import UnsafePath
    from tpmseal.creds import store

    root, host = image_root(tmp_path, "etc/tpmseal")
    victim = host / "creds" / UNIT / "db.cred"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the host's own credential")
    with pytest.raises(UnsafePath):
        store.uninstall(root, UNIT, "db")
    assert victim.exists()
    monkeypatch.setattr(store, "contained", lambda root, path: None)  # control
    store.uninstall(root, UNIT, "db")
    assert not victim.exists()


def test_control_creds_install_into_a_plain_root_works(tmp_path: Path) -> None:
    from tpmseal.creds import store

    done = store.install(tmp_path, UNIT, "db", b"credential")
    assert Path(done.credential).read_bytes() == b"credential" and Path(done.dropin).exists()


# --------------------------------------------------------------------------- the policy signing key


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "etc-tpmseal"
    d.mkdir(mode=0o700)
    return d


def test_control_the_policy_key_is_created_0400_and_loads(keydir: Path) -> None:
    from tpmseal.update.signed import ensure_policy_key, load_policy_key

    old = os.umask(0)  # a careless umask does not widen it
    try:
        key, created = ensure_policy_key(str(keydir / "policy-key.pem"))
    finally:
        os.umask(old)
    assert created
    assert (keydir / "policy-key.pem").stat().st_mode & 0o777 == 0o400
    assert load_policy_key(str(keydir / "policy-key.pem")).name == key.name


def test_a_dangling_symlink_planted_as_the_policy_key_is_not_written_through(keydir: Path, tmp_path: Path) -> None:
    from tpmseal.update.signed import PolicyKeyError, ensure_policy_key

    target = tmp_path / "attacker-reads-this.pem"
    (keydir / "policy-key.pem").symlink_to(target)
    with pytest.raises(PolicyKeyError, match="symbolic link"):
        ensure_policy_key(str(keydir / "policy-key.pem"))
    assert not target.exists()


def test_a_symlinked_policy_key_is_refused_even_when_it_points_to_a_good_key(keydir: Path, tmp_path: Path) -> None:
    from tpmseal.update.signed import PolicyKeyError, ensure_policy_key, load_policy_key

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    ensure_policy_key(str(real / "k.pem"))
    (keydir / "policy-key.pem").symlink_to(real / "k.pem")
    with pytest.raises(PolicyKeyError, match="symbolic link"):
        load_policy_key(str(keydir / "policy-key.pem"))
    load_policy_key(str(real / "k.pem"))  # control: the key itself is fine


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644])
def test_a_policy_key_readable_or_writable_by_others_is_refused(keydir: Path, mode: int) -> None:
    from tpmseal.update.signed import PolicyKeyError, ensure_policy_key, load_policy_key

    path = keydir / "policy-key.pem"
    ensure_policy_key(str(path))
    path.chmod(mode)
    with pytest.raises(PolicyKeyError, match="by group or others"):
        load_policy_key(str(path))
    path.chmod(0o400)  # control: the same key, private again
    load_policy_key(str(path))


def test_a_policy_key_owned_by_another_uid_is_refused(keydir: Path) -> None:
    needs_root()
    from tpmseal.update.signed import PolicyKeyError, ensure_policy_key, load_policy_key

    path = keydir / "policy-key.pem"
    ensure_policy_key(str(path))
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)  # nobody's key, swapped in: it would approve nobody's states
    with pytest.raises(PolicyKeyError, match=f"belongs to uid {NOBODY.pw_uid}"):
        load_policy_key(str(path))
    os.chown(path, 0, 0)  # control
    load_policy_key(str(path))


def test_a_policy_key_in_a_directory_others_can_write_is_refused(keydir: Path) -> None:
    from tpmseal.update.signed import PolicyKeyError, ensure_policy_key, load_policy_key

    path = keydir / "policy-key.pem"
    ensure_policy_key(str(path))
    keydir.chmod(0o777)  # anyone could replace the key file
    with pytest.raises(PolicyKeyError, match="writable by group or others"):
        load_policy_key(str(path))
    with pytest.raises(PolicyKeyError, match="writable by group or others"):
        ensure_policy_key(str(keydir / "new.pem"))
    assert not (keydir / "new.pem").exists()
    keydir.chmod(0o755)  # control
    load_policy_key(str(path))


# --------------------------------------------------------------------------- --tpm2-device on the wrong file


@pytest.fixture
def luks1(tmp_path: Path) -> Path:
    import shutil
    import subprocess

    if not shutil.which("cryptsetup"):
        pytest.skip("cryptsetup missing")
    img = tmp_path / "disk.img"
    img.write_bytes(b"\0" * (4 << 20))
    subprocess.run(
        ["cryptsetup", "luksFormat", "--batch-mode", "--type=luks1", "--pbkdf-force-iterations=1000",
         "--key-file=-", str(img)],
        input=b"passphrase", check=True, capture_output=True,
    )  # fmt: skip
    return img


def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("spelling", ["{}", "device:{}", "swtpm:path={}", "mssim:path={}"])
def test_tpm_info_refuses_a_luks_image_as_tpm2_device_and_leaves_it_byte_for_byte(luks1: Path, spelling: str) -> None:
    from support import run_cli

    before = digest(luks1)
    p = run_cli("tpm", "info", f"--tpm2-device={spelling.format(luks1)}", check=2)
    assert "it is a regular file" in p.stderr and "nothing was written" in p.stderr, p.stderr
    assert digest(luks1) == before
    assert luks1.read_bytes()[:6] == b"LUKS\xba\xbe"


@pytest.mark.parametrize(
    "spelling",
    ["libtss2-tcti-device.so.0:{}", "libtss2-tcti-device.so:{}",
     "/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0:{}", "pcap:device:{}", "cmd:cat > {}"],
)  # fmt: skip
def test_library_and_wrapper_spellings_of_the_device_tcti_are_refused(luks1: Path, spelling: str) -> None:
    """Review R6: the TCTI loader takes library names and wrappers as well; none of them may reach a file."""
    from support import run_cli

    before = digest(luks1)
    p = run_cli("tpm", "info", f"--tpm2-device={spelling.format(luks1)}", check=None)
    assert p.returncode in (2, 4), p.stderr
    assert "is not one tpmseal accepts" in p.stderr or "TPM character device" in p.stderr, p.stderr
    assert digest(luks1) == before


def test_control_a_library_spelling_does_write_into_the_image_without_the_name_check(
    luks1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for R6: with the name allowlist removed, the library spelling writes TPM command bytes."""
    from tpmseal.errors import TpmsealError
    from tpmseal.tpm import device

    monkeypatch.setattr(device, "TCTI_NAMES", (*device.TCTI_NAMES, "libtss2-tcti-device.so.0"))
    try:
        with device.open_tpm(f"libtss2-tcti-device.so.0:{luks1}"):
            pass
    except TpmsealError:
        pass
    assert luks1.read_bytes()[:2] == b"\x80\x01"  # a TPM2_ST_NO_SESSIONS command over the LUKS magic


def test_open_tpm_refuses_a_regular_file_before_the_tcti_opens_it(luks1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpmseal.errors import TpmsealError, TpmUnavailable
    from tpmseal.tpm import device

    before = digest(luks1)
    for spelling in (str(luks1), f"device:{luks1}"):
        with pytest.raises(TpmUnavailable, match="regular file"), device.open_tpm(spelling):
            pass
    assert digest(luks1) == before
    # control: without the check the device TCTI really writes TPM command bytes into the image
    monkeypatch.setattr(device, "check_device", lambda *a, **k: None)
    try:
        with device.open_tpm(f"device:{luks1}"):
            pass
    except TpmsealError:
        pass
    assert digest(luks1) != before


def test_character_devices_sockets_and_tcti_strings_are_accepted(tmp_path: Path) -> None:
    import socket

    from tpmseal.errors import TpmUnavailable
    from tpmseal.tpm.device import check_device, tcti_for

    sock = tmp_path / "swtpm.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(sock))
        for ok in ("/dev/null", "device:/dev/null", f"swtpm:path={sock}", "swtpm:host=localhost,port=2321", "mssim"):
            check_device(ok)
        assert tcti_for("/dev/null") == "device:/dev/null"
        with pytest.raises(TpmUnavailable, match="is a socket") as e:
            check_device(str(sock))  # a bare socket path: told how to spell it
        assert f"swtpm:path={sock}" in e.value.hint


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_other_non_devices_are_refused_as_tpm2_device(tmp_path: Path, kind: str) -> None:
    from tpmseal.errors import TpmUnavailable
    from tpmseal.tpm.device import check_device

    p = tmp_path / kind
    p.mkdir() if kind == "dir" else os.mkfifo(p)
    with pytest.raises(TpmUnavailable, match=f"it is a {'directory' if kind == 'dir' else 'FIFO'}"):
        check_device(f"device:{p}")


def test_a_missing_xdg_runtime_dir_is_not_created_and_the_per_uid_dir_is_used(nobody_tmp: Path) -> None:
    needs_root()
    image = nobody_tmp / "disk.img"
    image.write_bytes(b"\0" * 4096)
    os.chown(image, NOBODY.pw_uid, NOBODY.pw_gid)
    xdg = nobody_tmp / "run-user"  # set, but (as with su without a session) not there
    env = {"TMPDIR": str(nobody_tmp), "XDG_RUNTIME_DIR": str(xdg)}
    p = run_cli_as_nobody("wipe-slot", str(image), "--wipe-slot=empty", env=env)
    assert p.returncode == 3 and "lock" not in p.stderr, p.stderr
    assert not xdg.exists()
    assert (nobody_tmp / f"tpmseal-{NOBODY.pw_uid}").is_dir()
    xdg.mkdir(mode=0o700)
    os.chown(xdg, NOBODY.pw_uid, NOBODY.pw_gid)
    p = run_cli_as_nobody("wipe-slot", str(image), "--wipe-slot=empty", env=env)
    assert p.returncode == 3, p.stderr
    assert (xdg / "tpmseal").stat().st_uid == NOBODY.pw_uid  # the session's runtime directory comes first
