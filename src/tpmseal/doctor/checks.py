# SPDX-License-Identifier: LGPL-2.1-or-later
"""The checks of ``tpmseal doctor``: small functions, each returning ``Check`` results.

A check reads what it is given (TPM facts, a volume header, files under a root directory) and judges;
the runner (``tpmseal.doctor``) gathers the inputs, so most checks are pure and unit-testable. Only the
token check (which unseals, through ``inventory.run_test_unlock``) and the initramfs check (which runs
``lsinitrd``) reach outside.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpmseal.boot.measure import VOLUME_PCR
from tpmseal.errors import TpmsealError
from tpmseal.luks.tokens import NATIVE_TYPE, NativeToken, Seal

if TYPE_CHECKING:
    from tpmseal.config.discover import LuksVolume
    from tpmseal.luks.volume import Header, Volume
    from tpmseal.tpm.info import TpmInfo

OK = "ok"
WARN = "warn"
FAIL = "fail"
ORDER = {OK: 0, WARN: 1, FAIL: 2}

# Where the credential parts live (the same layout as tpmseal.creds.store, spelled out here so that the
# doctor does not import the credential code).
CREDS_STORE = "etc/tpmseal/creds"
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
CREDD_SOCKET = "tpmseal-credd.socket"
SOCKET_WANTS = "etc/systemd/system/sockets.target.wants"

# What the dracut module installs (dracut/90tpmseal/module-setup.sh: TPMSEAL_SITE).
INITRD_PACKAGE = "usr/lib/tpmseal/site/tpmseal/__init__.py"


@dataclass
class Check:
    """One line of the doctor's report."""

    check: str  # short name: tpm, srk, token-unseal, crypttab, …
    status: str  # ok | warn | fail
    message: str
    hint: str = ""
    subject: str | None = None  # the volume, token or unit the line is about

    def line(self) -> str:
        who = f" {self.subject}" if self.subject else ""
        return f"{self.status:<4}  {self.check}{who}: {self.message}"


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=lambda s: ORDER[s], default=OK)


# ---------------------------------------------------------------------------------------------------
# The TPM


def check_tpm(info: TpmInfo | None, error: str | None) -> list[Check]:
    """TPM present and usable; the algorithms tpmseal needs; dictionary-attack state; known advisories."""
    if info is None:
        return [
            Check(
                "tpm", FAIL, f"no usable TPM: {error}",
                "check --tpm2-device; 'tpmseal tpm list' shows the TPMs the kernel found",
            )
        ]  # fmt: skip
    out = [
        Check(
            "tpm",
            OK,
            f"TPM {info.family} from {info.manufacturer or info.manufacturer_id} ({info.vendor_string or '-'}), "
            f"firmware {info.firmware_version}, PCR banks {', '.join(info.banks) or 'none'}",
        )
    ]
    missing = [k for k in ("sha256", "aes-128-cfb") if not info.supports.get(k)]
    if not (info.supports.get("ecc-p256") or info.supports.get("rsa-2048")):
        missing.append("ecc-p256 or rsa-2048")
    if "sha256" not in info.banks:
        out.append(
            Check(
                "tpm-banks", FAIL, f"the sha256 PCR bank is not active (active: {', '.join(info.banks) or 'none'})",
                "tpmseal binds to sha256 by default; enable the bank in the firmware's TPM settings, or enroll "
                "with --tpm2-pcrs=7:sha1 where only sha1 exists",
            )
        )  # fmt: skip
    if missing:
        out.append(
            Check(
                "tpm-algorithms", FAIL, f"the TPM lacks {', '.join(missing)}",
                "tpmseal needs SHA-256, AES-128-CFB and an ECC P-256 or RSA-2048 storage key",
            )
        )  # fmt: skip
    lo = info.lockout
    if lo.in_lockout:
        out.append(
            Check(
                "tpm-lockout", FAIL,
                f"in dictionary-attack lockout ({lo.failed_tries} of {lo.max_tries} failed tries): PIN tokens refuse",
                f"wait (one try is forgotten every {lo.recovery_time} s) or clear it: "
                "tpm2_dictionarylockout --clear-lockout",
            )
        )  # fmt: skip
    elif lo.max_tries and lo.failed_tries:
        out.append(
            Check(
                "tpm-lockout", WARN, f"{lo.failed_tries} of {lo.max_tries} failed tries counted toward lockout",
                f"one try is forgotten every {lo.recovery_time} s; wrong PINs add to it",
            )
        )  # fmt: skip
    for adv in info.advisories:
        label = "" if adv.severity == "warn" else " (informational)"
        out.append(Check("tpm-advisory", WARN, f"{adv.id}: {adv.name}{label}: {adv.summary}",
                         f"{adv.hint}; see {adv.reference}"))  # fmt: skip
    return out


