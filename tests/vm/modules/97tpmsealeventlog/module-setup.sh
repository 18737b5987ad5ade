#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# moddir is set by dracut:
# shellcheck disable=SC2154
# Test-only dracut module: prints the TCG event log (base64) and every sha256 PCR on the console,
# between "TPMSEALEVENTLOG: BEGIN" and "TPMSEALEVENTLOG: END", before the probe (pre-mount 99) runs.

check() {
    return 255
}

depends() {
    return 0
}

install() {
    inst_multiple cat base64 mount
    inst_multiple -o tpm2_pcrread
    inst_hook pre-mount 50 "$moddir/tpmsealeventlog-premount.sh"
}
