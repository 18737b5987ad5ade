# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run inside the initramfs by the tpmsealprobe: Python + tpm2-pytss against /dev/tpmrm0."""

import sys
import time

t0 = time.perf_counter()
sys.path.append("/usr/lib/tpmseal/site")

import cryptography.hazmat.primitives.ciphers  # noqa: E402, F401

tc = time.perf_counter()
from tpm2_pytss import ESAPI, TPML_PCR_SELECTION  # noqa: E402

t1 = time.perf_counter()
# cryptography first, then the rest of tpm2_pytss (its C bindings and libtss2)
print(
    f"PY_IMPORT_IN_PROCESS ms={(t1 - t0) * 1000:.1f} cryptography={(tc - t0) * 1000:.1f}"
    f" tpm2_pytss_rest={(t1 - tc) * 1000:.1f}"
)

import importlib  # noqa: E402

import tpmseal  # noqa: E402

print(f"PY_TPMSEAL_VERSION {tpmseal.__version__}")
# every entry module the initramfs closure was computed from must import here
with open("/usr/lib/tpmseal/python-entries") as f:
    for name in f.read().split():
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"PY_ENTRY_FAIL {name} {type(exc).__name__}: {exc}")
        else:
            print(f"PY_ENTRY_OK {name}")

t2 = time.perf_counter()
with ESAPI("device:/dev/tpmrm0") as esapi:
    _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:7"))
    digest = bytes(values.digests[0]).hex()
t3 = time.perf_counter()
print(f"PY_PCR7 sha256 {digest} ms={(t3 - t2) * 1000:.1f}")
print("PY_TPM_OK")