def check_srk(info: TpmInfo | None, tokens: list[tuple[str, int, NativeToken]]) -> list[Check]:
    """The SRK at 0x81000001 is a usable storage key, and it is the one each native token was sealed under.

    ``tokens``: (device, token id, parsed token) of every native token of the volumes checked.
    """
    if info is None:
        return [Check("srk", FAIL, "not checked: no usable TPM")] if tokens else []
    srk = info.srk
    out: list[Check] = []
    if not srk.present:
        status = FAIL if tokens else WARN
        out.append(
            Check(
                "srk", status, f"no key at {srk.handle}" + (f" ({srk.problem})" if srk.problem else ""),
                "the TPM was cleared, or nothing was enrolled yet; tokens sealed before a clear cannot be "
                "unsealed: open the volume with its passphrase and enroll again"
                if tokens else "'tpmseal enroll' creates it",
            )
        )  # fmt: skip
    elif not srk.usable:
        out.append(
            Check(
                "srk", FAIL, f"{srk.handle} holds a {srk.algorithm} key that tpmseal cannot use: {srk.problem}",
                "another tool put a different key at the standard SRK handle; find out which before removing it",
            )
        )  # fmt: skip
    else:
        out.append(Check("srk", OK, f"{srk.handle}: {srk.algorithm} storage key, name {srk.name}"))
    for device, token_id, nt in tokens:
        who = f"{device} token {token_id}"
        if nt.srk.handle != int(srk.handle, 16):
            out.append(Check("srk-match", WARN, f"sealed under handle {nt.srk.handle:#x}, not checked", subject=who))
        elif not srk.present or srk.name is None:
            out.append(
                Check("srk-match", FAIL, "its SRK is gone from the TPM", "unlock with the passphrase and re-enroll",
                      subject=who)
            )  # fmt: skip
        elif nt.srk.name.hex() != srk.name:
            out.append(
                Check(
                    "srk-match", FAIL,
                    f"sealed under SRK {nt.srk.name.hex()[:16]}…, the TPM now holds {srk.name[:16]}…",
                    "the TPM was cleared or this is another machine's TPM; open the volume with its passphrase "
                    "and enroll again ('tpmseal enroll --replace')",
                    subject=who,
                )
            )  # fmt: skip
        else:
            out.append(Check("srk-match", OK, "the SRK it was sealed under is present", subject=who))
    return out


# ---------------------------------------------------------------------------------------------------
# Tokens of one volume


def _is_zero(value: bytes | None) -> bool:
    return value is not None and not any(value)


def seal_changes(seal: Seal, current: dict[int, bytes]) -> tuple[list[int], bool]:
    """(PCRs whose current value differs from the sealed one, whether PCR 15 differs only because it was
    extended after the unlock phase of this boot: sealed at zero, not zero now)."""
    changed = [p.index for p in seal.pcrs.pcrs if current.get(p.index) != p.value]
    expected = False
    if VOLUME_PCR in changed:
        sealed15 = next(p.value for p in seal.pcrs.pcrs if p.index == VOLUME_PCR)
        now15 = current.get(VOLUME_PCR)
        expected = _is_zero(sealed15) and now15 is not None and not _is_zero(now15)
    return changed, expected


