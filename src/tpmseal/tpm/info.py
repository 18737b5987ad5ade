# SPDX-License-Identifier: LGPL-2.1-or-later
"""What TPM is there, and what it can do: ``tpmseal tpm list`` and ``tpmseal tpm info``.

``list_tpms`` reads sysfs only (no TPM command). ``read_info`` asks the TPM with GetCapability,
TestParms, PCR_Read and ReadPublic: none of them loads an object or starts a session, so nothing is
left in a TPM without a resource manager (swtpm). The ESYS_TR that ReadPublic creates for the SRK is
closed before returning.

``advisories`` matches the manufacturer and firmware version against published TPM vulnerabilities;
the facts and sources are in docs/tpm-advisories.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tpmseal.tpm.srk import SRK_HANDLE

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

ADVISORIES_DOC = "docs/tpm-advisories.md"

# TPM2_PT values (TPM 2.0 part 2, 6.13): fixed properties start at 0x100, variable ones at 0x200.
PT_FIXED = 0x100
PT_FAMILY_INDICATOR = 0x100
PT_LEVEL = 0x101
PT_REVISION = 0x102
PT_DAY_OF_YEAR = 0x103
PT_YEAR = 0x104
PT_MANUFACTURER = 0x105
PT_VENDOR_STRING_1 = 0x106  # .. 0x109
PT_VENDOR_TPM_TYPE = 0x10A
PT_FIRMWARE_VERSION_1 = 0x10B
PT_FIRMWARE_VERSION_2 = 0x10C
PT_VAR = 0x200
PT_PERMANENT = 0x200
PT_LOCKOUT_COUNTER = 0x20E
PT_MAX_AUTH_FAIL = 0x20F
PT_LOCKOUT_INTERVAL = 0x210
PT_LOCKOUT_RECOVERY = 0x211

TPMA_PERMANENT_LOCKOUT_AUTH_SET = 1 << 2
TPMA_PERMANENT_IN_LOCKOUT = 1 << 9

PERSISTENT_FIRST = 0x81000000

# TCG vendor ID registry: the 4-byte ASCII manufacturer ID as an integer.
MANUFACTURER_INFINEON = 0x49465800  # "IFX"
MANUFACTURER_AMD = 0x414D4400  # "AMD"

# ---------------------------------------------------------------------------------------------------
# tpmseal tpm list: sysfs only


@dataclass
class TpmDevice:
    name: str  # tpm0
    device: str  # /dev/tpm0
    rm_device: str | None  # /dev/tpmrm0 when the kernel offers a resource manager for it
    driver: str | None  # tpm_tis, tpm_crb, tpm_tis_spi, … (None when sysfs does not say)
    version_major: int | None  # 1 or 2 (from tpm_version_major, kernel 5.x and later)
    description: str | None = None  # ACPI description, when the firmware gives one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def list_tpms(sysfs: str = "/sys", dev: str = "/dev") -> list[TpmDevice]:
    """The TPMs the kernel knows, from ``SYSFS/class/tpm``; device nodes are named under ``dev``.

    Without a tpm class in sysfs (a container), the device nodes in ``dev`` are listed as they are.
    """
    cls = os.path.join(sysfs, "class", "tpm")
    out: list[TpmDevice] = []
    try:
        names = sorted((n for n in os.listdir(cls) if re.fullmatch(r"tpm\d+", n)), key=lambda n: int(n[3:]))
    except OSError:
        names = []
    for name in names:
        base = os.path.join(cls, name)
        num = name[3:]
        rm_name = f"tpmrm{num}"
        has_rm = os.path.exists(os.path.join(sysfs, "class", "tpmrm", rm_name))
        driver_link = os.path.join(base, "device", "driver")
        driver = os.path.basename(os.path.realpath(driver_link)) if os.path.exists(driver_link) else None
        major = _read(os.path.join(base, "tpm_version_major"))
        out.append(
            TpmDevice(
                name,
                os.path.join(dev, name),
                os.path.join(dev, rm_name) if has_rm else None,
                driver,
                int(major) if major and major.isdigit() else None,
                _read(os.path.join(base, "device", "description")),
            )
        )
    if out:
        return out
    try:
        nodes = sorted(n for n in os.listdir(dev) if re.fullmatch(r"tpm\d+", n))
    except OSError:
        return out
    for n in nodes:
        rm = os.path.join(dev, f"tpmrm{n[3:]}")
        out.append(TpmDevice(n, os.path.join(dev, n), rm if os.path.exists(rm) else None, None, None))
    return out


# ---------------------------------------------------------------------------------------------------
# tpmseal tpm info


@dataclass
class Advisory:
    id: str  # CVE or paper
    name: str
    severity: str  # "warn": act on it; "info": know about it
    summary: str
    hint: str
    reference: str = ADVISORIES_DOC


@dataclass
class Lockout:
    failed_tries: int
    max_tries: int
    recovery_time: int  # seconds until one failed try is forgotten (LOCKOUT_INTERVAL)
    lockout_recovery: int  # seconds before lockoutAuth may be tried again after a failure
    in_lockout: bool
    lockout_auth_set: bool


@dataclass
class SrkInfo:
    handle: str
    present: bool
    usable: bool  # a restricted decryption storage key tpmseal can seal under
    name: str | None = None  # hex; tokens store it as srk.name
    algorithm: str | None = None  # "ecc-nist_p256", "rsa-2048", …
    problem: str | None = None


@dataclass
class TpmInfo:
    device: str
    manufacturer_id: str  # 0x…
    manufacturer: str  # the ASCII of the ID: IFX, AMD, INTC, STM, IBM, …
    vendor_string: str
    vendor_tpm_type: int
    firmware_version: str  # dotted, as tools on other systems print it (four 16-bit parts)
    firmware_raw: list[str]  # FIRMWARE_VERSION_1, _2 as hex
    family: str  # "2.0"
    spec_level: int
    spec_revision: str  # "1.59"
    spec_date: str  # "YEAR, day N"
    banks: list[str]  # allocated PCR banks
    banks_implemented: list[str]
    algorithms: list[str]
    ecc_curves: list[str]
    supports: dict[str, bool]  # what tpmseal uses: ecc-p256, rsa-2048, aes-128-cfb, sha256
    pcrs: dict[str, dict[str, str]]  # bank -> index -> hex
    lockout: Lockout
    persistent_handles: list[str]
    srk: SrkInfo
    advisories: list[Advisory] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ascii(words: list[int]) -> str:
    raw = b"".join(w.to_bytes(4, "big") for w in words)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() if raw else ""


def _alg_name(alg: int) -> str:
    from tpm2_pytss import TPM2_ALG

    name = str(TPM2_ALG(alg))
    return "sha1" if name == "sha" else name


def firmware_dotted(fw1: int, fw2: int) -> str:
    return f"{fw1 >> 16}.{fw1 & 0xFFFF}.{fw2 >> 16}.{fw2 & 0xFFFF}"


def _properties(esapi: ESAPI, first: int, count: int) -> dict[int, int]:
    from tpm2_pytss import TPM2_CAP

    out: dict[int, int] = {}
    prop = first
    while True:
        more, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, prop, count)
        got = list(data.data.tpmProperties)
        for p in got:
            out[int(p.property)] = int(p.value)
        if not more or not got or int(got[-1].property) >= first + count - 1:
            return out
        prop = int(got[-1].property) + 1


def lockout_state(esapi: ESAPI) -> Lockout:
    v = _properties(esapi, PT_VAR, 0x20)
    perm = v.get(PT_PERMANENT, 0)
    return Lockout(
        v.get(PT_LOCKOUT_COUNTER, 0),
        v.get(PT_MAX_AUTH_FAIL, 0),
        v.get(PT_LOCKOUT_INTERVAL, 0),
        v.get(PT_LOCKOUT_RECOVERY, 0),
        bool(perm & TPMA_PERMANENT_IN_LOCKOUT),
        bool(perm & TPMA_PERMANENT_LOCKOUT_AUTH_SET),
    )


def _pcr_banks(esapi: ESAPI) -> tuple[list[str], list[str]]:
    """(allocated banks, implemented banks)."""
    from tpm2_pytss import TPM2_CAP

    _, data = esapi.get_capability(TPM2_CAP.PCRS, 0, 1)
    allocated, implemented = [], []
    for sel in data.data.assignedPCR:
        name = _alg_name(sel.hash)
        implemented.append(name)
        if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
            allocated.append(name)
    return allocated, implemented


def _algorithms(esapi: ESAPI) -> list[str]:
    from tpm2_pytss import TPM2_CAP

    out: list[str] = []
    alg = 0
    while True:
        more, data = esapi.get_capability(TPM2_CAP.ALGS, alg, 64)
        got = list(data.data.algorithms)
        out += [_alg_name(a.alg) for a in got]
        if not more or not got:
            return out
        alg = int(got[-1].alg) + 1


def _curves(esapi: ESAPI) -> list[str]:
    from tpm2_pytss import TPM2_CAP, TPM2_ECC

    _, data = esapi.get_capability(TPM2_CAP.ECC_CURVES, 0, 64)
    return [str(TPM2_ECC(c)) for c in data.data.eccCurves]


def _persistent(esapi: ESAPI) -> list[int]:
    from tpm2_pytss import TPM2_CAP

    out: list[int] = []
    handle = PERSISTENT_FIRST
    while True:
        more, data = esapi.get_capability(TPM2_CAP.HANDLES, handle, 64)
        got = [int(h) for h in data.data.handles]
        out += [h for h in got if h >> 24 == 0x81]
        if not more or not got or got[-1] >> 24 != 0x81:
            return out
        handle = got[-1] + 1


def _test_parms(esapi: ESAPI, template: str) -> bool:
    from tpm2_pytss import TPM2B_PUBLIC, TPMT_PUBLIC_PARMS, TSS2_Exception

    pub = TPM2B_PUBLIC.parse(template).publicArea
    try:
        esapi.test_parms(TPMT_PUBLIC_PARMS(type=pub.type, parameters=pub.parameters))
    except TSS2_Exception:
        return False
    return True


def srk_info(esapi: ESAPI, persistent: list[int] | None = None) -> SrkInfo:
    """Whether 0x81000001 holds a key tpmseal can use as its SRK (one ReadPublic; nothing stays loaded)."""
    from tpm2_pytss import TPM2_ALG, TSS2_Exception

    from tpmseal.tpm.srk import _is_storage_key

    info = SrkInfo(f"{SRK_HANDLE:#x}", False, False)
    if persistent is not None and SRK_HANDLE not in persistent:
        info.problem = "no key at this handle ('tpmseal enroll' creates it)"
        return info
    try:
        tr = esapi.tr_from_tpmpublic(SRK_HANDLE)
    except TSS2_Exception as e:
        info.problem = f"cannot read the handle: {e}"
        return info
    try:
        info.present = True
        public, _, _ = esapi.read_public(tr)
        area = public.publicArea
        info.name = bytes(esapi.tr_get_name(tr)).hex()
        if area.type == TPM2_ALG.ECC:
            info.algorithm = f"ecc-{_curve_name(area.parameters.eccDetail.curveID)}"
        elif area.type == TPM2_ALG.RSA:
            info.algorithm = f"rsa-{int(area.parameters.rsaDetail.keyBits)}"
        else:
            info.algorithm = str(TPM2_ALG(area.type))
        if _is_storage_key(public):
            info.usable = True
        else:
            info.problem = "the key there is not a restricted decryption (storage) key"
    except TSS2_Exception as e:
        info.problem = f"cannot read its public part: {e}"
    finally:
        esapi.tr_close(tr)
    return info


def _curve_name(curve: int) -> str:
    from tpm2_pytss import TPM2_ECC

    return str(TPM2_ECC(curve))


def read_pcr_values(esapi: ESAPI, banks: list[str]) -> dict[str, dict[str, str]]:
    from tpmseal.tpm.pcrs import BANKS, PCR_COUNT, Pcr, PcrSelection
    from tpmseal.unlock import read_pcrs

    out: dict[str, dict[str, str]] = {}
    for bank in banks:
        if bank not in BANKS:
            continue
        values = read_pcrs(esapi, PcrSelection(bank, tuple(Pcr(i) for i in range(PCR_COUNT))))
        out[bank] = {str(i): v.hex() for i, v in sorted(values.items())}
    return out


def read_info(esapi: ESAPI, device: str) -> TpmInfo:
    """Everything ``tpmseal tpm info`` shows. Raises TpmError when the TPM does not answer."""
    from tpm2_pytss import TSS2_Exception

    from tpmseal.tpm.device import tpm_error

    try:
        fixed = _properties(esapi, PT_FIXED, 0x30)
        fw1, fw2 = fixed.get(PT_FIRMWARE_VERSION_1, 0), fixed.get(PT_FIRMWARE_VERSION_2, 0)
        mid = fixed.get(PT_MANUFACTURER, 0)
        revision = fixed.get(PT_REVISION, 0)
        allocated, implemented = _pcr_banks(esapi)
        algs = _algorithms(esapi)
        curves = _curves(esapi) if "ecc" in algs else []
        persistent = _persistent(esapi)
        supports = {
            "ecc-p256": "ecc" in algs and "nist_p256" in curves and _test_parms(esapi, "ecc256:aes128cfb"),
            "rsa-2048": "rsa" in algs and _test_parms(esapi, "rsa2048:aes128cfb"),
            "aes-128-cfb": "aes" in algs and "cfb" in algs,
            "sha256": "sha256" in algs,
        }
        info = TpmInfo(
            device=device,
            manufacturer_id=f"{mid:#010x}",
            manufacturer=_ascii([mid]),
            vendor_string=_ascii([fixed.get(PT_VENDOR_STRING_1 + i, 0) for i in range(4)]),
            vendor_tpm_type=fixed.get(PT_VENDOR_TPM_TYPE, 0),
            firmware_version=firmware_dotted(fw1, fw2),
            firmware_raw=[f"{fw1:#010x}", f"{fw2:#010x}"],
            family=_ascii([fixed.get(PT_FAMILY_INDICATOR, 0)]),
            spec_level=fixed.get(PT_LEVEL, 0),
            spec_revision=f"{revision // 100}.{revision % 100:02d}",
            spec_date=f"{fixed.get(PT_YEAR, 0)}, day {fixed.get(PT_DAY_OF_YEAR, 0)}",
            banks=allocated,
            banks_implemented=implemented,
            algorithms=algs,
            ecc_curves=curves,
            supports=supports,
            pcrs=read_pcr_values(esapi, allocated),
            lockout=lockout_state(esapi),
            persistent_handles=[f"{h:#010x}" for h in persistent],
            srk=srk_info(esapi, persistent),
        )
    except TSS2_Exception as e:
        raise tpm_error(e, "reading the TPM's properties") from None
    info.advisories = advisories(mid, fw1, fw2, info.srk.algorithm)
    return info


# ---------------------------------------------------------------------------------------------------
# Known vulnerabilities by manufacturer and firmware version (docs/tpm-advisories.md)

# Infineon firmware with the RSA key generation flaw (ROCA, CVE-2017-15361), per major version:
# affected minor versions, inclusive ranges. From Infineon's and Microsoft's advisories (ADV170012).
ROCA_AFFECTED: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((0, 33), (40, 42)),
    5: ((0, 61),),
    6: ((0, 42),),
    7: ((0, 61),),
    133: ((0, 32),),
}


def roca_affected(fw1: int) -> bool:
    major, minor = fw1 >> 16, fw1 & 0xFFFF
    return any(lo <= minor <= hi for lo, hi in ROCA_AFFECTED.get(major, ()))


def advisories(manufacturer_id: int, fw1: int, fw2: int, srk_algorithm: str | None = None) -> list[Advisory]:
    """Advisories that apply to this TPM, from what it reports about itself."""
    out: list[Advisory] = []
    if manufacturer_id == MANUFACTURER_INFINEON and roca_affected(fw1):
        rsa_srk = bool(srk_algorithm and srk_algorithm.startswith("rsa"))
        out.append(
            Advisory(
                "CVE-2017-15361",
                "ROCA: weak RSA keys generated by Infineon TPM firmware",
                "warn",
                f"Infineon firmware {fw1 >> 16}.{fw1 & 0xFFFF} generates RSA keys whose private key can be "
                "computed from the public key"
                + (
                    "; the SRK at 0x81000001 is an RSA key, so the salt of every unseal session can be recovered"
                    if rsa_srk
                    else ""
                ),
                "update the TPM firmware (vendor or Infineon tool), then recreate every RSA key the TPM made; "
                "tpmseal prefers an ECC P-256 SRK, which this flaw does not affect",
            )
        )
    if manufacturer_id == MANUFACTURER_AMD:
        out.append(
            Advisory(
                "faulTPM (arXiv:2304.14717)",
                "AMD fTPM state extraction by voltage fault injection",
                "info",
                "an attacker with the machine in hand for a few hours can glitch the AMD Secure Processor and "
                "read every secret of its firmware TPM (shown on Zen 2 and Zen 3); a TPM-only unlock then "
                "protects nothing, and a tpmseal PIN does not help (the sealed key is read without it)",
                "keep a strong passphrase or recovery key, treat TPM unlock as convenience against remote and "
                "casual attackers, and prefer a discrete TPM where physical attacks matter",
            )
        )
    return out
