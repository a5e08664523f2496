#!/usr/bin/env python3
"""Pack the helper scripts into one tar file on the control node, named by their content.

The install step pushes and unpacks it in one task when any script on the host differs,
instead of a copy (a stat and a transfer) per script. Runs with the control node's Python;
prints one JSON line: {"changed": bool, "tarball": path}. Concurrent plays (a fleet, two
checkouts sharing the cache) write the same content under the same name, each through its
own temporary file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("scripts", nargs="+")
    args = ap.parse_args()

    files = sorted((Path(p) for p in args.scripts), key=lambda p: p.name)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    cache = Path(os.path.expanduser(args.cache_dir))
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"helpers-{digest.hexdigest()[:16]}.tar"
    if tarball.exists():
        print(json.dumps({"changed": False, "tarball": str(tarball)}))
        return 0
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".helpers-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in files:  # regular files only: no directory entry whose mode would apply to the target
                data = path.read_bytes()
                info = tarfile.TarInfo(path.name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(path.stat().st_mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, tarball)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(json.dumps({"changed": True, "tarball": str(tarball)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
