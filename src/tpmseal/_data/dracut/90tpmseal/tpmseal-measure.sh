#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-mount hook (initramfs without systemd): every volume is unlocked now and nothing from them has run;
# extend PCR 15 so that TPM tokens bound to it are closed for the rest of this boot.
if [ -e /dev/tpmrm0 ]; then
    TSS2_LOG=all+none /usr/bin/tpmseal measure-volumes --tpm2-device=auto 2>&1 | while read -r _line; do
        echo "$_line" > /dev/console
    done
fi
