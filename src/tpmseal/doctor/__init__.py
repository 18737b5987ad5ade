# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal doctor``: is this machine set up so that its volumes unlock at the next boot?

The runner gathers what the checks judge: the TPM's facts (one connection: properties, PCRs, the SRK),
the volumes (given, or discovered as ``tpmseal config`` does), their headers, and the files under
``--root``; then it runs the checks of ``tpmseal.doctor.checks`` in a fixed order. Nothing is changed.

This module is imported when the CLI's parser is built: it imports nothing heavy at module level.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tpmseal.doctor.checks import Check
    from tpmseal.tpm.info import TpmInfo

log = logging.getLogger("tpmseal")

# doctor's own exit status (documented in tpmseal-doctor(8)): the worst result of its checks
EXIT_OK = 0
EXIT_WARN = 1
EXIT_FAIL = 2


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        from tpmseal.doctor.checks import worst

        return worst(self.checks)

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "warn": EXIT_WARN, "fail": EXIT_FAIL}[self.status]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "exit_code": self.exit_code, "checks": [asdict(c) for c in self.checks]}


def _tpm_facts(
    tpm_device: str, banks: set[str]
) -> tuple[TpmInfo | None, dict[str, dict[int, bytes]] | None, str | None]:
    """(TPM info, current PCR values of ``banks`` as bytes, error): one connection, nothing left loaded."""
    from tpmseal.errors import TpmsealError
    from tpmseal.tpm.device import open_tpm
    from tpmseal.tpm.info import read_info

    try:
        with open_tpm(tpm_device) as esapi:
            info = read_info(esapi, tpm_device)
            pcrs = {b: {int(i): bytes.fromhex(v) for i, v in info.pcrs.get(b, {}).items()} for b in info.banks}
            missing = banks - set(pcrs)
            if missing:
                from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
                from tpmseal.unlock import read_pcrs

                for b in sorted(missing & set(BANKS)):
                    pcrs[b] = read_pcrs(esapi, PcrSelection(b, tuple(Pcr(i) for i in range(PCR_COUNT))))
            return info, pcrs, None
    except TpmsealError as e:
        return None, None, e.message


def run_doctor(
    devices: list[str],
    tpm_device: str = "auto",
    root: str = "/",
    initrd: str | None = None,
) -> Report:
    """Run every check. ``devices``: the volumes to check (default: every LUKS volume found). Each volume's
    lock is held shared for the whole run, so no tpmseal writer changes a header between the checks."""
    import contextlib

    with contextlib.ExitStack() as locks:
        return _run_doctor(devices, tpm_device, root, initrd, locks)


def _run_doctor(
    devices: list[str], tpm_device: str, root: str, initrd: str | None, locks: contextlib.ExitStack[bool | None]
) -> Report:
    from tpmseal import __version__
    from tpmseal.config.discover import discover, given
    from tpmseal.doctor import checks as c
    from tpmseal.errors import TpmsealError
    from tpmseal.inventory import native_tokens
    from tpmseal.lock import volume_read_lock
    from tpmseal.luks.volume import Header, Volume

    rep = Report()
    try:
        disc = given(devices, root) if devices else discover(root)
    except TpmsealError as e:
        rep.checks.append(c.Check("volumes", c.FAIL, e.message, e.hint))
        disc = None
    volumes: list[tuple[Any, Volume, Header]] = []
    if disc is not None:
        for note in disc.notes:
            log.info("%s", note)
        for v in disc.volumes:
            if v.error:
                rep.checks.append(c.Check("volume", c.FAIL, f"unreadable: {v.error}", subject=v.device))
                continue
            vol = Volume(v.device)
            try:
                locks.enter_context(volume_read_lock(vol.path))
                header = vol.header()
            except TpmsealError as e:
                rep.checks.append(c.Check("volume", c.FAIL, f"unreadable: {e.message}", e.hint, v.device))
                continue
            tpm_tokens = [t for t in header.tokens.values() if t.type in ("tpmseal-tpm2", "systemd-tpm2", "clevis")]
            if not tpm_tokens:
                if devices:
                    rep.checks.append(
                        c.Check("volume", c.WARN, "no TPM token", "enroll one: 'tpmseal enroll DEVICE'", v.device)
                    )
                continue
            volumes.append((v, vol, header))
        if not volumes and not devices:
            rep.checks.append(
                c.Check("volumes", c.WARN, f"no LUKS volume with a TPM token found ({disc.source})",
                        "enroll one: 'tpmseal enroll DEVICE'")
            )  # fmt: skip

    natives = [(vol.path, t.id, nt) for _, vol, h in volumes for t, nt in native_tokens(h)]
    banks = {s.pcrs.bank for _, _, nt in natives for s in nt.seals}
    info, pcrs, tpm_error = _tpm_facts(tpm_device, banks)
    rep.checks += c.check_tpm(info, tpm_error)
    rep.checks += c.check_srk(info, natives)

    sources = c.cmdline_sources(root)
    for v, vol, header in volumes:
        rep.checks += c.check_tokens(vol, header, tpm_device, pcrs, tpm_error)
        rep.checks.append(c.check_way_in(vol, header))
        rep.checks += c.check_volume_binding(vol, header)
        rep.checks += c.check_pcr_binding(vol, header)
        rep.checks.append(c.check_crypttab(root, v))
        rep.checks.append(c.check_cmdline(root, v, sources))

    if initrd is None and c.inside_initramfs(root):
        rep.checks.append(c.check_running_initramfs(__version__))
    else:
        rep.checks.append(c.check_initramfs(initrd or c.default_initrd(root), __version__, bool(volumes)))
    rep.checks.append(c.check_credd_socket(root))
    rep.checks += c.check_credentials(root)
    return rep
