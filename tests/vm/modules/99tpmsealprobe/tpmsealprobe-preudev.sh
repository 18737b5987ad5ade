#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-udev hook (sourced by dracut): with tpmsealprobe.mode=...extendpcr7...
# extend PCR 7 before any unlock runs, to simulate a changed boot chain.
case " $(cat /proc/cmdline) " in
    *" tpmsealprobe.mode="*extendpcr7*)
        {
            read -r _tsp_up _tsp_idle < /proc/uptime
            echo "TPMSEALPROBE: EXTEND_PCR7 uptime=$_tsp_up"
            TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_pcrextend \
                7:sha256=0000000000000000000000000000000000000000000000000000000000000001
            unset _tsp_up _tsp_idle
        } > /dev/console 2>&1
        ;;
esac
