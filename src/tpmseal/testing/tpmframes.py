# SPDX-License-Identifier: LGPL-2.1-or-later
"""TPM frames as the proxy sees them: the header, command code names, and the records it keeps."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Literal

COMMAND_NAMES: dict[int, str] = {
    0x0000011F: "NV_UndefineSpaceSpecial",
    0x00000120: "EvictControl",
    0x00000121: "HierarchyControl",
    0x00000122: "NV_UndefineSpace",
    0x00000124: "ChangeEPS",
    0x00000125: "ChangePPS",
    0x00000126: "Clear",
    0x00000127: "ClearControl",
    0x00000128: "ClockSet",
    0x00000129: "HierarchyChangeAuth",
    0x0000012A: "NV_DefineSpace",
    0x0000012B: "PCR_Allocate",
    0x0000012C: "PCR_SetAuthPolicy",
    0x0000012D: "PP_Commands",
    0x0000012E: "SetPrimaryPolicy",
    0x0000012F: "FieldUpgradeStart",
    0x00000130: "ClockRateAdjust",
    0x00000131: "CreatePrimary",
    0x00000132: "NV_GlobalWriteLock",
    0x00000133: "GetCommandAuditDigest",
    0x00000134: "NV_Increment",
    0x00000135: "NV_SetBits",
    0x00000136: "NV_Extend",
    0x00000137: "NV_Write",
    0x00000138: "NV_WriteLock",
    0x00000139: "DictionaryAttackLockReset",
    0x0000013A: "DictionaryAttackParameters",
    0x0000013B: "NV_ChangeAuth",
    0x0000013C: "PCR_Event",
    0x0000013D: "PCR_Reset",
    0x0000013E: "SequenceComplete",
    0x0000013F: "SetAlgorithmSet",
    0x00000140: "SetCommandCodeAuditStatus",
    0x00000141: "FieldUpgradeData",
    0x00000142: "IncrementalSelfTest",
    0x00000143: "SelfTest",
    0x00000144: "Startup",
    0x00000145: "Shutdown",
    0x00000146: "StirRandom",
    0x00000147: "ActivateCredential",
    0x00000148: "Certify",
    0x00000149: "PolicyNV",
    0x0000014A: "CertifyCreation",
    0x0000014B: "Duplicate",
    0x0000014C: "GetTime",
    0x0000014D: "GetSessionAuditDigest",
    0x0000014E: "NV_Read",
    0x0000014F: "NV_ReadLock",
    0x00000150: "ObjectChangeAuth",
    0x00000151: "PolicySecret",
    0x00000152: "Rewrap",
    0x00000153: "Create",
    0x00000154: "ECDH_ZGen",
    0x00000155: "HMAC",  # also TPM2_MAC
    0x00000156: "Import",
    0x00000157: "Load",
    0x00000158: "Quote",
    0x00000159: "RSA_Decrypt",
    0x0000015B: "HMAC_Start",  # also TPM2_MAC_Start
    0x0000015C: "SequenceUpdate",
    0x0000015D: "Sign",
    0x0000015E: "Unseal",
    0x00000160: "PolicySigned",
    0x00000161: "ContextLoad",
    0x00000162: "ContextSave",
    0x00000163: "ECDH_KeyGen",
    0x00000164: "EncryptDecrypt",
    0x00000165: "FlushContext",
    0x00000167: "LoadExternal",
    0x00000168: "MakeCredential",
    0x00000169: "NV_ReadPublic",
    0x0000016A: "PolicyAuthorize",
    0x0000016B: "PolicyAuthValue",
    0x0000016C: "PolicyCommandCode",
    0x0000016D: "PolicyCounterTimer",
    0x0000016E: "PolicyCpHash",
    0x0000016F: "PolicyLocality",
    0x00000170: "PolicyNameHash",
    0x00000171: "PolicyOR",
    0x00000172: "PolicyTicket",
    0x00000173: "ReadPublic",
    0x00000174: "RSA_Encrypt",
    0x00000176: "StartAuthSession",
    0x00000177: "VerifySignature",
    0x00000178: "ECC_Parameters",
    0x00000179: "FirmwareRead",
    0x0000017A: "GetCapability",
    0x0000017B: "GetRandom",
    0x0000017C: "GetTestResult",
    0x0000017D: "Hash",
    0x0000017E: "PCR_Read",
    0x0000017F: "PolicyPCR",
    0x00000180: "PolicyRestart",
    0x00000181: "ReadClock",
    0x00000182: "PCR_Extend",
    0x00000183: "PCR_SetAuthValue",
    0x00000184: "NV_Certify",
    0x00000185: "EventSequenceComplete",
    0x00000186: "HashSequenceStart",
    0x00000187: "PolicyPhysicalPresence",
    0x00000188: "PolicyDuplicationSelect",
    0x00000189: "PolicyGetDigest",
    0x0000018A: "TestParms",
    0x0000018B: "Commit",
    0x0000018C: "PolicyPassword",
    0x0000018D: "ZGen_2Phase",
    0x0000018E: "EC_Ephemeral",
    0x0000018F: "PolicyNvWritten",
    0x00000190: "PolicyTemplate",
    0x00000191: "CreateLoaded",
    0x00000192: "PolicyAuthorizeNV",
    0x00000193: "EncryptDecrypt2",
    0x00000194: "AC_GetCapability",
    0x00000195: "AC_Send",
    0x00000196: "Policy_AC_SendSelect",
    0x00000197: "CertifyX509",
    0x00000198: "ACT_SetTimeout",
    0x00000199: "ECC_Encrypt",
    0x0000019A: "ECC_Decrypt",
    0x0000019B: "PolicyCapability",
    0x0000019C: "PolicyParameters",
    0x0000019D: "NV_DefineSpace2",
    0x0000019E: "NV_ReadPublic2",
    0x0000019F: "SetCapability",
    0x20000000: "Vendor_TCG_Test",
}

# swtpm's control channel (swtpm's tpm_ioctl.h, "CMD_*"): the first u32 of each control message.
CTRL_NAMES: dict[int, str] = {
    1: "GET_CAPABILITY",
    2: "INIT",
    3: "SHUTDOWN",
    4: "GET_TPMESTABLISHED",
    5: "SET_LOCALITY",
    6: "HASH_START",
    7: "HASH_DATA",
    8: "HASH_END",
    9: "CANCEL_TPM_CMD",
    10: "STORE_VOLATILE",
    11: "RESET_TPMESTABLISHED",
    12: "GET_STATEBLOB",
    13: "SET_STATEBLOB",
    14: "STOP",
    15: "GET_CONFIG",
    16: "SET_DATAFD",
    17: "SET_BUFFERSIZE",
    18: "GET_INFO",
    19: "LOCK_STORAGE",
}


def command_name(code: int) -> str:
    """The TPM2_CC name without its prefix ("GetRandom"), or the code in hex ("0x00000fff")."""
    return COMMAND_NAMES.get(code, f"0x{code:08x}")


def ctrl_name(code: int) -> str:
    """The swtpm control command name ("SET_LOCALITY"), or the code in hex."""
    return CTRL_NAMES.get(code, f"0x{code:08x}")


HEADER = struct.Struct(">HII")  # tag, size, command code / response code
# A frame larger than this is taken as a broken stream rather than a TPM command (swtpm's own
# limit is 4 KiB); parsing of that connection stops, forwarding goes on.
MAX_FRAME = 1 << 20

Channel = Literal["data", "ctrl"]
Direction = Literal["command", "response"]


@dataclass(slots=True)
class TpmCommand:
    """One TPM command seen on a data connection, and its response once it has passed."""

    index: int  # position in the proxy's record since the last reset
    connection: int  # connection number (data and ctrl connections share one counter)
    code: int
    name: str
    tag: int
    command: bytes  # the whole frame, header included
    command_time: float  # time.time() when the last byte of the command arrived
    response: bytes | None = None  # None if the connection ended before a whole response
    response_code: int | None = None
    response_tag: int | None = None
    response_time: float | None = None
    latency: float | None = None  # seconds from the command's last byte to the response's last byte
    command_perf: float = field(default=0.0, repr=False, compare=False)  # time.perf_counter()

    @property
    def command_size(self) -> int:
        return len(self.command)

    @property
    def response_size(self) -> int | None:
        return None if self.response is None else len(self.response)

    @property
    def ok(self) -> bool:
        return self.response_code == 0

    def as_json(self, *, with_bytes: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; raw bytes (hex) only if asked, as they may hold secrets."""
        out: dict[str, Any] = {
            "index": self.index,
            "connection": self.connection,
            "cc": f"0x{self.code:08x}",
            "name": self.name,
            "command_size": self.command_size,
            "response_size": self.response_size,
            "rc": None if self.response_code is None else f"0x{self.response_code:08x}",
            "time": self.command_time,
            "latency_ms": None if self.latency is None else round(self.latency * 1000.0, 3),
        }
        if with_bytes:
            out["command_hex"] = self.command.hex()
            out["response_hex"] = None if self.response is None else self.response.hex()
        return out


