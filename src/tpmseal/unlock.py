# SPDX-License-Identifier: LGPL-2.1-or-later
"""From a token to the key of its keyslot: the path every unlock takes (test-unlock, boot, unlock)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tpmseal.errors import PinRejected, PinRequired, PolicyMismatch, TokenCorrupt
from tpmseal.luks.tokens import NATIVE_TYPE, NativeToken, Seal, parse_native
from tpmseal.secret import Secret
from tpmseal.tpm.pcrs import PcrSelection
from tpmseal.tpm.seal import pin_auth, unseal
from tpmseal.tpm.srk import srk_from_tpm

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

log = logging.getLogger("tpmseal")

# Hands out a copy of the PIN (the caller wipes it); raises PinRequired when there is none. May return
# an empty bytearray (e.g. an empty line on stdin): openers treat that as no PIN (``need_pin``).
PinSource = Callable[[], bytearray]
# Opens one token type: (ESAPI, the token's JSON object, PIN source) -> the keyslot passphrase.
TokenOpener = Callable[["ESAPI", dict[str, Any], PinSource | None], Secret]

_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def keyslot_passphrase(raw: Secret) -> Secret:
    """The keyslot passphrase of a sealed key: base64 of its bytes, built without immutable copies.

    Text, not raw bytes, so that the ask-password protocol (NUL-terminated strings) can carry it, as
    systemd's tokens do.
    """
    src = raw.buffer
    out = bytearray(4 * ((len(src) + 2) // 3))
    o = 0
    for i in range(0, len(src), 3):
        chunk = src[i : i + 3]
        n = (chunk[0] << 16) | ((chunk[1] if len(chunk) > 1 else 0) << 8) | (chunk[2] if len(chunk) > 2 else 0)
        out[o] = _B64[(n >> 18) & 63]
        out[o + 1] = _B64[(n >> 12) & 63]
        out[o + 2] = _B64[(n >> 6) & 63] if len(chunk) > 1 else 61
        out[o + 3] = _B64[n & 63] if len(chunk) > 2 else 61
        o += 4
    return Secret.take(out)


def read_pcrs(esapi: ESAPI, selection: PcrSelection) -> dict[int, bytes]:
    """Current values of the selected PCRs (one bank); PCR_Read returns at most 8 per call."""
    from tpm2_pytss import TPML_PCR_SELECTION, TSS2_Exception

    from tpmseal.tpm.device import tpm_error

    out: dict[int, bytes] = {}
    pending = list(selection.indexes)
    while pending:
        spec = f"{selection.bank}:" + ",".join(str(i) for i in pending)
        try:
            _, sel, digests = esapi.pcr_read(TPML_PCR_SELECTION.parse(spec))
        except TSS2_Exception as e:
            raise tpm_error(e, "reading the PCRs") from None
        got = [i for i in pending if sel.pcrSelections[0].pcrSelect[i // 8] & (1 << (i % 8))] if sel.count else []
        if not got:
            break
        for i, d in zip(got, digests, strict=False):
            out[i] = bytes(d)
        pending = [i for i in pending if i not in out]
    return out


def need_pin(pin: PinSource | None) -> bytearray:
    """The PIN for a seal that needs one; PinRequired when there is no source or it gives an empty PIN.

    Called only after every check that needs no PIN (SRK, PCRs): without a PIN the TPM never sees the
    sealed object, so a missing PIN never costs a dictionary-attack try.
    """
    if pin is None:
        raise PinRequired("this token needs a PIN")
    text = pin()
    if not text:
        raise PinRequired("this token needs a PIN, and none was given")
    return text


def seal_auth(seal: Seal, pin: PinSource | None) -> Secret | None:
    """The authValue of ``seal`` (None without a PIN): the PIN from ``pin``, stretched by the seal's KDF;
    the PIN's bytes are wiped once derived. Call it only after the checks that need no PIN."""
    if not seal.pin:
        return None
    if seal.pin_kdf is None:
        raise TokenCorrupt("a PIN seal without a PIN salt")
    pin_text = need_pin(pin)
    try:
        return pin_auth(pin_text, seal.pin_kdf)
    finally:
        pin_text[:] = bytes(len(pin_text))


