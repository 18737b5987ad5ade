# SPDX-License-Identifier: LGPL-2.1-or-later
"""List the files that the tpmseal unlock path needs from a Python installation.

Run by module-setup.sh at initramfs build time, with the interpreter chosen by
TPMSEAL_PYTHON (a venv's python is fine):

    $TPMSEAL_PYTHON -I python-closure.py --site-dest /usr/lib/tpmseal/site \\
        --require tpmseal tpm2_pytss.ESAPI --optional tpmseal.boot.agent

How: a child interpreter is started exactly the way the initramfs starts it
(``-I -S``, then the non-stdlib part of this interpreter's sys.path appended),
imports the entry modules and reports every module a finder located (also
those whose import then failed and was caught) plus everything in sys.modules.
That is the import closure as it really happens, including C extensions; modules imported
lazily inside functions are not seen, so the unlock path imports at the top of
its modules (a VM test imports the entry points inside the guest).

Output, one line per item, tab-separated:
    interp  SRC  DST    the interpreter binary
    elf     SRC  DST    a C extension module (install with its library deps)
    file    SRC  DST    a Python source file
    dir     -    DST    a directory that must exist (the lib-dynload landmark)
    entry   -    NAME   an entry module that imported (for a check in the guest)
Stdlib files keep their path (the interpreter finds its prefix from them);
everything from site-packages goes below --site-dest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# Runs in the child, under -I -S: only builtins and frozen modules are loaded.
_CHILD = r"""
import sys
args = __import__("json").loads(sys.argv[1])
std_path = [p for p in sys.path if p]
sys.path.extend(args["extra"])
found = set()


class Tracer:
    # Records every module a finder located, also those whose code then raised
    # (tpm2_pytss imports .policy inside try/except NotImplementedError: the
    # module leaves sys.modules again, yet the guest must have it to fail the
    # same way).
    @staticmethod
    def find_spec(name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is Tracer or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.has_location and spec.origin:
                    found.add(spec.origin)
                return spec
        return None


sys.meta_path.insert(0, Tracer)
missing = []
imported = []
for name in args["require"] + args["optional"]:
    try:
        __import__(name)
        imported.append(name)
    except ModuleNotFoundError as exc:
        # an optional entry that does not exist (yet) is fine; a missing dependency is not
        if name in args["optional"] and exc.name is not None and (
            name == exc.name or name.startswith(exc.name + ".")
        ) and exc.name.split(".")[0] in sys.modules:
            missing.append(name)
            continue
        raise
# codecs Python may need at start-up in another locale
for name in ("encodings.ascii", "encodings.latin_1", "encodings.utf_8"):
    __import__(name)
files = list(found)
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None)
    if f:
        files.append(f)
out = {
    "std_path": std_path,
    "stdlib": sys._stdlib_dir,
    "executable": sys._base_executable,
    "files": sorted(set(files)),
    "missing": missing,
    "imported": imported,
}
print(__import__("json").dumps(out))
"""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site-dest", required=True, help="directory in the initramfs for non-stdlib packages")
    ap.add_argument("--require", nargs="*", default=[], help="modules that must import")
    ap.add_argument("--optional", nargs="*", default=[], help="modules imported only if they exist")
    opts = ap.parse_args()

    # the child would see exactly std_path; what this interpreter has beyond that is "site"
    base_path = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; print('\\n'.join(p for p in sys.path if p))"],
        check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    extra = [p for p in sys.path if p and p not in base_path and os.path.isdir(p)]
    spec = {"extra": extra, "require": opts.require, "optional": opts.optional}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _CHILD, json.dumps(spec)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        print("python-closure: importing the unlock path failed", file=sys.stderr)
        return 1
    info = json.loads(proc.stdout)
    for name in info["missing"]:
        print(f"python-closure: optional module {name} not found, skipped", file=sys.stderr)

    std_roots = [p for p in info["std_path"] if os.path.isdir(p)]
    rows: dict[str, tuple[str, str]] = {}
    exe = os.path.realpath(info["executable"])
    rows[exe] = ("interp", exe)
    stdlib = info["stdlib"]
    # getpath's landmarks: <stdlib>/os.py (prefix) and <stdlib>/lib-dynload (exec prefix)
    rows[os.path.join(stdlib, "os.py")] = ("file", os.path.join(stdlib, "os.py"))
    dynload = os.path.join(stdlib, "lib-dynload")

    for src in info["files"]:
        kind = "elf" if src.endswith(".so") else "file"
        if any(_under(src, r) for r in std_roots):
            rows[src] = (kind, src)
            continue
        roots = [r for r in extra if _under(src, r)]
        if not roots:
            print(f"python-closure: {src} is on no known sys.path entry", file=sys.stderr)
            return 1
        root = max(roots, key=len)
        rows[src] = (kind, os.path.join(opts.site_dest, os.path.relpath(src, root)))

    print(f"dir\t-\t{dynload}")
    for name in info["imported"]:
        print(f"entry\t-\t{name}")
    for src, (kind, dst) in sorted(rows.items()):
        print(f"{kind}\t{src}\t{dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
