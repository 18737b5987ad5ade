#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Installs everything tpmseal's demo and tests need on Debian 12, then a venv in .venv.
# Usage: sudo contrib/dev-setup.sh [--no-vm]   (--no-vm skips qemu, the kernel and dracut)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(swtpm swtpm-tools tpm2-tools cryptsetup-bin libtss2-dev pkg-config build-essential
      python3-dev python3-venv groff-base man-db shellcheck zstd zsh
      systemd clevis clevis-luks clevis-tpm2)      # the anchors: systemd-cryptenroll/-creds, clevis
vm_pkgs=(qemu-system-x86 qemu-utils linux-image-amd64 dracut dracut-core busybox ovmf)
[ "${1:-}" = "--no-vm" ] || pkgs+=("${vm_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
echo "dev-setup: ready (.venv/bin/tpmseal)"