def best_seal(nt: NativeToken, pcrs: dict[str, dict[int, bytes]]) -> tuple[Seal, list[int], bool]:
    """The seal closest to opening with ``pcrs`` (bank -> index -> value): fewest unexpected changes."""
    ranked = []
    for s in nt.seals:
        changed, expected = seal_changes(s, pcrs.get(s.pcrs.bank, {}))
        other = [i for i in changed if not (expected and i == VOLUME_PCR)]
        ranked.append((len(other), len(changed), s, changed, expected))
    ranked.sort(key=lambda r: (r[0], r[1]))
    _, _, seal, changed, expected = ranked[0]
    return seal, changed, expected


def check_tokens(
    volume: Volume,
    header: Header,
    tpm_device: str,
    pcrs: dict[str, dict[int, bytes]] | None,
    tpm_error: str | None = None,
) -> list[Check]:
    """Per TPM token: does it unseal now (``token-unseal``), and will it after a reboot (``token-next-boot``)?

    PIN tokens are not unsealed (nobody is asked for a PIN): only their PCR policy is compared. A token bound
    to PCR 15 at zero cannot unseal on a running system whose initramfs measured its volumes into PCR 15; that
    is the volume binding working, and it will unseal at the next boot, when PCR 15 starts at zero again.
    """
    from tpmseal.interop import FOREIGN_TPM_TYPES, describe
    from tpmseal.inventory import run_test_unlock
    from tpmseal.luks.tokens import parse_native

    out: list[Check] = []
    to_unseal: set[int] = set()
    pending: dict[int, tuple[str, str, list[int], bool]] = {}  # token -> (type, label, changed, expected)
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        who = f"{volume.path} token {t.id} ({t.type})"
        if t.type == NATIVE_TYPE:
            try:
                nt = parse_native(t.data)
            except TpmsealError as e:
                out.append(Check("token-unseal", FAIL, f"unreadable: {e.message}", e.hint, who))
                continue
            if not t.keyslots:
                out.append(Check("token-unseal", FAIL, "names no keyslot (left by an interrupted operation)",
                                 "the next 'tpmseal enroll' removes it", who))  # fmt: skip
                continue
            if pcrs is None:
                out.append(Check("token-unseal", FAIL, f"not checked: no usable TPM ({tpm_error})", subject=who))
                continue
            seal, changed, expected = best_seal(nt, pcrs)
            others = [i for i in changed if not (expected and i == VOLUME_PCR)]
            pending[t.id] = (t.type, seal.label, changed, expected)
            if nt.pin:
                if others:
                    out.append(Check("token-unseal", FAIL, _refused_text(others), _REENROLL, who))
                elif expected:
                    out.append(Check("token-unseal", OK, _EXPECTED_NOW, subject=who))
                else:
                    out.append(Check("token-unseal", OK, "PCR policy holds (PIN token: not unsealed, no PIN asked)",
                                     subject=who))  # fmt: skip
            elif others:
                out.append(Check("token-unseal", FAIL, _refused_text(others), _REENROLL, who))
            elif expected:
                out.append(Check("token-unseal", OK, _EXPECTED_NOW, subject=who))
            else:
                to_unseal.add(t.id)
        elif t.type in FOREIGN_TPM_TYPES:
            try:
                _, pin = describe(t.type, t.data)
            except TpmsealError as e:
                out.append(Check("token-unseal", FAIL, f"unreadable: {e.message}", e.hint, who))
                continue
            if pin:
                out.append(Check("token-unseal", OK, "PIN token: not unsealed (no PIN asked)", subject=who))
            elif pcrs is None:
                out.append(Check("token-unseal", FAIL, f"not checked: no usable TPM ({tpm_error})", subject=who))
            else:
                to_unseal.add(t.id)
    if to_unseal:
        for r in run_test_unlock(volume, header, tpm_device, None, only=lambda t: t.id in to_unseal):
            who = f"{volume.path} token {r.token} ({r.type})"
            ks = ",".join(map(str, r.keyslots))
            if r.ok:
                out.append(Check("token-unseal", OK, f"unseals now and its key opens keyslot {ks}", subject=who))
            else:
                hint = "re-enroll it: 'tpmseal enroll --replace'" if r.type == NATIVE_TYPE else "see tpmseal-migrate(8)"
                out.append(Check("token-unseal", FAIL, f"does not unseal now: {r.error}", hint, who))
    for token_id, (ttype, label, changed, expected) in sorted(pending.items()):
        who = f"{volume.path} token {token_id} ({ttype})"
        others = [i for i in changed if not (expected and i == VOLUME_PCR)]
        if others:
            out.append(
                Check("token-next-boot", FAIL, f"will not unseal after a reboot either: {_changed_text(others)}",
                      _REENROLL, who)
            )  # fmt: skip
        elif expected:
            out.append(Check("token-next-boot", OK, "will unseal at next boot (PCR 15 resets)", subject=who))
        else:
            out.append(Check("token-next-boot", OK, f"the current PCRs match seal '{label}'", subject=who))
    out.sort(key=lambda c: (_token_of(c), c.check != "token-unseal"))
    return out


