# SPDX-License-Identifier: LGPL-2.1-or-later
"""``clevis`` LUKS2 tokens whose pin is ``tpm2``: parse the JWE, unseal its key, decrypt the passphrase.

What clevis 19 (Debian 12) stores, learned from its scripts and from tokens ``clevis luks bind`` writes:
the token is ``{"type": "clevis", "keyslots": [...], "jwe": {...}}`` where ``jwe`` is the flattened JSON
serialization of a JWE (``protected``, ``encrypted_key`` = "", ``iv``, ``ciphertext``, ``tag``; all
base64url without padding). The protected header is ``{"alg": "dir", "enc": "A256GCM", "clevis": {"pin":
"tpm2", "tpm2": {"hash", "key", "pcr_bank", "pcr_ids", "jwk_pub", "jwk_priv"}}}``. ``jwk_pub`` /
``jwk_priv`` are the TPM2B_PUBLIC / TPM2B_PRIVATE of a KEYEDHASH object created under a CreatePrimary
key (same template as systemd 252, interop/primary.py) with policy PolicyPCR(pcr_bank:pcr_ids); it
holds the content-encryption key as a JWK (``{"kty": "oct", "k": ...}``). AES-GCM with the protected
header (its base64url text) as additional data gives the keyslot passphrase.

Opening costs 7 TPM commands: CreatePrimary, Load, StartAuthSession (salted), PolicyPCR, Unseal and two
FlushContext (clevis itself needs ≈ 30, through tpm2-tools).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpmseal.errors import TokenCorrupt, TokenUnsupported
from tpmseal.luks.tokens import CLEVIS_TYPE, is_number
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
from tpmseal.tpm.seal import SealedObject

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

    from tpmseal.unlock import PinSource

TYPE = CLEVIS_TYPE
TPM2_KNOWN = {"hash", "key", "pcr_bank", "pcr_ids", "jwk_pub", "jwk_priv"}
ENC_KEY_BYTES = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}


@dataclass(frozen=True)
class ClevisJwe:
    """A clevis JWE in its parts (the ciphertext needs the key the pin recovers)."""

    protected_b64: bytes  # the protected header as stored: it is the AES-GCM additional data
    header: dict[str, Any]
    iv: bytes
    ciphertext: bytes
    tag: bytes
    aad_b64: bytes | None = None


@dataclass(frozen=True)
class ClevisTpm2Token:
    keyslots: tuple[int, ...]
    jwe: ClevisJwe
    pcrs: PcrSelection  # indexes only
    primary_alg: str
    sealed: SealedObject


def _fail(where: str, what: str) -> TokenCorrupt:
    return TokenCorrupt(f"{TYPE} token: {where}: {what}")


def b64url(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not all(c.isalnum() or c in "-_" for c in text):
        raise _fail(where, "expected base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _fail(where, "invalid base64url") from None


def parse_jwe(jwe: Any) -> ClevisJwe:
    """The flattened JSON serialization clevis luks stores, or a compact one (``a.b.c.d.e``)."""
    if isinstance(jwe, str):
        parts = jwe.split(".")
        if len(parts) != 5:
            raise _fail("jwe", "a compact JWE has five parts")
        jwe = dict(zip(("protected", "encrypted_key", "iv", "ciphertext", "tag"), parts, strict=True))
    if not isinstance(jwe, dict):
        raise _fail("jwe", "expected an object")
    if "recipients" in jwe:
        raise TokenUnsupported(f"{TYPE} token: a JWE with several recipients is not supported")
    for k in ("protected", "iv", "ciphertext", "tag"):
        if not isinstance(jwe.get(k), str):
            raise _fail(f"jwe.{k}", "missing")
    protected = jwe["protected"]
    try:
        header = json.loads(b64url(protected, "jwe.protected"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise _fail("jwe.protected", "not JSON") from None
    if not isinstance(header, dict):
        raise _fail("jwe.protected", "expected an object")
    if jwe.get("header") or jwe.get("unprotected"):
        raise TokenUnsupported(f"{TYPE} token: unprotected JWE header fields are not supported")
    aad = jwe.get("aad")
    return ClevisJwe(
        protected_b64=protected.encode(),
        header=header,
        iv=b64url(jwe["iv"], "jwe.iv"),
        ciphertext=b64url(jwe["ciphertext"], "jwe.ciphertext"),
        tag=b64url(jwe["tag"], "jwe.tag"),
        aad_b64=aad.encode() if isinstance(aad, str) else None,
    )


def clevis_pin(data: Any) -> tuple[str, dict[str, Any]]:
    """(pin name, its configuration) of a clevis token, without judging whether tpmseal can open it."""
    if not isinstance(data, dict) or data.get("type") != TYPE:
        raise _fail("type", f"expected '{TYPE}'")
    header = parse_jwe(data.get("jwe")).header
    cl = header.get("clevis")
    if not isinstance(cl, dict) or not isinstance(cl.get("pin"), str):
        raise _fail("jwe.protected.clevis.pin", "missing")
    pin: str = cl["pin"]
    cfg = cl.get(pin, {})
    return pin, cfg if isinstance(cfg, dict) else {}


def _refuse_pin(pin: str, cfg: dict[str, Any]) -> TokenUnsupported:
    detail = ""
    if pin == "tang" and isinstance(cfg.get("url"), str):
        detail = f" (server {cfg['url']})"
    elif pin == "sss":
        inner = []
        for j in cfg.get("jwe", []) if isinstance(cfg.get("jwe"), list) else []:
            try:
                inner_clevis = parse_jwe(j).header.get("clevis")
                inner_pin = inner_clevis.get("pin") if isinstance(inner_clevis, dict) else None
            except TokenCorrupt:
                inner_pin = None
            inner.append(str(inner_pin or "?"))
        if inner:
            detail = f" (a threshold of {cfg.get('t', '?')} of: {', '.join(inner)})"
    return TokenUnsupported(
        f"clevis pin '{pin}' cannot be opened by tpmseal{detail}",
        "tpmseal opens clevis tokens with the tpm2 pin only; use 'clevis luks unlock' for this one",
    )


def _pcr_ids(v: Any) -> tuple[int, ...]:
    items: list[Any]
    if isinstance(v, str):
        items = [s for s in v.replace(" ", "").split(",") if s]
    elif isinstance(v, list):
        items = v
    else:
        raise _fail("pcr_ids", "expected a comma-separated string or a list")
    out = set()
    for s in items:
        text = str(s)
        if not is_number(text) or not 0 <= int(text) < PCR_COUNT:
            raise _fail("pcr_ids", f"invalid PCR '{text}'")
        out.add(int(text))
    return tuple(sorted(out))


def parse_clevis(data: Any) -> ClevisTpm2Token:
    """Parse a clevis token with the tpm2 pin; other pins are refused with TokenUnsupported."""
    pin, cfg = clevis_pin(data)
    if pin != "tpm2":
        raise _refuse_pin(pin, cfg)
    jwe = parse_jwe(data["jwe"])
    if jwe.header.get("alg") != "dir":
        raise TokenUnsupported(f"{TYPE} token: JWE alg {jwe.header.get('alg')!r} is not supported (clevis uses 'dir')")
    if not isinstance(jwe.header.get("enc"), str) or jwe.header["enc"] not in ENC_KEY_BYTES:
        raise TokenUnsupported(f"{TYPE} token: JWE enc {jwe.header.get('enc')!r} is not supported")
    if jwe.header.get("zip"):
        raise TokenUnsupported(f"{TYPE} token: compressed JWE payloads are not supported")
    unknown = sorted(set(cfg) - TPM2_KNOWN)
    if unknown:
        raise TokenUnsupported(f"{TYPE} token: tpm2 pin field '{unknown[0]}' is not supported by tpmseal")
    if cfg.get("hash", "sha256") != "sha256":
        raise TokenUnsupported(f"{TYPE} token: tpm2 pin field 'hash' = {cfg.get('hash')!r} is not supported")
    key = cfg.get("key", "ecc")
    if key not in ("ecc", "rsa"):
        raise TokenUnsupported(f"{TYPE} token: tpm2 pin field 'key' = {key!r} is not supported")
    if "pcr_ids" not in cfg or not _pcr_ids(cfg["pcr_ids"]):
        raise TokenUnsupported(
            f"{TYPE} token: a tpm2 pin without 'pcr_ids' (no PCR policy, password authorization) is not "
            "supported by tpmseal"
        )
    bank = cfg.get("pcr_bank")
    if not isinstance(bank, str) or bank not in BANKS:
        raise TokenUnsupported(f"{TYPE} token: tpm2 pin field 'pcr_bank' = {bank!r} is not supported")
    ks = data.get("keyslots")
    if not isinstance(ks, list) or not all(is_number(s) for s in ks):
        raise _fail("keyslots", "expected a list of keyslot numbers as strings")
    sealed = SealedObject(b64url(cfg.get("jwk_priv"), "jwk_priv"), b64url(cfg.get("jwk_pub"), "jwk_pub"))
    return ClevisTpm2Token(
        keyslots=tuple(int(s) for s in ks),
        jwe=jwe,
        pcrs=PcrSelection(bank, tuple(Pcr(i) for i in _pcr_ids(cfg["pcr_ids"]))),
        primary_alg=key,
        sealed=sealed,
    )


def _content_key(jwk_text: Secret, enc: str) -> Secret:
    """The AES key from the unsealed JWK (``{"kty": "oct", "k": base64url, ...}``)."""
    try:
        jwk = json.loads(bytes(jwk_text.buffer))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenCorrupt(f"{TYPE} token: the unsealed key is not a JWK") from None
    if not isinstance(jwk, dict) or jwk.get("kty") != "oct" or not isinstance(jwk.get("k"), str):
        raise TokenCorrupt(f"{TYPE} token: the unsealed key is not a symmetric JWK")
    key = Secret.take(bytearray(b64url(jwk["k"], "jwk.k")))
    jwk.clear()
    if len(key) != ENC_KEY_BYTES[enc]:
        key.close()
        raise TokenCorrupt(f"{TYPE} token: the unsealed key has {len(key)} bytes, {enc} needs {ENC_KEY_BYTES[enc]}")
    return key


def decrypt_jwe(jwe: ClevisJwe, key: Secret) -> Secret:
    """AES-GCM of the JWE's content; the additional data is the protected header as stored (RFC 7516 5.2)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aad = jwe.protected_b64 + (b"." + jwe.aad_b64 if jwe.aad_b64 is not None else b"")
    try:
        plain = AESGCM(bytes(key.buffer)).decrypt(jwe.iv, jwe.ciphertext + jwe.tag, aad)
    except (InvalidTag, ValueError):
        raise TokenCorrupt(f"{TYPE} token: the JWE does not decrypt with the key the TPM unsealed") from None
    return Secret(plain)


