#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Test-only: break the boot measurement on purpose. Runs after the volumes are unlocked and before
# tpmseal measures them (systemd flavour: tpmsealprobe-break.service; other: a pre-mount hook at 05).
#   tpmsealprobe.break=unbind   unbind the TPM's driver: the TPM disappears (no /dev/tpm*, no
#                               /sys/class/tpm); the "rebind" probe mode binds it again later
#   tpmsealprobe.break=rmnode   delete the device nodes /dev/tpmrm0 and /dev/tpm0 (the driver stays)
#   tpmsealprobe.break=emergency  (systemd flavour) isolate emergency.target: a shell before the measurement
# What it did goes to /run/tpmsealprobe/broken ("unbind DRIVERDIR DEVICE" or "rmnode").
say() { echo "TPMSEALPROBE: $*"; }
devices() {
    _d=
    for _t in /dev/tpm0 /dev/tpmrm0; do
        [ -c "$_t" ] && _d="$_d $_t"
    done
    echo "${_d:- none}"
}
mode=
read -r cmdline < /proc/cmdline
for _w in $cmdline; do
    case $_w in tpmsealprobe.break=*) mode=${_w#tpmsealprobe.break=} ;; esac
done
mkdir -p /run/tpmsealprobe
case $mode in
    unbind)
        dev=$(readlink -f /sys/class/tpm/tpm0/device)
        drv=$(readlink -f /sys/class/tpm/tpm0/device/driver)
        if [ -z "$dev" ] || [ ! -w "$drv/unbind" ]; then
            say "BREAK_FAIL unbind: no TPM driver to unbind (device=$dev driver=$drv)"
        else
            echo "${dev##*/}" > "$drv/unbind"
            echo "unbind $drv ${dev##*/}" > /run/tpmsealprobe/broken
            say "BREAK unbind ${dev##*/} from $drv; TPM devices left:$(devices)"
        fi
        ;;
    emergency)
        # an emergency shell before the measurement (systemd flavour: what a failed unit leads to)
        echo emergency > /run/tpmsealprobe/broken
        say "BREAK emergency"
        systemctl --no-block isolate emergency.target
        ;;
    rmnode)
        rm -f /dev/tpmrm0 /dev/tpm0
        echo rmnode > /run/tpmsealprobe/broken
        say "BREAK rmnode; TPM devices left:$(devices)"
        ;;
esac
