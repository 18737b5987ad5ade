# SPDX-License-Identifier: LGPL-2.1-or-later
"""The boot path: unlock volumes from their TPM tokens (initramfs agent, initqueue hook, CLI)."""