def open_clevis(esapi: ESAPI, data: dict[str, Any], pin: PinSource | None) -> Secret:
    """TokenOpener for ``clevis`` (tpm2 pin): the passphrase clevis put in the keyslot."""
    from tpmseal.errors import PolicyMismatch, WrongTpm
    from tpmseal.interop.primary import legacy_primary
    from tpmseal.tpm.seal import unseal
    from tpmseal.tpm.srk import is_tpm_resident_parent, public_of

    token = parse_clevis(data)
    try:
        with legacy_primary(esapi, token.primary_alg) as (primary, _):
            # the parent is the TPM's own CreatePrimary output; salted to it, never to a stored key
            if not is_tpm_resident_parent(public_of(esapi, primary)):
                raise WrongTpm(f"{TYPE} token: the TPM's primary key is not a storage key")
            jwk_text = unseal(esapi, primary, token.sealed, token.pcrs, None)
    except PolicyMismatch:
        which = "+".join(map(str, token.pcrs.indexes))
        raise PolicyMismatch(
            f"the TPM refused to unseal: the current values of PCR(s) {which} ({token.pcrs.bank}) differ from "
            "those the clevis key was bound to"
        ) from None
    with jwk_text, _content_key(jwk_text, str(token.jwe.header["enc"])) as key:
        return decrypt_jwe(token.jwe, key)