_EXPECTED_NOW = (
    "refused now, as expected: PCR 15 was extended after this boot's unlock (volume binding); "
    "it unseals in the initramfs"
)
_REENROLL = (
    "if the new state is trusted (firmware or boot loader update), open the volume with its passphrase and "
    "re-enroll: 'tpmseal enroll --replace'"
)


def _changed_text(pcrs: list[int]) -> str:
    return f"PCR(s) {', '.join(map(str, pcrs))} differ from the sealed values"


def _refused_text(pcrs: list[int]) -> str:
    return f"the TPM refuses it now: {_changed_text(pcrs)}"


def _token_of(c: Check) -> int:
    m = re.search(r" token (\d+) ", c.subject or "")
    return int(m.group(1)) if m else -1


def check_way_in(volume: Volume, header: Header) -> Check:
    """A passphrase, key file or recovery keyslot exists besides the TPM ones."""
    from tpmseal.inventory import PASSPHRASE, RECOVERY, keyslot_kind, orphan_keyslots

    orphans = orphan_keyslots(header)
    kinds = {k: keyslot_kind(header, k, orphans) for k in header.keyslots}
    other = sorted(k for k, kind in kinds.items() if kind in (PASSPHRASE, RECOVERY))
    if other:
        names = ", ".join(f"{k} ({kinds[k]})" for k in other)
        return Check("way-in", OK, f"not only the TPM: keyslot(s) {names}", subject=volume.path)
    return Check(
        "way-in", WARN, "the TPM is the only way in: no passphrase or recovery keyslot",
        "add a recovery key now ('tpmseal enroll DEVICE --recovery-key'): a firmware update, a cleared TPM or "
        "a broken board would otherwise lose the data",
        volume.path,
    )  # fmt: skip


def check_volume_binding(volume: Volume, header: Header) -> list[Check]:
    """TPM tokens not bound to PCR 15 (``--no-volume-binding``, or foreign formats)."""
    from tpmseal.boot.measure import is_volume_bound
    from tpmseal.interop import FOREIGN_TPM_TYPES
    from tpmseal.luks.tokens import parse_native

    out = []
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        who = f"{volume.path} token {t.id} ({t.type})"
        if t.type == NATIVE_TYPE:
            try:
                nt = parse_native(t.data)
            except TpmsealError:
                continue  # reported by the token check
            if all(is_volume_bound(s.pcrs) for s in nt.seals):
                out.append(Check("volume-binding", OK, "bound to PCR 15", subject=who))
            else:
                out.append(
                    Check(
                        "volume-binding", WARN, "not bound to PCR 15: a volume swapped in with a copy of this token "
                        "could boot code that unseals it",
                        "fine for a data disk opened after boot; for a disk the initramfs opens, re-enroll without "
                        "--no-volume-binding",
                        who,
                    )
                )  # fmt: skip
        elif t.type in FOREIGN_TPM_TYPES:
            out.append(
                Check("volume-binding", WARN, "this token format has no volume binding",
                      "'tpmseal migrate' replaces it by a tpmseal token bound to PCR 15", who)
            )  # fmt: skip
    return out


