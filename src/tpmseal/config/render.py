# SPDX-License-Identifier: LGPL-2.1-or-later
"""jinja2 templates for the managed lines and files. The admin overrides one by putting a file of the same
name in ``ROOT/etc/tpmseal/templates/``; the packaged ones (tpmseal/config/templates/) are the fallback.
Output is checked: a crypttab entry must parse as one entry with the volume's name and UUID."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tpmseal.config.crypttab import SAFE_NAME, ConfigParseError, parse_line
from tpmseal.errors import TpmsealError

PACKAGED = os.path.join(os.path.dirname(__file__), "templates")
OVERRIDE_DIR = "etc/tpmseal/templates"
ENTRY = "crypttab-entry.j2"
CMDLINE = "cmdline.j2"
GRUB = "grub.cfg.j2"


class TemplateError(TpmsealError):
    default_hint = "fix or remove the override in /etc/tpmseal/templates (see docs/config.md)"


@dataclass(frozen=True)
class BootVolume:
    uuid: str
    name: str
    options: tuple[str, ...]  # crypttab options without "luks" (the type is implied on the command line)


class Templates:
    def __init__(self, root: str = "/") -> None:
        import jinja2

        self.override_dir = os.path.join(root, OVERRIDE_DIR)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([self.override_dir, PACKAGED]),
            autoescape=False,  # noqa: S701 -- plain-text configuration files, not HTML
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )

    def origin(self, name: str) -> str:
        own = os.path.join(self.override_dir, name)
        return own if os.path.isfile(own) else os.path.join(PACKAGED, name)

    def _render(self, template: str, **kw: Any) -> str:
        import jinja2

        try:
            return self.env.get_template(template).render(**kw)
        except jinja2.TemplateError as e:
            raise TemplateError(f"template {self.origin(template)}: {e}") from None

    def entry(self, name: str, uuid: str, options: list[str]) -> str:
        if not SAFE_NAME.fullmatch(name):
            raise TpmsealError(f"mapping name {name!r} is not one tpmseal writes", "use letters, digits and ._+:@-")
        text = self._render(ENTRY, name=name, uuid=uuid, options=options)
        line = text.strip("\n") + "\n"
        where = self.origin(ENTRY)
        if "\n" in line[:-1]:
            raise TemplateError(f"template {where} rendered more than one line for {name}")
        try:
            parsed = parse_line(line, 1, where)
        except ConfigParseError as e:
            raise TemplateError(f"template {where} rendered a line that is not crypttab: {e.message}") from None
        if parsed.entry is None or parsed.entry.name != name or parsed.entry.uuid() != uuid:
            raise TemplateError(f"template {where} must render an entry for name {name} and UUID={uuid}: {line!r}")
        return line

    def cmdline_words(self, volumes: list[BootVolume]) -> list[str]:
        return self._render(CMDLINE, volumes=volumes).split()

    def grub(self, volumes: list[BootVolume]) -> str:
        text = self._render(GRUB, volumes=volumes, cmdline=" ".join(self.cmdline_words(volumes)))
        return text if text.endswith("\n") else text + "\n"
