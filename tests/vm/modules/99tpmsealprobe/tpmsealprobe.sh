#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The probe proper. Kernel arguments it reads:
#   tpmsealprobe.names=a,b    mapper names to check (default: the name in root=/dev/mapper/NAME)
#   tpmsealprobe.mode=m1,m2   extra steps: enroll, python, rebind, attack, doctor (extendpcr7: the pre-udev hook;
#                             rebind undoes tpmsealprobe.break=, see tpmsealprobe-break.sh)
#   tpmsealprobe.victim=DEV   the real volume whose token the "attack" mode tries to unseal (default /dev/vdb)
#   tpmsealprobe.enroll=DEV   the LUKS device that "enroll" enrolls (default /dev/vda)
# Every result line starts with "TPMSEALPROBE: ".

say() { echo "TPMSEALPROBE: $*"; }
uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

cmdline=$(cat /proc/cmdline)
arg() {
    # value of kernel argument $1 (last one wins), empty if absent
    _val=
    for _w in $cmdline; do
        case $_w in "$1"=*) _val=${_w#"$1"=} ;; esac
    done
    echo "$_val"
}

names=$(arg tpmsealprobe.names | tr ',' ' ')
if [ -z "$names" ]; then
    root=$(arg root)
    case $root in /dev/mapper/*) names=${root#/dev/mapper/} ;; esac
fi
modes=" $(arg tpmsealprobe.mode | tr ',' ' ') "

say "START uptime=$(uptime_s)"

check_volume() {
    n=$1
    dev=/dev/mapper/$n
    i=0
    while [ ! -b "$dev" ] && [ $i -lt 100 ]; do
        sleep 0.2
        i=$((i + 1))
    done
    if [ ! -b "$dev" ] || ! cryptsetup status "$n" > /dev/null 2>&1; then
        say "NOT_UNLOCKED $n uptime=$(uptime_s)"
        return 1
    fi
    say "UNLOCKED $n uptime=$(uptime_s)"
    marker="tpmsealprobe-$n-$(now_ns)"
    err=$(printf '%s' "$marker" | dd of="$dev" bs=4096 seek=2 conv=sync,fsync 2>&1) || say "dd write: $err"
    echo 3 > /proc/sys/vm/drop_caches
    back=$(dd if="$dev" bs=4096 skip=2 count=1 iflag=direct 2>/tmp/tpmsealprobe.dd | tr -d '\000')
    if [ "$back" = "$marker" ]; then
        say "RW_OK $n"
    else
        say "RW_FAIL $n wrote=$marker read=$back dd: $(cat /tmp/tpmsealprobe.dd)"
    fi
}

for n in $names; do
    check_volume "$n"
done

tpms=
for t in /dev/tpm0 /dev/tpmrm0; do
    [ -c "$t" ] && tpms="$tpms $t"
done
say "TPM devices:${tpms:- none}"
[ -e /sys/firmware/acpi/tables/TPM2 ] && say "ACPI TPM2 table"
if [ -c /dev/tpmrm0 ] && command -v tpm2_pcrread > /dev/null; then
    TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_pcrread sha256:0,1,2,3,4,5,6,7 2>&1 |
        while read -r line; do say "PCR $line"; done
fi

case $modes in
    *" enroll "*)
        dev=$(arg tpmsealprobe.enroll)
        dev=${dev:-/dev/vda}
        t0=$(now_ns)
        out=$(PASSWORD=$(cat /etc/tpmsealprobe/passphrase) \
            systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7 "$dev" 2>&1)
        rc=$?
        ms=$(ms_since "$t0")
        echo "$out" | while read -r line; do say "enroll: $line"; done
        if [ $rc -eq 0 ] && cryptsetup luksDump "$dev" | grep -q systemd-tpm2; then
            say "ENROLL_OK ms=$ms"
        else
            say "ENROLL_FAIL rc=$rc"
        fi
        ;;
esac

case $modes in
    *" python "*)
        # Python of the tpmseal module (dracut/90tpmseal): start-up, import, PCR read
        py=/usr/lib/tpmseal/python3
        if [ ! -x "$py" ]; then
            say "PY_MISSING $py"
        else
            for run in 1 2 3; do
                t0=$(now_ns)
                "$py" -I -S -c pass
                say "PY_START run=$run rc=$? ms=$(ms_since "$t0")"
            done
            for run in 1 2; do
                t0=$(now_ns)
                "$py" -I -S -c 'import sys; sys.path.append("/usr/lib/tpmseal/site"); import tpm2_pytss'
                say "PY_IMPORT_TPM2_PYTSS run=$run rc=$? ms=$(ms_since "$t0")"
            done
            t0=$(now_ns)
            "$py" -I -S /usr/lib/tpmsealprobe/pyprobe.py 2>&1 | while read -r line; do say "$line"; done
            say "PY_PROBE_PROCESS ms=$(ms_since "$t0")"
        fi
        ;;
esac

case $modes in
    *" rebind "*)
        # undo tpmsealprobe.break= (code running after the unlock brings the TPM back), then list it
        read -r kind drv tdev < /run/tpmsealprobe/broken 2> /dev/null
        case $kind in
            unbind) echo "$tdev" > "$drv/bind" || say "REBIND_FAIL bind $tdev to $drv" ;;
        esac
        # the chip may come back under another number (tpmrm1): take whichever the kernel registers
        i=0
        sysdev=
        while [ -z "$sysdev" ] && [ $i -lt 150 ]; do
            for f in /sys/class/tpmrm/tpmrm*/dev; do
                [ -e "$f" ] && sysdev=$f && break
            done
            [ -n "$sysdev" ] || sleep 0.2
            i=$((i + 1))
        done
        if [ -n "$sysdev" ] && [ ! -c /dev/tpmrm0 ]; then
            IFS=: read -r maj min < "$sysdev"
            mknod /dev/tpmrm0 c "$maj" "$min"
        fi
        say "REBIND sysfs: ${sysdev:-none}"
        tpms=
        for t in /dev/tpm0 /dev/tpmrm0; do
            [ -c "$t" ] && tpms="$tpms $t"
        done
        say "REBIND ${kind:-nothing} TPM devices:${tpms:- none}"
        ;;
esac

case $modes in
    *" attack "*)
        # the swapped-volume attack: code running after unlock (here, before anything from the
        # volume runs; a real attacker's userspace would run even later) asks the TPM for the
        # key of the real volume tpmsealprobe.victim= via its token
        victim=$(arg tpmsealprobe.victim)
        victim=${victim:-/dev/vdb}
        out=$(TSS2_LOG=all+none /usr/bin/tpmseal test-unlock --tpm2-device=auto "$victim" 2>&1)
        rc=$?
        echo "$out" | while read -r line; do say "attack: $line"; done
        if [ $rc -eq 0 ]; then
            say "ATTACK_UNSEALED"
        else
            say "ATTACK_REFUSED rc=$rc"
        fi
        ;;
esac

case $modes in
    *" doctor "*)
        # tpmseal doctor inside the booted initramfs, on the volume this boot unlocked
        dev=$(arg tpmsealprobe.enroll)
        dev=${dev:-/dev/vda}
        out=$(TSS2_LOG=all+none /usr/bin/tpmseal doctor --tpm2-device=auto "$dev" 2>&1)
        rc=$?
        echo "$out" | while read -r line; do say "doctor: $line"; done
        say "DOCTOR_EXIT rc=$rc"
        ;;
esac

say "DONE uptime=$(uptime_s)"
sync
