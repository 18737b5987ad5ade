# SPDX-License-Identifier: LGPL-2.1-or-later
"""One entry for reading a credential in either format: tpmseal's own, or systemd-creds' TPM2 one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpmseal.creds import envelope, sdcreds
from tpmseal.errors import CredentialCorrupt, TpmsealError
from tpmseal.secret import Secret

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

MAX_INPUT = 2 * envelope.MAX_FILE  # base64 text of a systemd credential is 4/3 of its size


@dataclass(frozen=True)
class Parsed:
    """A credential file, parsed but not decrypted."""

    format: str  # "tpmseal" | "systemd"
    native: envelope.Envelope | None = None
    systemd: sdcreds.SdCredential | None = None


def read_file(path: str | Path) -> bytes:
    """A credential file's bytes ('-' is stdin), refusing anything larger than a credential can be."""
    import sys

    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size > MAX_INPUT:
                    raise CredentialCorrupt(f"{path}: too large for a credential")
                data = f.read(MAX_INPUT + 1)
    except OSError as e:
        raise TpmsealError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_INPUT:
        raise CredentialCorrupt(f"{path}: too large for a credential")
    return data


def parse(data: bytes) -> Parsed:
    if envelope.is_native(data):
        return Parsed("tpmseal", native=envelope.parse(data))
    raw = sdcreds.decode(data)
    if raw is not None:
        return Parsed("systemd", systemd=sdcreds.parse(raw))
    if not data:
        raise CredentialCorrupt("the credential file is empty")
    raise CredentialCorrupt("not a credential: neither tpmseal's format (TPMSCRED) nor a systemd-creds file")


def embedded_name(p: Parsed) -> str | None:
    """The name a credential is bound to, where it can be read without decrypting (tpmseal's format)."""
    return p.native.header.name if p.native is not None else None


def decrypt(
    esapi: ESAPI,
    p: Parsed,
    name: str | None = None,
    unit: str | None = None,
    now: Callable[[], float] = time.time,
) -> Secret:
    """The secret; raises CredentialRejected subclasses, PolicyMismatch, WrongTpm, TpmError."""
    if p.native is not None:
        return envelope.decrypt(esapi, p.native, name, unit, now)
    assert p.systemd is not None
    secret, _ = sdcreds.decrypt(esapi, p.systemd, name, now)
    return secret


def describe(p: Parsed, now: float | None = None) -> dict[str, Any]:
    """What ``creds inspect`` shows: everything readable without the TPM, never the secret."""
    now = time.time() if now is None else now
    if p.native is not None:
        h = p.native.header
        return {
            "format": "tpmseal",
            "version": envelope.VERSION,
            "name": h.name,
            "unit": h.unit,
            "created": envelope.format_time(h.created),
            "not_after": envelope.format_time(h.not_after) if h.not_after is not None else None,
            "expired": h.not_after is not None and now >= h.not_after,
            "size": h.size,
            "cipher": envelope.CIPHER,
            "pcr_bank": h.pcrs.bank,
            "pcrs": [{"index": q.index, "value": (q.value or b"").hex()} for q in h.pcrs.pcrs],
            "policy_digest": h.policy_digest.hex(),
            "srk": {"handle": f"{h.srk.handle:#010x}", "name": h.srk.name.hex()},
        }
    assert p.systemd is not None
    s = p.systemd
    return {
        "format": "systemd",
        "key": "tpm2",
        "name": None,  # encrypted in this format
        "size": None,  # the secret's size is encrypted together with the name
        "encrypted_bytes": len(s.ciphertext),
        "cipher": envelope.CIPHER,
        "pcr_bank": s.pcrs.bank,
        "pcrs": [{"index": q.index, "value": None} for q in s.pcrs.pcrs],
        "policy_digest": s.policy_hash.hex(),
        "primary_alg": s.primary_alg,
    }