def check_pcr_binding(volume: Volume, header: Header) -> list[Check]:
    """TPM tokens whose policy binds to nothing about the boot: no PCR, only PCR 15, only resettable PCRs
    (tpm/strength.py). Any system booted on this machine unseals those."""
    from tpmseal.interop import FOREIGN_TPM_TYPES, describe
    from tpmseal.luks.tokens import parse_native
    from tpmseal.tpm.pcrs import Pcr
    from tpmseal.tpm.strength import advice, boot_pcrs, weakness_of

    out = []
    for t in sorted(header.tokens.values(), key=lambda t: t.id):
        who = f"{volume.path} token {t.id} ({t.type})"
        try:
            if t.type == NATIVE_TYPE:
                nt = parse_native(t.data)
                sets: list[tuple[int, ...] | tuple[Pcr, ...]] = [s.pcrs.pcrs for s in nt.seals]
                pin = nt.pin
            elif t.type in FOREIGN_TPM_TYPES:
                sel, pin = describe(t.type, t.data)
                sets = [sel.indexes]
            else:
                continue
        except TpmsealError:
            continue  # reported by the token check
        w = weakness_of(sets)
        if w is None:
            bound = sorted({i for s in sets for i in boot_pcrs(s)})
            out.append(Check("pcr-binding", OK, f"bound to boot-state PCR(s) {', '.join(map(str, bound))}",
                             subject=who))  # fmt: skip
        else:
            out.append(Check("pcr-binding", WARN, w.message, advice(pin), who))
    return out


# ---------------------------------------------------------------------------------------------------
# Boot configuration under --root


def check_crypttab(root: str, vol: LuksVolume) -> Check:
    """/etc/crypttab has an entry for the volume (by UUID, by-uuid link, device or udev link)."""
    from tpmseal.config.crypttab import ConfigParseError, parse
    from tpmseal.config.files import Target, text_of

    target = Target(root, "/etc/crypttab")
    try:
        text = text_of(target.read())
        tab = parse(text or "", target.real)
    except (ConfigParseError, OSError) as e:
        msg = e.message if isinstance(e, ConfigParseError) else str(e)
        return Check("crypttab", FAIL, msg, "fix the file; systemd cannot read it either", vol.device)
    names = {vol.device, vol.by_uuid, *vol.links}
    for ln in tab.entries():
        entry = ln.entry
        assert entry is not None
        if entry.uuid() == vol.uuid or entry.device in names:
            kind = "managed by tpmseal" if ln.managed else "the admin's own"
            return Check("crypttab", OK, f"entry '{entry.name}' ({kind}, line {ln.lineno})", subject=vol.device)
    return Check(
        "crypttab", WARN, f"no entry in /etc/crypttab names UUID {vol.uuid}",
        "'tpmseal config apply' writes one (then rebuild the initramfs)", vol.device,
    )  # fmt: skip


def cmdline_sources(root: str) -> list[tuple[str, str]]:
    """(where, text) of every kernel command line tpmseal can read under ``root``: the configured one
    (GRUB defaults and tpmseal's drop-in, or /etc/kernel/cmdline) and, on the running system, /proc/cmdline."""
    from tpmseal.config import bootloader

    paths = [bootloader.GRUB_DROPIN, "/etc/default/grub", bootloader.KERNEL_CMDLINE]
    out = []
    for p in paths:
        try:
            with open(os.path.join(root, p.lstrip("/")), encoding="utf-8", errors="replace") as f:
                out.append((p, f.read()))
        except OSError:
            continue
    if os.path.realpath(root) == "/":
        try:
            with open("/proc/cmdline", encoding="utf-8", errors="replace") as f:
                out.append(("/proc/cmdline", f.read()))
        except OSError:
            pass
    return out


