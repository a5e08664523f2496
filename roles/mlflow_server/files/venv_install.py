"""Build a venv from a pushed wheelhouse in one run: the tar file unpacked, uv from its wheel,
the venv, the install, the bytecode the control node made (when its Python is this one), the
wheelhouse removed, then the markers. Runs as root with the host's python3, the venv's
interpreter.

One helper run instead of a module run per step (install.yml). Killed at any point it leaves
no marker, so the next deploy pushes the wheelhouse and runs it again from a clean unpack; the
venv is created only when it has no python, uv installs what is missing. A run whose deploy was
killed goes on (no terminal holds it): a lock per venv makes the next run wait for it, and
that run finds the venv complete and only clears what is left. The wheelhouse is removed
before the markers are written, so a complete venv never leaves one behind (install.yml's
layout step removes those of venvs that were never completed).
Prints one JSON line last: {"seconds": {phase: time}, "bytecode": whether the venv has its
bytecode (then install.yml starts no bytecode job on the host)}.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def uv_from_wheelhouse(wheelhouse: Path) -> Path:
    """The uv binary, unpacked from its wheel (the host needs neither pip nor python3-venv)."""
    wheels = sorted(wheelhouse.glob("uv-*.whl"))
    if not wheels:
        raise SystemExit(f"no uv wheel in {wheelhouse}: the wheelhouse is incomplete; deploy again")
    with zipfile.ZipFile(wheels[0]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".data/scripts/uv"))
        target = wheelhouse / "uv"
        with wheel.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    target.chmod(0o755)
    return target


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def apply_bytecode(wheelhouse: Path, venv: Path) -> int:
    """Move the control node's hash-checked .pyc files into site-packages, root-owned and 0644
    whatever the control node's umask was; 0 when there are none or they are for another Python
    (magic number)."""
    overlay = wheelhouse / "bytecode"
    magic = overlay / "MAGIC"
    if not magic.is_file() or magic.read_text().strip() != importlib.util.MAGIC_NUMBER.hex():
        return 0
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    count = 0
    for root, _dirs, files in os.walk(overlay):
        for name in files:
            if not name.endswith(".pyc"):
                continue
            target = site / os.path.relpath(os.path.join(root, name), overlay)
            # The wheelhouse holds every store client; a venv has only this host's: bytecode of
            # a package not installed would leave directories that import as namespace packages.
            if not (target.parent.parent / (name.split(".", 1)[0] + ".py")).is_file():
                continue
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True)
                target.parent.chmod(0o755)
            source = os.path.join(root, name)
            os.chmod(source, 0o644)
            if os.geteuid() == 0:
                os.chown(source, 0, 0)
            os.replace(source, target)
            count += 1
    return count


def remove(wheelhouse: Path, tarball: Path | None) -> None:
    shutil.rmtree(wheelhouse, ignore_errors=True)
    if tarball:
        tarball.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tarball", type=Path, help="the pushed wheelhouse tar file, unpacked into --wheelhouse")
    ap.add_argument("--wheelhouse", required=True, type=Path)
    ap.add_argument("--venv", required=True, type=Path)
    ap.add_argument("--marker", required=True, type=Path, help="written last: the venv is complete")
    ap.add_argument("--bytecode-marker", type=Path, help="written when the control node's bytecode was applied")
    ap.add_argument("requirements", nargs="+")
    args = ap.parse_args()

    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()

    # Children's output goes to stderr: stdout carries only the result line.
    quiet = {"check": True, "stdout": sys.stderr}
    args.venv.mkdir(mode=0o755, parents=True, exist_ok=True)  # `python -m venv` fills an existing directory
    with open(args.venv / ".mlops-install.lock", "w") as lock:  # removed with the venv
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run of a killed deploy on this venv finishes first
        phase("wait")
        if not args.marker.exists():
            if args.tarball:
                shutil.rmtree(args.wheelhouse, ignore_errors=True)  # what a killed run unpacked: start clean
                args.wheelhouse.mkdir(mode=0o755)
                subprocess.run(["tar", "-xf", str(args.tarball), "-C", str(args.wheelhouse), "--no-same-owner",
                                "--no-same-permissions"], **quiet)
                phase("unpack")
            uv = uv_from_wheelhouse(args.wheelhouse)
            if not (args.venv / "bin" / "python").exists():
                subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(args.venv)], **quiet)
            phase("venv")
            # No --compile-bytecode: the wheelhouse's bytecode or venv_bytecode.py covers what the server imports.
            subprocess.run([str(uv), "pip", "install", "--quiet", "--no-index", "--no-cache", "--find-links",
                            str(args.wheelhouse), "--python", str(args.venv / "bin" / "python"),
                            *args.requirements], **quiet)
            phase("install")
            uv_lock = args.venv / ".lock"  # uv's own lock file, created 0666: nothing in the venv is world-writable
            if uv_lock.exists():
                uv_lock.chmod(0o644)
            pyc = apply_bytecode(args.wheelhouse, args.venv)
            phase("bytecode")
            remove(args.wheelhouse, args.tarball)
            if pyc and args.bytecode_marker:  # the same marker venv_bytecode.py writes on the host
                write_atomically(args.bytecode_marker, json.dumps({"pyc": pyc, "from": "wheelhouse"}) + "\n")
            write_atomically(args.marker, "".join(f"{r}\n" for r in args.requirements))
        else:
            remove(args.wheelhouse, args.tarball)
        phase("cleanup")
    done = bool(args.bytecode_marker and args.bytecode_marker.exists())
    print(json.dumps({"seconds": phases, "bytecode": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
