# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 volumes through the cryptsetup CLI, and the token formats stored in their headers."""
