# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one place that runs external programs.

argv is always a list (never a shell). Secrets reach the child only through pipes: on stdin, or on an
inherited pipe fd that the child opens as ``/dev/fd/N`` (write ``SecretFd(i)`` in argv for the i-th
secret). argv, which may be logged with --debug, therefore never holds key material. The child gets a
small environment allow-list, not ours.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from tpmseal.errors import CommandFailed, MissingTool

log = logging.getLogger("tpmseal.proc")

# Variables a child may inherit; everything else (and anything we set ourselves) is dropped.
ENV_ALLOW = ("PATH", "TSS2_LOG", "TPM2TOOLS_TCTI", "SYSTEMD_LOG_LEVEL")

# Debian package that provides a program, for the hint of MissingTool.
PACKAGE_OF = {
    "cryptsetup": "cryptsetup-bin",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "tpm2_pcrextend": "tpm2-tools",
}

PIPE_LIMIT = 65536  # a pipe holds this much without a reader; secrets for programs are far smaller


@dataclass(frozen=True)
class SecretFd:
    """Placeholder in argv for the read end of a pipe that carries secrets[index]."""

    index: int


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _pipe_with(data: bytes | bytearray) -> int:
    if len(data) > PIPE_LIMIT:
        raise ValueError("secret too large for a pipe")
    r, w = os.pipe()
    try:
        view = memoryview(data)
        while view:
            n = os.write(w, view)
            view = view[n:]
    finally:
        os.close(w)
    return r


def run(
    argv: Sequence[str | SecretFd],
    *,
    stdin: bytes | bytearray | None = None,
    secrets: Sequence[bytes | bytearray] = (),
    ok_codes: Sequence[int] = (0,),
    env: dict[str, str] | None = None,
    hint: str | None = None,
) -> Result:
    """Run a program; raise CommandFailed unless its exit code is in ok_codes.

    ``stdin`` (which may be a secret) and each of ``secrets`` are written into pipes before the child
    starts; nothing secret is ever put into argv or the environment.
    """
    fds: list[int] = []
    stdin_fd: int | None = None
    try:
        for s in secrets:
            fds.append(_pipe_with(s))
        final = [f"/dev/fd/{fds[a.index]}" if isinstance(a, SecretFd) else a for a in argv]
        stdin_fd = _pipe_with(stdin) if stdin is not None else None
        child_env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
        child_env["LC_ALL"] = "C"
        if env:
            child_env.update(env)
        log.debug("running: %s", " ".join(final))
        try:
            cp = _run_to_the_end(final, stdin_fd, fds, child_env)
        except FileNotFoundError:
            prog = final[0]
            pkg = PACKAGE_OF.get(os.path.basename(prog))
            raise MissingTool(
                f"{prog} is not installed or not on PATH",
                f"install it (Debian: apt install {pkg})" if pkg else "install it",
            ) from None
    finally:
        for fd in fds:
            os.close(fd)
        if stdin_fd is not None:
            os.close(stdin_fd)
    out = cp.stdout.decode("utf-8", "replace")
    err = cp.stderr.decode("utf-8", "replace")
    if cp.returncode not in ok_codes:
        raise CommandFailed(final, cp.returncode, err, hint)
    return Result(final, cp.returncode, out, err)


def _run_to_the_end(
    argv: list[str], stdin_fd: int | None, fds: list[int], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion. Ctrl-C or SIGTERM (raised here as KeyboardInterrupt) does not kill the
    child halfway through a header write: it is let finish, then the interrupt goes on to the caller, which
    can roll back what the child did. (A child killed by a signal shows as returncode -N.)"""
    p = subprocess.Popen(
        argv,
        stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=fds,
        env=env,
    )
    interrupted = False
    while True:
        try:
            out, err = p.communicate()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def start(argv: Sequence[str], log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running helper (e.g. swtpm for the demo) as our child; the caller stops it."""
    log.debug("starting: %s", " ".join(argv))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    except FileNotFoundError:
        pkg = PACKAGE_OF.get(os.path.basename(argv[0]))
        raise MissingTool(
            f"{argv[0]} is not installed or not on PATH",
            f"install it (Debian: apt install {pkg})" if pkg else "install it",
        ) from None
    finally:
        if log_path and not isinstance(out, int):
            out.close()
