#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# pre-mount hook 05 (sourced by dracut, non-systemd flavour): the measurement break, before
# tpmseal's pre-mount hook 10 measures the volumes.
/usr/bin/tpmsealprobe-break > /dev/console 2>&1
