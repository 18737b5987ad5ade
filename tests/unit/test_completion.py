# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shell completion (contrib/completion/): the committed scripts are what the generator makes from today's
parser, so they cannot drift from the command line, and the bash one completes what a user types."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from support import need

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPLETION = ROOT / "contrib" / "completion"
BASH = COMPLETION / "tpmseal.bash"
ZSH = COMPLETION / "_tpmseal"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tpmseal_completion_generate", COMPLETION / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_committed_completion_is_up_to_date(shell: str) -> None:
    path = generate.OUTPUTS[shell]
    assert path.exists(), f"{path} missing: run python contrib/completion/generate.py"
    assert path.read_text(encoding="utf-8") == generate.render(shell), (
        f"{path.name} differs from the parser: run python contrib/completion/generate.py"
    )


def test_zsh_file_starts_with_compdef() -> None:
    assert ZSH.read_text(encoding="utf-8").splitlines()[0] == "#compdef tpmseal"


def complete(words: list[str], cwd: Path | None = None) -> list[str]:
    """What bash offers for the last word of ``words`` (the word being completed, possibly '')."""
    script = (
        f"source {shlex.quote(str(BASH))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        '_shtab_tpmseal tpmseal "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_bash_registers_the_function() -> None:
    need("bash")
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"source {shlex.quote(str(BASH))}; complete -p tpmseal"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "-F _shtab_tpmseal tpmseal" in r.stdout


def test_bash_completes_subcommand() -> None:
    need("bash")
    assert complete(["tpmseal", "en"]) == ["enroll"]
    assert "install-system-files" in complete(["tpmseal", ""])


def test_bash_completes_options() -> None:
    need("bash")
    offered = complete(["tpmseal", "enroll", "--tpm2-"])
    assert "--tpm2-device" in offered
    assert set(offered) == {"--tpm2-device", "--tpm2-pcrs", "--tpm2-public-key-pcrs", "--tpm2-with-pin"}


def test_bash_completes_choices() -> None:
    need("bash")
    assert complete(["tpmseal", "enroll", "--token-type", "sys"]) == ["systemd-tpm2"]


def test_bash_completes_devices_as_files(tmp_path: Path) -> None:
    need("bash")
    (tmp_path / "disk.img").write_bytes(b"")
    (tmp_path / "tpmrm0").write_bytes(b"")
    assert complete(["tpmseal", "enroll", "di"], cwd=tmp_path) == ["disk.img"]
    assert complete(["tpmseal", "list", "--tpm2-device", "tpm"], cwd=tmp_path) == ["tpmrm0"]
    assert complete(["tpmseal", "enroll", "x", "--unlock-key-file", "d"], cwd=tmp_path) == ["disk.img"]


def test_bash_completes_root_as_directory(tmp_path: Path) -> None:
    need("bash")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stale.txt").write_bytes(b"")
    assert complete(["tpmseal", "install-system-files", "--root", "st"], cwd=tmp_path) == ["stage"]


def test_zsh_script_parses() -> None:
    need("zsh")
    r = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