def names_volume(text: str, uuid: str) -> bool:
    """Whether a command line (or a GRUB defaults file) has rd.luks.uuid= / rd.luks.name= for ``uuid``."""
    for word in re.findall(r"rd\.luks\.(?:uuid|name)=[^\s\"']+", text):
        value = word.split("=", 1)[1].removeprefix("UUID=").removeprefix("luks-").lower()
        if value.split("=", 1)[0] == uuid.lower():
            return True
    return False


def check_cmdline(root: str, vol: LuksVolume, sources: list[tuple[str, str]] | None = None) -> Check:
    """Volumes the initramfs must open (holding / or /usr) are named on the kernel command line."""
    srcs = cmdline_sources(root) if sources is None else sources
    found = [where for where, text in srcs if names_volume(text, vol.uuid)]
    if found:
        return Check("cmdline", OK, f"rd.luks options name it ({', '.join(found)})", subject=vol.device)
    if vol.boot:
        return Check(
            "cmdline", WARN, "holds / or /usr but no rd.luks.uuid= or rd.luks.name= on the kernel command line",
            "'tpmseal config apply --regenerate' adds it to the boot loader configuration", vol.device,
        )  # fmt: skip
    return Check("cmdline", OK, "not on the kernel command line: not needed (does not hold / or /usr)",
                 subject=vol.device)  # fmt: skip