@dataclass(frozen=True, slots=True)
class CtrlMessage:
    """One read from a control connection (swtpm CMD_* messages are small: one read is one message)."""

    connection: int
    direction: Direction
    time: float
    data: bytes

    @property
    def name(self) -> str | None:
        """For a client's message, the control command's name; None for answers and short reads."""
        if self.direction != "command" or len(self.data) < 4:
            return None
        return ctrl_name(int.from_bytes(self.data[:4], "big"))


@dataclass(frozen=True, slots=True)
class Traffic:
    """A chunk of bytes as read from one side of a connection."""

    channel: Channel
    connection: int
    direction: Direction
    time: float
    data: bytes


class FrameSplitter:
    """Cuts a byte stream into TPM frames by the size field of their header."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken: str | None = None  # why parsing stopped, if it did
        self.reported = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """Whole frames completed by ``data``, and bytes to pass on unframed once the stream is broken."""
        if self.broken is not None:
            return [], data
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            _tag, size, _code = HEADER.unpack_from(self._buf)
            if size < HEADER.size or size > MAX_FRAME:
                self.broken = f"frame size {size} out of range"
                rest = bytes(self._buf)
                self._buf.clear()
                return frames, rest
            if len(self._buf) < size:
                break
            frames.append(bytes(self._buf[:size]))
            del self._buf[:size]
        return frames, b""
