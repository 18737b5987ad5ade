#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# moddir, initdir, systemdsystemunitdir and SYSTEMCTL are set by dracut:
# shellcheck disable=SC2154
# Test-only dracut module: once the volumes are unlocked it checks them, prints
# "TPMSEALPROBE: ..." result lines on the console and powers the VM off.

check() {
    # only when a test asks for it with -m/--add
    return 255
}

depends() {
    echo crypt
    return 0
}

installkernel() {
    hostonly='' instmods virtio_blk virtio_pci dm_crypt tpm_tis tpm_crb
}

install() {
    inst_multiple cat ls dd tr grep sleep date sync cryptsetup
    inst_multiple -o tpm2_pcrread tpm2_pcrextend systemd-cryptenroll
    inst_script "$moddir/tpmsealprobe.sh" /usr/bin/tpmsealprobe
    inst_simple "$moddir/pyprobe.py" /usr/lib/tpmsealprobe/pyprobe.py
    inst_hook pre-udev 10 "$moddir/tpmsealprobe-preudev.sh"
    inst_hook pre-mount 99 "$moddir/tpmsealprobe-premount.sh"
    # tpmsealprobe.break=...: break the boot measurement between the unlock and tpmseal's measurement
    inst_multiple readlink mknod mkdir rm
    inst_script "$moddir/tpmsealprobe-break.sh" /usr/bin/tpmsealprobe-break
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/tpmsealprobe-break.service" "$systemdsystemunitdir/tpmsealprobe-break.service"
        $SYSTEMCTL -q --root "$initdir" add-wants cryptsetup.target tpmsealprobe-break.service
    else
        inst_hook pre-mount 05 "$moddir/tpmsealprobe-break-hook.sh"
    fi
}
