# SPDX-License-Identifier: LGPL-2.1-or-later
"""A LUKS2 volume, driven through the real ``cryptsetup`` tool.

Metadata is read as JSON (``luksDump --dump-json-metadata``), never scraped from text. Keys go to
cryptsetup on stdin or on an inherited pipe (``/dev/fd/N``); none is ever in argv or in a file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from tpmseal.errors import CommandFailed, NotLuks2, TokenCorrupt, VolumeError
from tpmseal.proc import SecretFd, run

CRYPTSETUP = "cryptsetup"
LUKS2_KEYSLOTS = 32
LUKS2_TOKENS = 32

# Keyslots for TPM-sealed and generated recovery keys hold 256 (resp. 160) random bits: a slow KDF
# adds nothing against guessing such a key, while it costs seconds (and, for argon2, a GiB) at every
# boot. PBKDF2 with cryptsetup's minimum iteration count is what systemd-cryptenroll uses too.
RANDOM_KEY_HASH = "sha512"
RANDOM_KEY_ITERATIONS = 1000  # what systemd-cryptenroll writes, and tpmseal before markers had a fingerprint
RANDOM_KEY_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", RANDOM_KEY_HASH]
# tpmseal's own keyslots take an iteration count drawn from this range (exclusive of 1000) and record it in
# the pending marker written before them: the fingerprint that proves a marked keyslot is tpmseal's own
# (see luks/tokens.py, pending_marker). At most ~9 ms more of PBKDF2-SHA512 per unlock.
FINGERPRINT_ITERATIONS = range(RANDOM_KEY_ITERATIONS + 1, RANDOM_KEY_ITERATIONS + 8193)

# The LUKS2 binary header's sequence id (big-endian u64 at offset 16): +1 for every header write.
LUKS2_SEQID_OFFSET = 16

# The binary LUKS header (LUKS1 and LUKS2 alike): magic at 0, UUID (ASCII, NUL-padded) at 168.
LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_UUID_OFFSET = 168
LUKS_UUID_SIZE = 40
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# cryptsetup's exit code for "No key available with this passphrase".
EXIT_WRONG_KEY = 2


@dataclass(frozen=True)
class Keyslot:
    id: int
    kdf: str
    type: str = "luks2"  # "reencrypt": a re-encryption in progress holds it; never a way in
    kdf_hash: str | None = None
    iterations: int | None = None
    salt: str | None = None  # the KDF's random salt: tells this keyslot from one another program put there

    @property
    def plain(self) -> bool:
        """A keyslot a passphrase or key opens (not one of re-encryption's own)."""
        return self.type == "luks2"

    def made_for_random_key(self) -> bool:
        """Parameters exactly as tpmseal or systemd-cryptenroll write them for TPM keyslots."""
        return (
            self.plain
            and self.kdf == "pbkdf2"
            and self.kdf_hash == RANDOM_KEY_HASH
            and (self.iterations == RANDOM_KEY_ITERATIONS or self.iterations in FINGERPRINT_ITERATIONS)
        )


@dataclass(frozen=True)
class Token:
    id: int
    type: str
    keyslots: tuple[int, ...]
    data: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class Header:
    keyslots: dict[int, Keyslot]
    tokens: dict[int, Token]
    requirements: tuple[str, ...] = ()  # config.requirements.mandatory

    @property
    def reencrypting(self) -> bool:
        """A re-encryption is in progress (or was interrupted): its keyslots and segments are in flux."""
        return any("reencrypt" in r for r in self.requirements) or any(not k.plain for k in self.keyslots.values())

    def refuse_changes(self, path: str) -> None:
        """Raise Refused while a re-encryption is in progress: no tpmseal command changes such a header."""
        if self.reencrypting:
            from tpmseal.errors import Refused

            raise Refused(
                f"{path} has a re-encryption in progress; tpmseal changes nothing while it runs",
                "finish it first ('cryptsetup reencrypt --resume-only DEVICE'), then run this command again",
            )

    def tokens_of(self, keyslot: int) -> list[Token]:
        return [t for t in self.tokens.values() if keyslot in t.keyslots]

    def free_keyslot(self) -> int | None:
        return next((i for i in range(LUKS2_KEYSLOTS) if i not in self.keyslots), None)

    def free_token(self) -> int | None:
        return next((i for i in range(LUKS2_TOKENS) if i not in self.tokens), None)


def parse_header(metadata: dict[str, Any]) -> Header:
    """The parts of LUKS2 JSON metadata tpmseal uses."""
    try:
        keyslots = {int(k): _keyslot(int(k), v) for k, v in metadata["keyslots"].items()}
        tokens = {
            int(k): Token(int(k), str(v["type"]), tuple(int(s) for s in v.get("keyslots", [])), v)
            for k, v in metadata["tokens"].items()
        }
        mandatory = metadata.get("config", {}).get("requirements", {}).get("mandatory", [])
        requirements = tuple(str(r) for r in mandatory)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VolumeError(f"unexpected LUKS2 metadata: {e}") from None
    return Header(keyslots, tokens, requirements)


def _keyslot(k: int, v: dict[str, Any]) -> Keyslot:
    kdf = v.get("kdf", {})
    iterations = kdf.get("iterations")
    return Keyslot(
        k,
        str(kdf.get("type", "?")),
        str(v.get("type", "?")),
        str(kdf["hash"]) if isinstance(kdf.get("hash"), str) else None,
        iterations if isinstance(iterations, int) and not isinstance(iterations, bool) else None,
        str(kdf["salt"]) if isinstance(kdf.get("salt"), str) else None,
    )


class Volume:
    """One LUKS2 volume (a block device or an image file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def check_exists(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise VolumeError(f"{self.path}: {e.strerror}", "give a block device or a LUKS2 image file") from None
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise VolumeError(f"{self.path} is not a block device or an image file")

    def header(self) -> Header:
        """Read the LUKS2 header; raise NotLuks2 for anything else."""
        self.check_exists()
        try:
            r = run([CRYPTSETUP, "luksDump", "--dump-json-metadata", self.path])
        except CommandFailed as e:
            if e.returncode < 0:  # killed by a signal: says nothing about the volume
                raise
            is_luks = run([CRYPTSETUP, "isLuks", self.path], ok_codes=(0, 1)).returncode == 0
            if is_luks:
                raise NotLuks2(f"{self.path} is a LUKS1 volume") from None
            raise NotLuks2(f"{self.path} is not a LUKS volume") from None
        try:
            return parse_header(json.loads(r.stdout))
        except json.JSONDecodeError as e:
            raise VolumeError(f"cryptsetup printed invalid JSON for {self.path}: {e}") from None

    def uuid(self) -> str:
        """The LUKS UUID, read from the binary header (no process); cryptsetup if that fails."""
        try:
            with open(self.path, "rb") as f:
                hdr = f.read(LUKS_UUID_OFFSET + LUKS_UUID_SIZE)
            if hdr[:6] == LUKS_MAGIC and len(hdr) == LUKS_UUID_OFFSET + LUKS_UUID_SIZE:
                text = hdr[LUKS_UUID_OFFSET:].split(b"\0", 1)[0].decode("ascii")
                if UUID_RE.fullmatch(text):
                    return text
        except (OSError, UnicodeDecodeError):
            pass
        return run([CRYPTSETUP, "luksUUID", self.path]).stdout.strip()

    def seqid(self) -> int | None:
        """The binary header's sequence id (None if it cannot be read)."""
        try:
            with open(self.path, "rb") as f:
                hdr = f.read(LUKS2_SEQID_OFFSET + 8)
        except OSError:
            return None
        if hdr[:6] != LUKS_MAGIC or len(hdr) < LUKS2_SEQID_OFFSET + 8:
            return None
        return int.from_bytes(hdr[LUKS2_SEQID_OFFSET:], "big")

    def test_key(self, key: bytes | bytearray, keyslot: int | None = None) -> bool:
        """Whether ``key`` opens the volume (only ``keyslot`` if given). Maps nothing."""
        argv = [CRYPTSETUP, "open", "--test-passphrase", "--key-file", "-"]
        if keyslot is not None:
            argv += ["--key-slot", str(keyslot)]
        r = run([*argv, self.path], stdin=key, ok_codes=(0, 1, EXIT_WRONG_KEY))
        if r.returncode == 1 and "Nothing to read" in r.stderr:
            return False  # an empty key opens nothing we could add a keyslot with
        if r.returncode == 1:
            raise CommandFailed(r.argv, r.returncode, r.stderr)
        return r.returncode == 0

    def opens_with_empty_passphrase(self, keyslot: int) -> bool:
        """Whether ``keyslot`` has an empty passphrase (read as a passphrase line, not a key file)."""
        argv = [CRYPTSETUP, "open", "--test-passphrase", "--key-slot", str(keyslot), self.path]
        return run(argv, stdin=b"\n", ok_codes=(0, 1, EXIT_WRONG_KEY)).returncode == 0

    def add_keyslot(
        self, existing: bytes | bytearray, new: bytes | bytearray, keyslot: int, iterations: int = RANDOM_KEY_ITERATIONS
    ) -> None:
        """Add ``new`` in ``keyslot`` (PBKDF2-SHA512, ``iterations``), authorized by ``existing`` (stdin);
        ``new`` comes on a pipe fd. A keyslot another program filled first raises HeaderChanged."""
        from tpmseal.errors import HeaderChanged

        try:
            run(
                [
                    CRYPTSETUP, "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", str(iterations), "--hash", RANDOM_KEY_HASH,
                    "--key-file", "-", "--new-key-slot", str(keyslot),
                    "--new-keyfile", SecretFd(0), self.path,
                ],
                stdin=existing,
                secrets=[new],
            )  # fmt: skip
        except CommandFailed as e:
            if e.returncode > 0 and f"slot {keyslot} is full" in e.stderr:
                raise HeaderChanged(
                    f"keyslot {keyslot} of {self.path} was filled by another program (cryptsetup says: "
                    f"{e.stderr.strip().splitlines()[-1]}) between tpmseal's steps; tpmseal stopped without "
                    "touching it"
                ) from None
            raise

    def activate(self, name: str, key: bytes | bytearray, keyslot: int | None = None) -> None:
        """Map the volume as /dev/mapper/NAME with ``key`` (on stdin); needs device-mapper."""
        argv = [CRYPTSETUP, "open", "--type", "luks2", "--key-file", "-"]
        if keyslot is not None:
            argv += ["--key-slot", str(keyslot)]
        run([*argv, self.path, name], stdin=key)

    def kill_keyslot(self, keyslot: int) -> None:
        """Destroy a keyslot. cryptsetup also drops it from every token's keyslots list."""
        run([CRYPTSETUP, "luksKillSlot", "--batch-mode", self.path, str(keyslot)])

    def import_token(self, token: dict[str, Any], token_id: int, replace: bool = False) -> None:
        argv = [CRYPTSETUP, "token", "import", "--json-file", "-", "--token-id", str(token_id)]
        if replace:
            argv.append("--token-replace")
        try:
            run([*argv, self.path], stdin=json.dumps(token, sort_keys=True).encode())
        except CommandFailed as e:
            raise TokenCorrupt(f"cryptsetup refused token {token_id} on {self.path}: {e}") from None

    def remove_token(self, token_id: int) -> None:
        run([CRYPTSETUP, "token", "remove", "--token-id", str(token_id), self.path])
