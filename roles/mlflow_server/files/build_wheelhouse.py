#!/usr/bin/env python3
"""Build a wheelhouse for a target host's Python, libc and architecture on the control node.

Runs with the control node's Python (pip download for foreign tags), once per requirement
set; the result is a tar file that the role pushes and unpacks. Prints one JSON line:
{"changed": bool, "tarball": path}. Kept stdlib-only: it runs wherever Ansible runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


# Pure-Python packages published as source only, needed by a store client (pysftp for
# sftp://): built into py3-none-any wheels here, since the host installs wheels only.
SOURCE_ONLY = {"pysftp"}


def platform_tags(glibc: str, machine: str) -> list[str]:
    major, minor = (int(p) for p in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    return tags + [f"manylinux2014_{machine}", f"linux_{machine}"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--python", required=True, help="target X.Y")
    ap.add_argument("--glibc", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("requirements", nargs="+")
    args = ap.parse_args()

    cache = Path(os.path.expanduser(args.cache_dir))
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{args.key}.tar"
    if tarball.exists():
        print(json.dumps({"changed": False, "tarball": str(tarball)}))
        return 0

    abi = "cp" + args.python.replace(".", "")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        dest = Path(tmp) / "wheels"
        built = [r for r in args.requirements if re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() in SOURCE_ONLY]
        if built:
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                                   "--no-deps", "--wheel-dir", str(dest), *built], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                return proc.returncode
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--find-links", str(dest),
               "--dest", str(dest), "--only-binary=:all:", "--python-version", args.python,
               "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for tag in platform_tags(args.glibc, args.machine):
            cmd += ["--platform", tag]
        # The installer itself travels in the wheelhouse too: the host needs no index at all.
        cmd += ["uv", *args.requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        (dest / "requirements.txt").write_text("\n".join(args.requirements) + "\n")
        partial = tarball.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            for wheel in sorted(dest.iterdir()):
                tar.add(wheel, arcname=wheel.name)
        os.replace(partial, tarball)  # atomic: a cached tarball is always complete
    shutil.rmtree(dest, ignore_errors=True)
    print(json.dumps({"changed": True, "tarball": str(tarball)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
