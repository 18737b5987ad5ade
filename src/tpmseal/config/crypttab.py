# SPDX-License-Identifier: LGPL-2.1-or-later
"""crypttab(5): parse, merge and render, keeping every line tpmseal does not manage byte for byte.

A line is blank (only spaces/tabs), a comment (first non-blank character ``#``) or an entry of two to four
fields: name, device, key file, options. Fields are separated by spaces or tabs; a field may be quoted
(``"…"`` or ``'…'``) and may contain backslash escapes (``\\ ``, ``\\040`` octal, ``\\x20``). ``#`` starts a
comment only at the start of a line: inside a field (``keyfile-offset=#…`` or a path) it is text.

tpmseal marks the entries it manages with a comment line directly above them (``MARKER``); see
docs/config.md for why a separate line rather than a trailing comment or an ``x-`` option.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from tpmseal.errors import TpmsealError

MARKER = "# tpmseal: managed entry, rewritten by 'tpmseal config apply' (see tpmseal-config(8))"
MARKER_PREFIX = "# tpmseal: managed"
SPACE = " \t\r"  # \r: a CRLF file still splits right (the \r stays in the raw line)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]*")


class ConfigParseError(TpmsealError):
    """A configuration file tpmseal cannot parse; it refuses to write it."""

    def __init__(self, path: str, lineno: int, what: str, line: str = "") -> None:
        shown = line.rstrip("\r\n")
        msg = f"{path}:{lineno}: {what}" + (f": {shown!r}" if shown else "")
        hint = f"fix line {lineno} of {path} (see crypttab(5)); tpmseal does not write a file it cannot parse"
        super().__init__(msg, hint)
        self.path = path
        self.lineno = lineno


@dataclass
class Entry:
    name: str
    device: str
    keyfile: str | None = None  # None: field absent
    options: str | None = None  # None: field absent; the decoded text, commas and all

    @property
    def option_list(self) -> list[str]:
        return [o for o in (self.options or "").split(",") if o]

    def uuid(self) -> str | None:
        """The LUKS UUID the device field names (``UUID=…`` or ``/dev/disk/by-uuid/…``), lower case."""
        d = self.device
        if d[:5].upper() == "UUID=":
            return d[5:].strip("\"'").lower()
        if d.startswith("/dev/disk/by-uuid/"):
            return d.removeprefix("/dev/disk/by-uuid/").lower()
        return None


@dataclass
class Line:
    raw: str  # exactly as in the file, line terminator included
    kind: str  # "blank" | "comment" | "entry" | "marker"
    entry: Entry | None = None
    lineno: int = 0
    managed: bool = False  # an entry directly below a marker line


@dataclass
class Crypttab:
    lines: list[Line] = field(default_factory=list)

    def render(self) -> str:
        return "".join(line.raw for line in self.lines)

    def entries(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "entry"]

    def managed(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "entry" and ln.managed]

    def unmanaged(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "entry" and not ln.managed]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def split_fields(text: str) -> list[str]:
    """Split one crypttab line into decoded fields; raise ValueError on an unterminated quote or escape."""
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in SPACE:
            i += 1
        if i >= n:
            return fields
        buf: list[str] = []
        quote: str | None = None
        while i < n:
            c = text[i]
            if quote is None and c in SPACE:
                break
            if quote is None and c in "\"'":
                quote = c
                i += 1
                continue
            if quote is not None and c == quote:
                quote = None
                i += 1
                continue
            if c == "\\" and quote != "'":
                if i + 1 >= n:
                    raise ValueError("a backslash at the end of the line escapes nothing")
                nxt = text[i + 1]
                if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", text[i + 1 : i + 4]):
                    buf.append(chr(int(text[i + 1 : i + 4], 8)))
                    i += 4
                    continue
                if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
                    buf.append(chr(int(text[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                buf.append(_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            buf.append(c)
            i += 1
        if quote is not None:
            raise ValueError(f"unterminated {quote} quote")
        fields.append("".join(buf))


def quote_field(value: str) -> str:
    """Encode a field so split_fields() gives it back: octal escapes for space, tab, backslash, quotes."""
    if value == "":
        return '""'
    out: list[str] = []
    for c in value:
        if c in " \t\n\r\\\"'" or (c == "#" and not out):
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    return "".join(out)


def split_lines(text: str) -> list[str]:
    """Lines with their terminators; only ``\\n`` ends a line (a lone ``\\r`` or form feed is text)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def parse_line(raw: str, lineno: int, path: str) -> Line:
    body = raw.rstrip("\n")
    stripped = body.strip(SPACE)
    if not stripped:
        return Line(raw, "blank", lineno=lineno)
    if stripped.startswith("#"):
        kind = "marker" if stripped.startswith(MARKER_PREFIX) else "comment"
        return Line(raw, kind, lineno=lineno)
    try:
        fields = split_fields(body)
    except ValueError as e:
        raise ConfigParseError(path, lineno, str(e), raw) from None
    if len(fields) < 2:
        raise ConfigParseError(path, lineno, "an entry needs at least a name and a device", raw)
    if len(fields) > 4:
        raise ConfigParseError(
            path, lineno,
            f"{len(fields)} fields, at most 4 (name, device, key file, options); '#' after a field is not a comment",
            raw,
        )  # fmt: skip
    name, device = fields[0], fields[1]
    keyfile = fields[2] if len(fields) > 2 else None
    options = fields[3] if len(fields) > 3 else None
    return Line(raw, "entry", Entry(name, device, keyfile, options), lineno=lineno)