class PinGuard:
    """One PIN for several tokens, never tried again after the TPM refused it.

    ``source`` hands out the PIN until ``rejected(token)`` is called; after that it raises PinRejected
    without a TPM command, so a wrong PIN costs one dictionary-attack try per run, not one per token.
    """

    def __init__(self, pin: PinSource | None) -> None:
        self._pin = pin
        self._rejected_by: int | None = None

    def rejected(self, token: int) -> None:
        if self._rejected_by is None:
            self._rejected_by = token

    @property
    def source(self) -> PinSource | None:
        if self._pin is None:
            return None
        pin = self._pin

        def get() -> bytearray:
            if self._rejected_by is not None:
                raise PinRejected(
                    f"not tried: the TPM refused this PIN for token {self._rejected_by}",
                    hint="a PIN the TPM refused is never tried again; each try counts toward the TPM's lockout",
                )
            return pin()

        return get


def changed_pcrs(seal: Seal, current: dict[int, bytes]) -> list[int]:
    return [p.index for p in seal.pcrs.pcrs if current.get(p.index) != p.value]


def unseal_token(esapi: ESAPI, token: NativeToken, pin: PinSource | None = None) -> Secret:
    """The raw sealed key of a native token. Tries the seal(s) whose PCR state is current.

    With one seal it is six TPM commands: ReadPublic of the SRK (``srk_from_tpm``: WrongTpm before
    anything else when it is not the token's), then the five of ``seal.unseal``. With several seals it
    reads the PCRs first to pick the one that can work. The PIN is asked for only when a seal needs it,
    after the SRK and the PCRs are checked (PCR_Read, then PolicyAuthValue: eight commands).
    """
    if not token.seals:
        raise TokenCorrupt("token has no seals")
    if any(s.signed is not None for s in token.seals):  # kind "authorize": signed policies
        from tpmseal.update.signed import unseal_signed_token

        return unseal_signed_token(esapi, token, pin)
    candidates = list(token.seals)
    if len(candidates) > 1:
        current = read_pcrs(esapi, candidates[0].pcrs) if candidates[0].pcrs.pcrs else {}
        for s in candidates[1:]:
            if s.pcrs.bank != candidates[0].pcrs.bank or set(s.pcrs.indexes) - set(current):
                current.update(read_pcrs(esapi, s.pcrs))
        matching = [s for s in candidates if not changed_pcrs(s, current)]
        if not matching:
            raise _mismatch(candidates[0], current)
        candidates = matching
    srk = srk_from_tpm(esapi, token.srk)
    try:
        seal = candidates[0]
        auth = None
        if seal.pin:
            # check the PCRs before asking a person for the PIN (and before risking a lockout try)
            now = read_pcrs(esapi, seal.pcrs) if seal.pcrs.pcrs else {}
            if changed_pcrs(seal, now):
                raise _mismatch(seal, now)
            auth = seal_auth(seal, pin)
        try:
            return unseal(esapi, srk, seal.sealed, seal.pcrs, auth)
        except PolicyMismatch:
            raise _mismatch(seal, read_pcrs(esapi, seal.pcrs)) from None
        finally:
            if auth is not None:
                auth.close()
    finally:
        esapi.tr_close(srk)


def _mismatch(seal: Seal, current: dict[int, bytes]) -> PolicyMismatch:
    from tpmseal.boot.measure import VOLUME_PCR, volume_binding_hint

    changed = changed_pcrs(seal, current)
    which = ", ".join(str(i) for i in changed) or "none visible"
    msg = f"the TPM refused to unseal: PCR(s) {which} differ from the sealed state"
    if changed == [VOLUME_PCR]:
        return PolicyMismatch(
            msg + " (volume binding: the volumes of this boot were already measured)", volume_binding_hint()
        )
    return PolicyMismatch(msg)


def open_native(esapi: ESAPI, data: dict[str, Any], pin: PinSource | None) -> Secret:
    with unseal_token(esapi, parse_native(data), pin) as raw:
        return keyslot_passphrase(raw)


def token_openers() -> dict[str, TokenOpener]:
    """Every token type whose keyslot passphrase tpmseal can recover with the TPM.

    The foreign formats are optional: an initramfs built without them still opens native tokens.
    """
    from tpmseal.luks.tokens import CLEVIS_TYPE, SYSTEMD_TPM2_TYPE

    openers: dict[str, TokenOpener] = {NATIVE_TYPE: open_native}
    try:
        from tpmseal.interop.systemd_tpm2 import open_systemd_tpm2

        openers[SYSTEMD_TPM2_TYPE] = open_systemd_tpm2
    except ImportError as e:
        log.warning("systemd-tpm2 tokens cannot be opened: %s", e)
    try:
        from tpmseal.interop.clevis import open_clevis

        openers[CLEVIS_TYPE] = open_clevis
    except ImportError as e:
        log.warning("clevis tokens cannot be opened: %s", e)
    return openers
