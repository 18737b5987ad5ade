#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# initqueue/settled hook (non-systemd initramfs): unlock every LUKS volume that has a TPM token before
# dracut's crypt module asks for a passphrase. Sourced by dracut's shell: no exit. A volume the TPM
# cannot open is left to cryptroot-ask, which prompts as before.
# getargs, info and warn come from dracut-lib.sh:
# shellcheck disable=SC2154

tpmseal_unlock_all() {
    _uuids=$(getargs rd.luks.uuid -rd_LUKS_UUID)
    for _dev in $(blkid -t TYPE=crypto_LUKS -o device 2>/dev/null); do
        _uuid=$(blkid -s UUID -o value "$_dev")
        if [ -n "$_uuids" ]; then
            case " $_uuids " in
                *" $_uuid "* | *" luks-$_uuid "*) ;;
                *) continue ;;
            esac
        fi
        _name="luks-$_uuid"
        [ -b "/dev/mapper/$_name" ] && continue
        [ -e "/tmp/tpmseal-tried-$_uuid" ] && continue
        : > "/tmp/tpmseal-tried-$_uuid"
        TSS2_LOG=all+none /usr/bin/tpmseal unlock --headless --tpm2-device=auto "$_dev" "$_name" \
            > /dev/null 2> "/tmp/tpmseal-unlock-$_uuid.log"
        while read -r _line; do
            info "$_line"
            echo "$_line" > /dev/console
        done < "/tmp/tpmseal-unlock-$_uuid.log"
    done
    unset _uuids _dev _uuid _name _line
}

tpmseal_unlock_all