def default_initrd(root: str = "/") -> str | None:
    """The running kernel's initramfs: Debian's /boot/initrd.img-KVER, else /boot/initramfs-KVER.img."""
    kver = os.uname().release
    for name in (f"boot/initrd.img-{kver}", f"boot/initramfs-{kver}.img"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    return None


def initrd_version(initrd: str) -> str | None:
    """tpmseal's ``__version__`` inside an initramfs (lsinitrd), or None when the module is not in it."""
    from tpmseal.proc import run

    r = run(["lsinitrd", "-f", INITRD_PACKAGE, initrd])
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", r.stdout, re.MULTILINE)
    if m:
        return m.group(1)
    return "unknown" if r.stdout.strip() else None


def inside_initramfs(root: str) -> bool:
    """Whether ``root`` is an initramfs (systemd and dracut both mark it with /etc/initrd-release)."""
    return os.path.exists(os.path.join(root, "etc", "initrd-release"))


def check_running_initramfs(version: str) -> Check:
    """doctor runs from the initramfs itself (an emergency shell, or a test): this tpmseal is its module."""
    return Check("initramfs", OK, f"running inside the initramfs, which holds the tpmseal module, version {version}")


def check_initramfs(initrd: str | None, installed: str, needed: bool) -> Check:
    """The dracut module is in the initramfs, with the installed tpmseal version.

    ``needed``: some volume has a TPM token (without one a missing module is only a warning).
    """
    from tpmseal.errors import MissingTool

    if initrd is None:
        return Check(
            "initramfs", WARN, f"no initramfs found for kernel {os.uname().release}",
            "give one with --initrd FILE", None,
        )  # fmt: skip
    if not os.path.exists(initrd):
        return Check("initramfs", WARN, f"{initrd} does not exist", "give the right file with --initrd FILE")
    try:
        version = initrd_version(initrd)
    except MissingTool:
        return Check("initramfs", WARN, f"cannot look into {initrd}: lsinitrd is not installed",
                     "install dracut (it provides lsinitrd)")  # fmt: skip
    except TpmsealError as e:
        return Check("initramfs", WARN, f"cannot look into {initrd}: {e.message}", "is it an initramfs?")
    if version is None:
        return Check(
            "initramfs", FAIL if needed else WARN, f"{initrd} has no tpmseal dracut module: nothing unlocks at boot",
            "add it and rebuild: dracut --add tpmseal --force (or add_dracutmodules+=\" tpmseal \" in "
            "/etc/dracut.conf.d/tpmseal.conf, then dracut --regenerate-all --force)",
        )  # fmt: skip
    if version != installed:
        return Check(
            "initramfs", WARN, f"{initrd} holds tpmseal {version}, the installed one is {installed}",
            "rebuild the initramfs: dracut --regenerate-all --force",
        )  # fmt: skip
    return Check("initramfs", OK, f"{initrd} holds the tpmseal module, version {version}")


# ---------------------------------------------------------------------------------------------------
# Service credentials under --root


def unit_exists(root: str, unit: str) -> str | None:
    """Where the unit file is (also ``name@.service`` for an instance), or None."""
    candidates = [unit]
    m = re.fullmatch(r"([^@]+)@[^.]+(\.\w+)", unit)
    if m:
        candidates.append(f"{m.group(1)}@{m.group(2)}")
    for d in UNIT_DIRS:
        for u in candidates:
            p = os.path.join(root, d, u)
            if os.path.exists(p):
                return "/" + os.path.join(d, u)
    return None


def installed_credentials(root: str) -> dict[str, list[str]]:
    """unit -> credential names, from /etc/tpmseal/creds/UNIT/NAME.cred."""
    store = os.path.join(root, CREDS_STORE)
    out: dict[str, list[str]] = {}
    try:
        units = sorted(os.listdir(store))
    except OSError:
        return out
    for unit in units:
        try:
            names = sorted(
                n.removesuffix(".cred") for n in os.listdir(os.path.join(store, unit)) if n.endswith(".cred")
            )
        except OSError:
            continue
        if names:
            out[unit] = names
    return out


def check_credd_socket(root: str) -> Check:
    """tpmseal-credd.socket is enabled when credentials are installed."""
    creds = installed_credentials(root)
    wants = os.path.join(root, SOCKET_WANTS, CREDD_SOCKET)
    unit = unit_exists(root, CREDD_SOCKET)
    link = os.path.join(root, "etc/systemd/system", CREDD_SOCKET)
    masked = os.path.islink(link) and os.readlink(link) == "/dev/null"
    if masked:
        return Check("credd-socket", FAIL if creds else WARN, f"{CREDD_SOCKET} is masked",
                     f"systemctl unmask {CREDD_SOCKET} && systemctl enable --now {CREDD_SOCKET}")  # fmt: skip
    if os.path.lexists(wants):
        if unit is None:
            return Check("credd-socket", WARN, f"{CREDD_SOCKET} is enabled but its unit file is not installed",
                         "install tpmseal's systemd units (systemd/ in the source tree)")  # fmt: skip
        return Check("credd-socket", OK, f"{CREDD_SOCKET} is enabled ({unit})")
    if not creds:
        return Check("credd-socket", OK, f"{CREDD_SOCKET} is not enabled; no credentials are installed")
    return Check(
        "credd-socket", FAIL, f"{CREDD_SOCKET} is not enabled, but {len(creds)} unit(s) load credentials from it",
        f"systemctl enable --now {CREDD_SOCKET}",
    )  # fmt: skip


def check_credentials(root: str) -> list[Check]:
    """Each installed credential belongs to a unit that exists and loads it (its drop-in)."""
    creds = installed_credentials(root)
    if not creds:
        return [Check("credentials", OK, f"none installed (/{CREDS_STORE})")]
    out = []
    for unit, names in creds.items():
        where = unit_exists(root, unit)
        if where is None:
            out.append(
                Check(
                    "credentials", WARN, f"{', '.join(names)} installed for a unit that does not exist",
                    f"remove with 'tpmseal creds uninstall {unit} NAME', or install the unit", unit,
                )
            )  # fmt: skip
            continue
        no_dropin = [
            n for n in names
            if not os.path.exists(os.path.join(root, "etc/systemd/system", f"{unit}.d", f"tpmseal-{n}.conf"))
        ]  # fmt: skip
        if no_dropin:
            out.append(
                Check(
                    "credentials", WARN, f"{', '.join(no_dropin)}: no drop-in, so {unit} does not load it",
                    f"install it again: 'tpmseal creds install {unit} NAME FILE'", unit,
                )
            )  # fmt: skip
        else:
            out.append(Check("credentials", OK, f"{', '.join(names)} for {where}", subject=unit))
    return out
