# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one exception hierarchy of tpmseal.

Every error carries a one-line message, a hint for the admin and an exit code. The CLI's single
handler prints ``tpmseal: error: MESSAGE`` and ``tpmseal: hint: HINT`` and exits with the code.
Messages never contain secrets: callers pass names (device, keyslot, token id), never key material.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (man/tpmseal.8, docs/exit-codes.md)."""

    OK = 0
    FAILURE = 1  # anything not listed below, e.g. an external program failed
    USAGE = 2  # bad command line (argparse uses 2 as well)
    VOLUME = 3  # not a LUKS2 volume, no such device, no free keyslot
    TPM_UNAVAILABLE = 4  # no TPM, cannot talk to it
    POLICY_MISMATCH = 5  # PCRs changed: the TPM refused to unseal
    PIN = 6  # wrong PIN or TPM in dictionary-attack lockout
    TOKEN = 7  # token malformed, unknown version, unsupported feature
    REFUSED = 8  # refused for safety (would remove the last way in); --force overrides
    MISSING_TOOL = 9  # cryptsetup (or another required program) missing
    BAD_KEY = 10  # the given passphrase / key file does not open the volume
    WRONG_TPM = 11  # object sealed by another TPM, or SRK changed
    PIN_REQUIRED = 12  # the token needs a PIN and none was given (the TPM was not asked)


class TpmsealError(Exception):
    """Base of all errors that tpmseal reports to the user without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(TpmsealError):
    exit_code = ExitCode.USAGE
    default_hint = "see 'tpmseal --help'"


class CommandFailed(TpmsealError):
    """An external program exited non-zero. Carries argv (never a secret) and stderr."""

    exit_code = ExitCode.FAILURE

    def __init__(self, argv: list[str], returncode: int, stderr: str, hint: str | None = None) -> None:
        first = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        if returncode < 0:  # subprocess reports a child killed by signal N as -N
            import signal

            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = "unknown signal"
            text = f"{argv[0]} was killed by signal {-returncode} ({name})"
            super().__init__(text + (f"; its last output: {first}" if stderr.strip() else ""), hint)
        else:
            super().__init__(f"{argv[0]} failed (exit {returncode}): {first}", hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class MissingTool(TpmsealError):
    exit_code = ExitCode.MISSING_TOOL


class VolumeError(TpmsealError):
    exit_code = ExitCode.VOLUME


class NotLuks2(VolumeError):
    default_hint = "tpmseal works on LUKS2 volumes only; 'cryptsetup convert --type luks2' upgrades LUKS1"


class HeaderChanged(VolumeError):
    """Another program changed the LUKS2 header between two of tpmseal's own steps."""

    default_hint = "see what changed with 'tpmseal list DEVICE'; 'tpmseal repair DEVICE' reports what is left"


class NoFreeKeyslot(VolumeError):
    default_hint = "remove an unused keyslot first (tpmseal wipe-slot)"


class BadUnlockKey(TpmsealError):
    exit_code = ExitCode.BAD_KEY
    default_hint = "give an existing passphrase or key of this volume (--unlock-key-file, or type it)"


class TpmError(TpmsealError):
    """Base of errors that come from the TPM."""

    exit_code = ExitCode.FAILURE


class TpmUnavailable(TpmError):
    exit_code = ExitCode.TPM_UNAVAILABLE
    default_hint = "check --tpm2-device (auto means /dev/tpmrm0) and that the TPM is enabled"


class PolicyMismatch(TpmError):
    exit_code = ExitCode.POLICY_MISMATCH
    default_hint = (
        "the PCR values differ from those the key was sealed to (firmware, boot loader or Secure Boot "
        "state changed); unlock with a passphrase and re-enroll with 'tpmseal enroll --replace'"
    )


class PinRejected(TpmError):
    exit_code = ExitCode.PIN

    def __init__(self, message: str, tries_left: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.tries_left = tries_left


class PinRequired(TpmsealError):
    """A PIN token and no PIN (no terminal, empty stdin, an empty line): nothing was sent to the TPM,
    so no dictionary-attack try was spent. Distinct from PinRejected (a wrong PIN, exit code 6)."""

    exit_code = ExitCode.PIN_REQUIRED
    default_hint = "this token needs its PIN: type it, or give it on stdin"


class TpmLockout(TpmError):
    exit_code = ExitCode.PIN
    default_hint = (
        "the TPM is in dictionary-attack lockout after too many wrong PINs; wait for the recovery time "
        "or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)"
    )


class WrongTpm(TpmError):
    exit_code = ExitCode.WRONG_TPM
    default_hint = (
        "this token was sealed by another TPM, or the TPM was cleared; unlock with a passphrase and enroll again"
    )


class TokenError(TpmsealError):
    exit_code = ExitCode.TOKEN
    default_hint = "inspect the token with 'cryptsetup token export'; remove it with 'tpmseal wipe-slot'"


class TokenCorrupt(TokenError):
    pass


class TokenUnsupported(TokenError):
    default_hint = "this version of tpmseal cannot open this token; upgrade tpmseal"


class Refused(TpmsealError):
    exit_code = ExitCode.REFUSED
    default_hint = "--force overrides this check; make sure another way in exists first"


class CredentialRejected(TpmsealError):
    """A service credential (tpmseal creds) that must not be used: see docs/credential-format.md.

    Exit code 7, like a bad token. The TPM's own refusals keep their classes and codes:
    PolicyMismatch (5) when the PCRs changed, WrongTpm (11) when another TPM sealed it.
    """

    exit_code = ExitCode.TOKEN
    default_hint = "inspect it with 'tpmseal creds inspect FILE'; encrypt the secret again if it is damaged"


class CredentialCorrupt(CredentialRejected):
    """Not a credential, truncated, or its header breaks the format."""


class CredentialUnsupported(CredentialRejected):
    default_hint = "this version of tpmseal cannot read this credential; upgrade tpmseal"


class CredentialTampered(CredentialRejected):
    """Authentication (AES-256-GCM tag) failed: a header field or the ciphertext was changed."""

    default_hint = "the file was modified after it was encrypted; do not use it, encrypt the secret again"


class CredentialNameMismatch(CredentialRejected):
    default_hint = "a credential is bound to the name it was encrypted for; encrypt it again under the new name"


class CredentialUnitMismatch(CredentialRejected):
    default_hint = "a credential encrypted with --unit is served only to that unit; encrypt it again for this unit"


class CredentialExpired(CredentialRejected):
    default_hint = "the credential's --not-after time has passed; encrypt the secret again with a new expiry"
