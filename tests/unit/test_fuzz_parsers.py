# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hostile input: property tests on every parser that reads data an attacker may have written.

The token parsers (native, systemd-tpm2, clevis), the credential file parser, the crypttab parser and the
PCR-spec parser get valid documents mutated at random paths (values replaced by any JSON value or by
nasty strings, fields deleted or added, lists grown) and plain random input. Each must return or raise one
of tpmseal's own errors (``TpmsealError`` subclasses); any other exception, or an example that takes more
than its deadline, fails.

CI runs a few thousand examples in total; ``TPMSEAL_LONG=1`` runs at least 10^5 and prints how many ran.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpmseal.config.crypttab import parse as parse_crypttab
from tpmseal.errors import TpmsealError
from tpmseal.interop.clevis import parse_clevis
from tpmseal.interop.systemd_tpm2 import parse_systemd_tpm2
from tpmseal.luks.tokens import parse_native
from tpmseal.tpm.pcrs import parse_pcrs

pytestmark = pytest.mark.unit

LONG = os.environ.get("TPMSEAL_LONG", "") == "1"
# examples per property: CI total ≈ 4,800; long total ≥ 10^5
N = 20_000 if LONG else 700
HARD_DEADLINE = 5.0  # seconds: a hung parser is killed by SIGALRM and the test fails
RAN: Counter[str] = Counter()
REFUSED: Counter[str] = Counter()  # examples the parser refused (with one of our errors)

