#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# moddir is set by dracut:
# shellcheck disable=SC2154
# Test-only dracut module: in the systemd initramfs (systemd is PID 1), start tpmseal-credd.socket,
# run transient units with LoadCredential=NAME:/run/tpmseal/creds.sock and print what they got as
# "TPMSEALPROBE: CREDS ..." lines. The units and credential files come in with --include.

check() {
    return 255
}

depends() {
    # systemd-run --wait --pipe talks to the system bus, which a plain systemd initramfs lacks
    echo systemd tpmseal dbus
    return 0
}

install() {
    inst_multiple systemd-run systemctl cat sh base64 tr
    inst_multiple -o journalctl
    inst_hook pre-mount 50 "$moddir/tpmsealcreds-premount.sh"
}
