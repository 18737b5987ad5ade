# SPDX-License-Identifier: LGPL-2.1-or-later
"""Everything that speaks to the TPM, through tpm2-pytss ESAPI."""
