# SPDX-License-Identifier: LGPL-2.1-or-later
"""Service credentials: TPM-bound encrypted secrets delivered to the unit that owns them.

envelope.py   the native file format (docs/credential-format.md) and its encryption
sdcreds.py    systemd-creds' TPM2 format (read and write), for interop
store.py      where installed credentials live, and the drop-ins that wire a unit to them
server.py     the LoadCredential= socket server (tpmseal-credd)
command.py    the ``tpmseal creds`` command line
"""
