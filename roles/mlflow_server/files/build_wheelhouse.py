#!/usr/bin/env python3
"""Build a wheelhouse for a target host's Python, libc and architecture on the control node.

Runs with the control node's Python (pip download for foreign tags), once per requirement
set; the result is a tar file that the role pushes and unpacks. Prints one JSON line:
{"changed": bool, "tarball": path, "sha256": hex}. Kept stdlib-only: it runs wherever Ansible runs.

When the control node's Python is the host's (same X.Y and architecture), the tar file also
carries `bytecode/`: hash-checked .pyc files of what the server imports, made here once per
wheelhouse instead of on every host (about 10 CPU-seconds per host; venv_bytecode.py says
which modules and why). The host applies them only when its Python's magic number matches.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import py_compile
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# The modules the server imports: one list, shared with the on-host bytecode job.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from venv_bytecode import SERVER_MODULES, STORE_MODULES

DATA_LIB = re.compile(r"^[^/]+\.data/(?:purelib|platlib)/(.+)$")


# Pure-Python packages published as source only, needed by a store client (pysftp for
# sftp://): built into py3-none-any wheels here, since the host installs wheels only.
SOURCE_ONLY = {"pysftp"}


# pip's words when the index lacks a release, and when it could not ask the index at all.
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_NOT_SATISFIED = re.compile(r"Could not find a version that satisfies the requirement (\S+)")
_UNREACHABLE = re.compile(r"Retrying \(Retry\(|NewConnectionError|Could not fetch URL|Temporary failure in name "
                          r"resolution|Network is unreachable|ProxyError")


def pip_failure(stderr: str) -> str:
    """One line naming the release pip could not get, for the deploy's summary (which takes the
    last `ERROR:` line); "" when pip failed otherwise: its own last lines say why."""
    for pattern in (_NO_MATCH, _NOT_SATISFIED):
        found = [(line.strip(), m) for line in stderr.splitlines() if (m := pattern.search(line))]
        if found:
            line, match = found[-1]
            said = re.sub(r"\s*\(from versions:.*$", "", line.removeprefix("ERROR:").strip())
            if _UNREACHABLE.search(stderr):
                return f"ERROR: the package index did not answer, so pip found no {match.group(1)} (pip: {said})"
            return f"ERROR: the package index has no {match.group(1)} (pip: {said})"
    return ""


def pip_failed(stderr: str) -> None:
    """pip's last words on stderr, then the cause in one line."""
    tail = stderr[-3000:]
    sys.stderr.write(tail if tail.endswith("\n") or not tail else tail + "\n")
    cause = pip_failure(stderr)
    if cause:
        sys.stderr.write(cause + "\n")


