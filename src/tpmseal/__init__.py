# SPDX-License-Identifier: LGPL-2.1-or-later
"""tpmseal: TPM 2.0 sealing for LUKS2 volumes and service credentials."""

__version__ = "0.1.0"
