# SPDX-License-Identifier: LGPL-2.1-or-later
"""``tpmseal config``: the crypttab lines and kernel command line options that the boot path needs.

crypttab.py parses and renders crypttab(5) keeping every line it does not manage byte for byte;
bootloader.py writes the GRUB drop-in or edits /etc/kernel/cmdline; discover.py finds the LUKS volumes;
files.py writes atomically; plan.py puts them together; command.py is the CLI. See docs/config.md.
"""

from __future__ import annotations


def update_config_for(volume_path: str, root: str = "/") -> list[str]:
    """Bring the config files under ``root`` in line with one volume (for ``tpmseal enroll --update-config``).

    Writes /etc/crypttab (and the GRUB drop-in or /etc/kernel/cmdline when that volume holds / or /usr, or is
    already listed there); never runs a regenerate command. Returns lines for the user: what was written,
    notes, and the commands to run so the next boot sees it (empty list: nothing to change).
    Raises TpmsealError (ConfigParseError, UnsafePath, VolumeError…) as the other commands do.
    """
    import shlex

    from tpmseal.config.discover import given
    from tpmseal.config.plan import apply_plan, make_plan

    plan = make_plan(root, given([volume_path], root))
    out = apply_plan(plan)
    out += [f"note: {n}" for n in plan.notes]
    if plan.regenerate:
        out += [f"run: {shlex.join(c)}" for c in plan.regenerate]
    return out