def platform_tags(glibc: str, machine: str) -> list[str]:
    major, minor = (int(p) for p in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    return tags + [f"manylinux2014_{machine}", f"linux_{machine}"]


def root_owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Modes and owners fixed, whatever this machine's umask: root runs what the host unpacks."""
    member.mode = 0o755 if member.isdir() else 0o644
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member


def unpack_wheels(wheels: Path, site: Path) -> None:
    """The wheels' contents as uv lays them out in site-packages (without scripts or headers)."""
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name.startswith("uv-"):
            continue
        with zipfile.ZipFile(wheel) as archive:
            for entry in archive.infolist():
                name = entry.filename
                if name.split("/", 1)[0].endswith(".data"):
                    match = DATA_LIB.match(name)
                    if not match:
                        continue
                    name = match.group(1)
                if entry.is_dir() or name.startswith("/") or ".." in name.split("/"):
                    continue
                target = site / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(entry) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def imported_files(site: Path) -> list[str]:
    """The source files the server's modules import from `site`, found by importing them in an
    isolated interpreter (no site-packages of this machine), which also writes their bytecode."""
    code = ("import importlib, json, sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, sys.argv[1])\n"
            "for name in sys.argv[2:]:\n"
            "    try: importlib.import_module(name)\n"
            "    except Exception: pass\n"
            "print(json.dumps(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(site.parent),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), *SERVER_MODULES, *STORE_MODULES],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return []
    prefix = str(site) + os.sep
    return [f for f in json.loads(proc.stdout.strip().splitlines()[-1]) if f.startswith(prefix) and f.endswith(".py")]


def hash_checked_pyc(source: str) -> str:
    """The bytecode of `source` as a hash-checked .pyc: valid whatever mtime the host's copy
    gets. A .pyc the import wrote for this very source (timestamp-checked, its mtime and size)
    only gets the new header, the code being the same; anything else is compiled. "" for a
    source that does not compile (the host compiles it in memory, as before)."""
    pyc = importlib.util.cache_from_source(source)
    data = Path(source).read_bytes()
    st = os.stat(source)
    try:
        written = Path(pyc).read_bytes()
    except OSError:
        written = b""
    timestamp_header = (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
                        + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                        + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    if written[:16] != timestamp_header:
        try:
            return py_compile.compile(source, doraise=True,
                                      invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        except py_compile.PyCompileError:
            return ""
    flags = (0b11).to_bytes(4, "little")  # hash-based, checked
    Path(pyc).write_bytes(importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(data) + written[16:])
    return pyc


def add_bytecode(wheels: Path, work: Path, python: str, machine: str) -> int:
    """Write bytecode/ into `wheels` for a host whose Python is this one; 0 when it is not."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python or platform.machine() != machine:
        return 0
    site = work / "site-packages"
    unpack_wheels(wheels, site)
    sources = set(imported_files(site))
    if not any(f.endswith(os.path.join("mlflow", "server", "handlers.py")) for f in sources):
        return 0  # the server did not import here: leave the bytecode to the host
    sources |= {str(f) for f in (site / "mlflow").rglob("*.py")}  # Alembic loads migrations by path
    with ProcessPoolExecutor() as pool:
        compiled = [pyc for pyc in pool.map(hash_checked_pyc, sorted(sources), chunksize=64) if pyc]
    out = wheels / "bytecode"
    for pyc in compiled:
        target = out / os.path.relpath(pyc, site)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(pyc, target)
    (out / "MAGIC").write_text(importlib.util.MAGIC_NUMBER.hex() + "\n")
    return len(compiled)


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
    # Another run on this control node building the same key (a colleague's deploy, another
    # fleet): wait for it and use its tarball instead of downloading everything a second time.
    with open(cache / f"{args.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            print(json.dumps({"changed": False, "tarball": str(tarball), "sha256": sha256_of(tarball)}))
            return 0
        return build(args, cache, tarball)


def sha256_of(tarball: Path) -> str:
    """The tarball's SHA-256, kept beside it (hosts that download it check it against this):
    computed once per tarball, not once per host. Called under the key's lock."""
    sidecar = tarball.with_name(tarball.name + ".sha256")
    stat = tarball.stat()
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    try:
        digest, kept_stamp = sidecar.read_text().split("\n")[:2]
        if kept_stamp == stamp and re.fullmatch(r"[0-9a-f]{64}", digest):
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(tarball, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    partial = sidecar.with_name(sidecar.name + ".partial")
    partial.write_text(f"{h.hexdigest()}\n{stamp}\n")
    os.replace(partial, sidecar)
    return h.hexdigest()


def build(args: argparse.Namespace, cache: Path, tarball: Path) -> int:
    """Download the wheels (and build the source-only ones), add the bytecode, write the tarball."""
    abi = "cp" + args.python.replace(".", "")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        dest = Path(tmp) / "wheels"
        built = [r for r in args.requirements if re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() in SOURCE_ONLY]
        if built:
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                                   "--no-deps", "--wheel-dir", str(dest), *built], capture_output=True, text=True)
            if proc.returncode != 0:
                pip_failed(proc.stderr)
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
            pip_failed(proc.stderr)
            return proc.returncode
        (dest / "requirements.txt").write_text("\n".join(args.requirements) + "\n")
        add_bytecode(dest, Path(tmp), args.python, args.machine)
        partial = tarball.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            for wheel in sorted(dest.iterdir()):
                tar.add(wheel, arcname=wheel.name, filter=root_owned)
        os.replace(partial, tarball)  # atomic: a cached tarball is always complete
    shutil.rmtree(dest, ignore_errors=True)
    print(json.dumps({"changed": True, "tarball": str(tarball), "sha256": sha256_of(tarball)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
