#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-mount hook (sourced by dracut): ask for credentials as two transient units, print the results.
say() { echo "TPMSEALPROBE: CREDS $*" > /dev/console; }

fetch() {
    # $1 unit name, $2 credential name; prints the credential base64-encoded (empty: nothing received)
    # shellcheck disable=SC2016  # $CREDENTIALS_DIRECTORY is for the unit's shell, not this one
    systemd-run --quiet --unit="$1" --wait --pipe \
        -p LoadCredential="$2":/run/tpmseal/creds.sock \
        /bin/sh -c 'cat "$CREDENTIALS_DIRECTORY/'"$2"'" | base64 | tr -d "\n"' 2> /tmp/tpmsealcreds.err
}

# nothing in the initramfs starts the bus by itself; systemd-run --wait needs it
systemctl start dbus.socket || say "DBUS failed"
if systemctl start tpmseal-credd.socket; then
    say "SOCKET started"
    got=$(fetch credtest.service db); rc=$?
    say "OWNER rc=$rc data=$got"
    got=$(fetch intruder.service db); rc=$?
    say "INTRUDER rc=$rc data=$got err=$(tr '\n' ' ' < /tmp/tpmsealcreds.err)"
    journalctl -q -b -o cat -u tpmseal-credd.service 2> /dev/null | while read -r line; do
        say "LOG $line"
    done
else
    say "SOCKET failed"
fi
say "END"
