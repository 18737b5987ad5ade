#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-mount hook (sourced by dracut): dump the firmware's event log and the PCRs to the console.
{
    log=/sys/kernel/security/tpm0/binary_bios_measurements
    [ -e "$log" ] || mount -t securityfs securityfs /sys/kernel/security 2> /dev/null
    echo "TPMSEALEVENTLOG: BEGIN"
    if [ -r "$log" ]; then
        base64 -w 76 < "$log" | while read -r line; do echo "TPMSEALEVENTLOG: B64 $line"; done
    else
        echo "TPMSEALEVENTLOG: NOLOG"
    fi
    if [ -c /dev/tpmrm0 ] && command -v tpm2_pcrread > /dev/null; then
        TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_pcrread sha256 2>&1 |
            while read -r line; do echo "TPMSEALEVENTLOG: PCR $line"; done
    fi
    echo "TPMSEALEVENTLOG: END"
} > /dev/console 2>&1
