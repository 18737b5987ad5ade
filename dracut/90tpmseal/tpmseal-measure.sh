#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-mount hook (initramfs without systemd): every volume is unlocked now and nothing from them has run;
# extend PCR 15 so that TPM tokens bound to it are closed for the rest of this boot. Also an emergency
# hook (both flavours): dracut sources it before it gives a shell. Sourced by dracut's shell: no exit.
# Fail closed: when the machine has a TPM and PCR 15 could not be extended, the boot stops here (power
# off), before the root file system is mounted or a shell is given; with no TPM at all the command
# succeeds at once.

tpmseal_measure() {
    _tl=
    command -v timeout > /dev/null 2>&1 && _tl="timeout -s KILL 90"
    # shellcheck disable=SC2086  # $_tl is empty or a command prefix
    TSS2_LOG=all+none $_tl /usr/bin/tpmseal measure-volumes --boot --tpm2-device=auto \
        > /tmp/tpmseal-measure.log 2>&1
    _rc=$?
    while read -r _line; do
        echo "$_line" > /dev/console
        echo "<6>$_line" > /dev/kmsg
    done < /tmp/tpmseal-measure.log
    [ "$_rc" -eq 0 ] && return 0
    _msg="tpmseal: PCR 15 was not extended (exit status $_rc): a TPM key bound to it would stay available to everything that runs from the unlocked volumes: stopping the boot (power off)"
    echo "$_msg" > /dev/console
    echo "<2>$_msg" > /dev/kmsg
    sync
    echo o > /proc/sysrq-trigger
    # power-off is asynchronous; should it not come, reboot, and never go on to mount the root
    sleep 10
    echo b > /proc/sysrq-trigger
    while :; do sleep 1; done
}

tpmseal_measure
unset -f tpmseal_measure
unset _tl _rc _line _msg