FUZZ = settings(
    max_examples=N,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module", autouse=True)
def report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = sum(RAN.values())
    lines = ", ".join(f"{k} {v}" for k, v in sorted(RAN.items()))
    say(request, f"fuzz examples run: {total} ({lines}); refused with a tpmseal error: {sum(REFUSED.values())}")


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture (the figures belong in the CI log)."""
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capman is None or reporter is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("\n" + line)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang(f"parser ran longer than {HARD_DEADLINE}s")


def only_our_errors(name: str, parse: Callable[[Any], object], value: Any) -> None:
    RAN[name] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HARD_DEADLINE)
    try:
        parse(value)
    except TpmsealError as e:
        REFUSED[name] += 1
        assert isinstance(e.message, str) and e.message
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ input strategies

NASTY = [
    "", " ", "0", "-1", "1e9", "²", "٣", "¹²", "Ⅻ", "0" * 5000, "9" * 5000, "\x00", "\ud800", "é", "0x81000001",
    "sha256", "sha1", "ecc", "rsa", "tpm2", "sss", "tang", "dir", "A256GCM", "pcr", "AAAA", "AA==", "=",
    "-_", "ff" * 32, "FF" * 32, "7", "24", "23", "true", "null", "{}", "[]", "a.b.c.d.e", "....", "7+11",
]
text = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True), text
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def mutate(data: st.DataObject, template: Any, rounds: int = 3) -> Any:
    """Apply 1-``rounds`` random edits to a deep copy of ``template``."""
    doc = copy.deepcopy(template)
    for _ in range(data.draw(st.integers(1, rounds))):
        all_paths = paths(doc)
        path = data.draw(st.sampled_from(all_paths))
        op = data.draw(st.sampled_from(["replace", "delete", "add", "grow", "nasty"]))
        if not path:
            if op == "replace":
                doc = data.draw(json_values)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        target = parent[key]
        if op == "replace":
            parent[key] = data.draw(json_values)
        elif op == "nasty":
            parent[key] = data.draw(st.sampled_from(NASTY))
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(target, dict):
            target[data.draw(text)] = data.draw(json_values)
        elif op == "grow" and isinstance(target, list):
            target.append(copy.deepcopy(target[0]) if target else data.draw(json_values))
    return doc


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


NATIVE = {
    "type": "tpmseal-tpm2",
    "keyslots": ["1"],
    "version": 1,
    "created": "2026-11-26T04:30:00Z",
    "luks_uuid": "0214c1ea-c709-4951-a9fb-97e9ee904ad3",
    "srk": {"handle": "0x81000001", "name": "000b" + "5a" * 32, "esys_tr": b64(b"\x81\x00\x00\x01" + b"x" * 40)},
    "seals": [
        {
            "kind": "pcr",
            "label": "enrolled",
            "pcr_bank": "sha256",
            "pcrs": [{"index": 7, "value": "d6" * 32}, {"index": 15, "value": "00" * 32}],
            "policy_digest": "8e" * 32,
            "pin": True,
            "pin_salt": b64(b"s" * 16),
            "private": b64(b"\x00\x04priv"),
            "public": b64(b"\x00\x04publ"),
        }
    ],
}
SYSTEMD = {
    "type": "systemd-tpm2",
    "keyslots": ["1"],
    "tpm2-blob": b64(b"\x00\x04priv\x00\x04publ"),
    "tpm2-pcrs": [7],
    "tpm2-pcr-bank": "sha256",
    "tpm2-primary-alg": "ecc",
    "tpm2-policy-hash": "ab" * 32,
    "tpm2-pin": False,
}
CLEVIS_HEADER = {
    "alg": "dir",
    "enc": "A256GCM",
    "clevis": {
        "pin": "tpm2",
        "tpm2": {
            "hash": "sha256",
            "key": "ecc",
            "pcr_bank": "sha256",
            "pcr_ids": "7",
            "jwk_pub": b64url(b"\x00\x04publ"),
            "jwk_priv": b64url(b"\x00\x04priv"),
        },
    },
}
SSS_HEADER = {"alg": "dir", "enc": "A256GCM", "clevis": {"pin": "sss", "sss": {"t": 1, "jwe": ["a.b.c.d.e"]}}}


def clevis_token(header: Any, jwe_extra: Any = None) -> dict[str, Any]:
    protected = b64url(json.dumps(header).encode())
    jwe: dict[str, Any] = {"protected": protected, "encrypted_key": "", "iv": "AAAA", "ciphertext": "AAAA"}
    jwe["tag"] = "AAAA"
    return {"type": "clevis", "keyslots": ["1"], "jwe": jwe}


def test_templates_are_valid() -> None:
    parse_native(NATIVE)
    parse_systemd_tpm2(SYSTEMD)
    parse_clevis(clevis_token(CLEVIS_HEADER))


# ------------------------------------------------------------------ the properties


@FUZZ
@given(st.data())
def test_native_token_parser_raises_only_token_errors(data: st.DataObject) -> None:
    only_our_errors("native", parse_native, mutate(data, NATIVE))


@FUZZ
@given(st.data())
def test_systemd_tpm2_parser_raises_only_token_errors(data: st.DataObject) -> None:
    only_our_errors("systemd-tpm2", parse_systemd_tpm2, mutate(data, SYSTEMD))


@FUZZ
@given(st.data())
def test_clevis_parser_raises_only_token_errors(data: st.DataObject) -> None:
    """Mutations of the outer token, and of the protected header inside the JWE (tpm2 and sss pins)."""
    where = data.draw(st.sampled_from(["outer", "header", "sss"]))
    if where == "outer":
        token = mutate(data, clevis_token(CLEVIS_HEADER))
    else:
        token = clevis_token(mutate(data, CLEVIS_HEADER if where == "header" else SSS_HEADER))
    only_our_errors("clevis", parse_clevis, token)


PCR_PIECES = ["7", "11", "secure-boot-policy", ":sha256", ":sha1=", "=", "ff" * 32, "0x", "+", "²", "99"]


@FUZZ
@given(
    st.one_of(
        st.text(alphabet=st.sampled_from(list("0123456789+,: =xabcdefsh²٣-_\t")), max_size=60),
        st.lists(
            st.sampled_from(PCR_PIECES),
            max_size=8,
        ).map("".join),
        st.text(max_size=40),
    )
)
def test_pcr_spec_parser_raises_only_usage_errors(spec: str) -> None:
    only_our_errors("pcr-spec", parse_pcrs, spec)


@FUZZ
@given(
    st.one_of(
        st.text(alphabet=st.sampled_from(list(" \t\r\n#\"'\\x0123456789abcUID=/-,")), max_size=120),
        st.lists(
            st.sampled_from(["root", "UUID=abc", "/dev/sda2", "none", "luks,discard", '"a b"', "'c'", "\\", "\\04",
                             "\\x2", "#", "\n", " ", "\t", '"', "'", "\r\n", "# tpmseal: managed"]),
            max_size=12,
        ).map("".join),
        st.text(max_size=80),
    )
)  # fmt: skip
def test_crypttab_parser_raises_only_config_errors(content: str) -> None:
    only_our_errors("crypttab", parse_crypttab, content)


def _envelope_parser() -> tuple[Callable[[bytes], object], Callable[[Any, int, int], bytes]] | None:
    try:
        from tpmseal.creds.envelope import MAGIC, PREFIX, TAG_SIZE, VERSION, parse
    except ImportError:
        return None

    def build(header: Any, declared: int, payload: int) -> bytes:
        body = json.dumps(header).encode()
        size = header.get("size", 0) if isinstance(header, dict) else 0
        size = size if isinstance(size, int) and 0 <= size < 4096 else 0
        return PREFIX.pack(MAGIC, VERSION, declared if declared >= 0 else len(body)) + body + b"x" * (
            size + TAG_SIZE + payload
        )

    return parse, build


ENVELOPE_HEADER = {
    "name": "db-password",
    "unit": "postgresql.service",
    "created": "2026-01-01T00:00:00Z",
    "not_after": None,
    "cipher": "aes-256-gcm",
    "nonce": b64(b"n" * 12),
    "size": 8,
    "tpm": {
        "srk": {"handle": "0x81000001", "name": "000b" + "5a" * 32, "esys_tr": b64(b"e" * 40)},
        "pcr_bank": "sha256",
        "pcrs": [{"index": 7, "value": "d6" * 32}],
        "policy_digest": "8e" * 32,
        "private": b64(b"\x00\x04priv"),
        "public": b64(b"\x00\x04publ"),
    },
}


@FUZZ
@given(st.data())
def test_credential_file_parser_raises_only_credential_errors(data: st.DataObject) -> None:
    found = _envelope_parser()
    if found is None:
        pytest.skip("src/tpmseal/creds/envelope.py is not there")
    parse, build = found
    kind = data.draw(st.sampled_from(["header", "bytes", "flip"]))
    if kind == "header":
        blob = build(mutate(data, ENVELOPE_HEADER), -1, data.draw(st.sampled_from([0, 0, 1, -1])))
        if data.draw(st.booleans()):
            blob = blob[: data.draw(st.integers(0, len(blob)))]
    elif kind == "flip":
        blob = bytearray(build(ENVELOPE_HEADER, -1, 0))
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    else:
        blob = b"TPMSCRED" + data.draw(st.binary(max_size=200))
    only_our_errors("credential", parse, blob)


def test_credential_parser_survives_a_deeply_nested_header() -> None:
    found = _envelope_parser()
    if found is None:
        pytest.skip("src/tpmseal/creds/envelope.py is not there")
    parse, _ = found
    from tpmseal.creds.envelope import MAGIC, PREFIX, VERSION

    body = b"[" * 30000 + b"]" * 30000
    only_our_errors("credential", parse, PREFIX.pack(MAGIC, VERSION, len(body)) + body)


def test_clevis_parser_survives_a_deeply_nested_protected_header() -> None:
    token = clevis_token(CLEVIS_HEADER)
    token["jwe"]["protected"] = b64url(b"[" * 50000 + b"]" * 50000)
    only_our_errors("clevis", parse_clevis, token)


INNER_LIST_CLEVIS = {"protected": b64url(b'{"clevis": [1]}'), "iv": "", "ciphertext": "", "tag": ""}

# Crashes the fuzzer found, kept as plain regression cases (each was a non-tpmseal exception before its fix).
REGRESSIONS: list[tuple[str, Callable[[Any], object], Any]] = [
    ("native: keyslot '²' (isdigit, but int() refuses it)", parse_native, {**NATIVE, "keyslots": ["²"]}),
    ("native: keyslot of 5000 digits", parse_native, {**NATIVE, "keyslots": ["9" * 5000]}),
    ("systemd-tpm2: keyslot '²'", parse_systemd_tpm2, {**SYSTEMD, "keyslots": ["²"]}),
    ("clevis: keyslot '¹²'", parse_clevis, {**clevis_token(CLEVIS_HEADER), "keyslots": ["¹²"]}),
    ("clevis: pcr_ids '²'", parse_clevis, clevis_token(json.loads(json.dumps(CLEVIS_HEADER).replace('"7"', '"²"')))),
    ("clevis: enc is a list (unhashable)", parse_clevis, clevis_token({**CLEVIS_HEADER, "enc": ["A256GCM"]})),
    (
        "clevis: sss inner JWE whose clevis header is a list",
        parse_clevis,
        clevis_token({**SSS_HEADER, "clevis": {"pin": "sss", "sss": {"t": 1, "jwe": [INNER_LIST_CLEVIS]}}}),
    ),
    ("pcr spec '²'", parse_pcrs, "²"),
    ("pcr spec of 5000 digits", parse_pcrs, "0" * 5000),
]


@pytest.mark.parametrize(("what", "parse", "value"), REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_parser_regression_raises_only_our_errors(what: str, parse: Callable[[Any], object], value: Any) -> None:
    only_our_errors("regression", parse, value)
