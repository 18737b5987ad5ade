#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build a Debian package of tpmseal with dpkg-deb from a staged tree. Debian 12, as root or not.
#
# Usage: contrib/debian/build-deb.sh [OUTDIR]        (default: dist/)
#
# Why not debhelper/pybuild: Debian 12 ships python3-tpm2-pytss 1.2 and python3-cryptography 38, tpmseal needs
# tpm2-pytss >= 2.1 and cryptography >= 41. A dh_python3 package would have to depend on versions the
# distribution does not have, so this package carries its Python dependencies in a private environment,
# /usr/lib/tpmseal/venv (a venv over Debian's /usr/bin/python3, filled with 'pip install --target'), and
# depends only on the C libraries those need (found with ldd + dpkg -S). The system files come from
# 'tpmseal install-system-files --root', the same command a pip user runs.
#
# Layout of the package:
#   /usr/bin/tpmseal                                launcher: the venv's python -I -m tpmseal
#   /usr/lib/tpmseal/venv/                          tpmseal, tpm2-pytss, cryptography, pyudev, jinja2 (byte-compiled)
#   /usr/lib/dracut/modules.d/90tpmseal/            dracut module
#   /usr/lib/dracut/dracut.conf.d/90-tpmseal.conf   TPMSEAL_PYTHON=the venv's python, for the module
#   /usr/lib/systemd/system/                        units
#   /usr/share/man/man{5,7,8}/                      man pages
#   /usr/share/bash-completion/completions/tpmseal, /usr/share/zsh/vendor-completions/_tpmseal
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$PWD
outdir=$(realpath -m "${1:-dist}")
PY=/usr/bin/python3   # the interpreter the package runs on: Debian's
for tool in dpkg-deb dpkg readelf "$PY"; do
    command -v "$tool" > /dev/null || { echo "build-deb: $tool is missing (apt-get install dpkg-dev binutils python3-venv)" >&2; exit 9; }
done
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage
venv=$stage/usr/lib/tpmseal/venv
site=$venv/lib/python$pyver/site-packages

# a build environment (pip and docutils live here, not in the package)
"$PY" -m venv "$work/build"
"$work/build/bin/pip" install -q --disable-pip-version-check "docutils>=0.20"

# the private environment: a venv over /usr/bin/python3 (pyvenv.cfg names only /usr/bin, so the staged
# copy works once installed), filled without pip of its own
"$PY" -m venv --without-pip "$venv"
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
sed -i '/^command = /d' "$venv/pyvenv.cfg"   # holds the staging path; informational only
"$work/build/bin/pip" install -q --disable-pip-version-check --no-compile --no-warn-script-location \
    --target "$site" "$top"
rm -rf "${site:?}/bin"   # console scripts with a staging shebang; /usr/bin/tpmseal replaces them
find "$site" -name '__pycache__' -prune -exec rm -rf {} +

# the system files, installed by the packaged copy of tpmseal itself
PYTHONPATH=$site "$work/build/bin/python" -m tpmseal install-system-files --root "$stage" --prefix /usr > /dev/null

install -d "$stage/usr/bin" "$stage/usr/lib/dracut/dracut.conf.d" "$stage/usr/share/doc/tpmseal"
cat > "$stage/usr/bin/tpmseal" << 'LAUNCHER'
#!/bin/sh
# tpmseal, from its private environment /usr/lib/tpmseal/venv (Debian package)
exec /usr/lib/tpmseal/venv/bin/python3 -I -m tpmseal "$@"
LAUNCHER
chmod 0755 "$stage/usr/bin/tpmseal"
cat > "$stage/usr/lib/dracut/dracut.conf.d/90-tpmseal.conf" << 'CONF'
# tpmseal's dracut module takes tpmseal and tpm2-pytss from this interpreter's sys.path
TPMSEAL_PYTHON=/usr/lib/tpmseal/venv/bin/python3
CONF
gzip -9n < README.md > "$stage/usr/share/doc/tpmseal/README.md.gz"
cat > "$stage/usr/share/doc/tpmseal/copyright" << 'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tpmseal
Files: *
License: LGPL-2.1-or-later
 On Debian systems, the full text is in /usr/share/common-licenses/LGPL-2.1.
 The bundled Python packages in /usr/lib/tpmseal/venv keep their own licences (see their dist-info).
COPYRIGHT

# byte-compile with the paths the installed files will have (no __pycache__ written at run time as root)
"$PY" -m compileall -q -j 0 -s "$stage" -p / "$site" > /dev/null

# Depends: the packages of the shared libraries the C extensions link to directly (NEEDED), plus what is
# run or dlopen()ed (cryptsetup, the device TCTI)
mapfile -t sos < <(find "$site" -name '*.so' -type f)
libdeps=$(for so in "${sos[@]}"; do
        needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
        for lib in $needed; do ldd "$so" | awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3}'; done
    done | sort -u | while read -r lib; do
        dpkg -S "$(realpath "$lib")" 2> /dev/null || dpkg -S "$lib" 2> /dev/null || true
    done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
depends="python3 (>= $pyver), python3 (<< ${pyver%.*}.$((${pyver#*.} + 1))), ${libdeps:+$libdeps, }libtss2-tcti-device0, cryptsetup-bin"
size=$(du -sk "$stage/usr" | cut -f1)

install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" << CONTROL
Package: tpmseal
Version: $version
Architecture: $arch
Maintainer: tpmseal developers <tpmseal@invalid>
Installed-Size: $size
Depends: $depends
Recommends: dracut
Suggests: tpm2-tools, swtpm
Section: admin
Priority: optional
Homepage: https://invalid/tpmseal
Description: unlock LUKS2 volumes with keys sealed to a TPM 2.0
 tpmseal enrolls LUKS2 volumes with keys sealed to the TPM under a PCR policy,
 unlocks them at boot from the initramfs (dracut module) and falls back to the
 passphrase when the boot chain changed. It also hands systemd services
 TPM-bound credentials. Python dependencies are bundled in /usr/lib/tpmseal/venv.
CONTROL

mkdir -p "$outdir"
deb=$outdir/tpmseal_${version}_${arch}.deb
find "$stage" -exec touch -h -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2> /dev/null || date +%s)}" {} +
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" > /dev/null
echo "$deb"