def parse(text: str, path: str = "/etc/crypttab") -> Crypttab:
    """Parse crypttab text; raise ConfigParseError naming the first line that is not valid crypttab."""
    lines = [parse_line(raw, i, path) for i, raw in enumerate(split_lines(text), 1)]
    for prev, cur in itertools.pairwise(lines):
        if prev.kind == "marker" and cur.kind == "entry":
            cur.managed = True
    return Crypttab(lines)


def render_entry_line(entry: Entry) -> str:
    """A managed entry as tpmseal writes it when no template is in use (tests and the fallback)."""
    parts = [quote_field(entry.name), quote_field(entry.device), quote_field(entry.keyfile or "none")]
    if entry.options:
        parts.append(quote_field(entry.options))
    return " ".join(parts) + "\n"


@dataclass(frozen=True)
class Wanted:
    """An entry tpmseal wants for one volume: ``line`` is the rendered entry (one line, newline included)."""

    uuid: str
    name: str
    line: str
    aliases: tuple[str, ...] = ()  # other device spellings of the volume: /dev/sda2, by-id links…


@dataclass
class MergeResult:
    text: str
    added: list[str] = field(default_factory=list)  # names
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_admin: list[str] = field(default_factory=list)  # volumes the admin's own line already covers
    admin_names: dict[str, str] = field(default_factory=dict)  # their UUID -> the admin's mapping name
    notes: list[str] = field(default_factory=list)


def _admin_line_for(tab: Crypttab, want: Wanted) -> Line | None:
    for ln in tab.unmanaged():
        assert ln.entry is not None
        e = ln.entry
        if e.uuid() == want.uuid or e.device in want.aliases or e.name == want.name:
            return ln
    return None


def merge(tab: Crypttab, wanted: list[Wanted], examined: set[str], path: str = "/etc/crypttab") -> MergeResult:
    """Bring the managed entries in line with ``wanted``.

    ``examined``: UUIDs of the volumes that were looked at. A managed entry for an examined volume that is not
    wanted (its TPM tokens are gone) is removed; one for a volume that was not examined (not found, not named)
    stays. The admin's lines, comments and blank lines are never touched. New entries go at the end.
    """
    res = MergeResult("")
    by_uuid = {w.uuid: w for w in wanted}
    done: set[str] = set()
    out: list[str] = []
    lines = tab.lines
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.kind == "marker":
            nxt = lines[i + 1] if i + 1 < len(lines) else None
            if nxt is None or nxt.kind != "entry":
                res.notes.append(f"{path}:{ln.lineno}: dropped a tpmseal marker with no entry below it")
                i += 1
                continue
            assert nxt.entry is not None
            uuid = nxt.entry.uuid()
            w = by_uuid.get(uuid or "")
            if w is not None and uuid not in done:
                done.add(w.uuid)
                out.append(ln.raw if ln.raw.rstrip("\r\n") == MARKER else MARKER + "\n")
                if nxt.raw != w.line:
                    res.updated.append(w.name)
                out.append(w.line)
            elif uuid is not None and uuid in examined:
                res.removed.append(nxt.entry.name)
            else:
                out += [ln.raw, nxt.raw]
                if uuid is None or uuid in done:
                    res.notes.append(f"{path}:{nxt.lineno}: kept managed entry '{nxt.entry.name}' (not examined)")
                else:
                    res.notes.append(f"kept entry '{nxt.entry.name}' for UUID {uuid}: volume not found now")
            i += 2
            continue
        out.append(ln.raw)
        i += 1
    for w in wanted:
        if w.uuid in done:
            continue
        admin = _admin_line_for(tab, w)
        if admin is not None:
            assert admin.entry is not None
            res.kept_admin.append(w.name)
            res.admin_names[w.uuid] = admin.entry.name
            res.notes.append(
                f"{path}:{admin.lineno}: the admin's own entry '{admin.entry.name}' covers UUID {w.uuid}; left as it is"
            )
            continue
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out += [MARKER + "\n", w.line]
        res.added.append(w.name)
    res.text = "".join(out)
    return res
