# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from tpmseal.errors import CommandFailed, MissingTool
from tpmseal.proc import SecretFd, run
from tpmseal.recovery import ALPHABET, generate_recovery_key
from tpmseal.secret import Secret
from tpmseal.unlock import keyslot_passphrase
from tpmseal.wipe import parse_wipe_spec

pytestmark = pytest.mark.unit


def test_secret_buffer_is_zero_after_the_context() -> None:
    s = Secret.random(32)
    buf = s.buffer
    with s:
        assert any(buf)
    assert buf == bytearray(32)
    assert "Secret(<" in repr(Secret(b"abc")) and "abc" not in repr(Secret(b"abc"))


@pytest.mark.parametrize("n", range(0, 40))
def test_keyslot_passphrase_is_base64(n: int) -> None:
    raw = bytes(range(n))
    with keyslot_passphrase(Secret(raw)) as p:
        assert bytes(p.buffer) == base64.b64encode(raw)


def test_recovery_key_shape_and_alphabet() -> None:
    keys = set()
    for _ in range(50):
        with generate_recovery_key() as k:
            text = k.buffer.decode()
        assert re.fullmatch(r"([0-9a-z]{4}-){7}[0-9a-z]{4}", text)
        assert set(text.replace("-", "")) <= set(ALPHABET.decode())
        keys.add(text)
    assert len(keys) == 50


def test_secrets_reach_the_child_on_pipes_not_argv() -> None:
    r = run(["sh", "-c", 'cat "$1"; printf "|"; cat', "sh", SecretFd(0)], stdin=b"on-stdin", secrets=[b"on-fd"])
    assert r.stdout == "on-fd|on-stdin"
    assert all("on-fd" not in a and "on-stdin" not in a for a in r.argv)


def test_child_environment_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPMSEAL_SHOULD_NOT_LEAK", "x")
    assert "TPMSEAL_SHOULD_NOT_LEAK" not in run(["env"]).stdout


def test_failure_carries_stderr_and_exit_code() -> None:
    with pytest.raises(CommandFailed) as e:
        run(["sh", "-c", "echo boom >&2; exit 3"])
    assert e.value.returncode == 3 and "boom" in e.value.message


def test_missing_program_is_missing_tool() -> None:
    with pytest.raises(MissingTool):
        run(["tpmseal-no-such-program"])


@pytest.mark.parametrize(
    ("text", "words", "indexes"),
    [("all", {"all"}, set()), ("tpm2,1,3", {"tpm2"}, {1, 3}), ("empty, password", {"empty", "password"}, set())],
)
def test_wipe_spec(text: str, words: set[str], indexes: set[int]) -> None:
    spec = parse_wipe_spec(text)
    assert spec.words == words and spec.indexes == indexes


@pytest.mark.parametrize("text", ["", "32", "fido3", "-1"])
def test_wipe_spec_rejects(text: str) -> None:
    from tpmseal.errors import UsageError

    with pytest.raises(UsageError):
        parse_wipe_spec(text)


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from tpmseal.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('tpm2_pytss', 'cryptography', 'jinja2', 'pyudev') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
