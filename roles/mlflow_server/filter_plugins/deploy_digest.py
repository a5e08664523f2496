"""The digest of everything a deploy is asked for, computed on the control node.

It covers the values (every mlflow_* variable, the facts the roles read), the content of the
control-node files a deploy copies (TLS certificate and key, GCS and SFTP keys, known_hosts), and
the code that turns them into a host (the roles, the project's templates, the playbooks), so the
same digest means the same deploy: a new release of this tool or an edited template is a new digest too.
files/deploy_record.py compares it with the one recorded by the last finished deploy.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=8)
def _tree_digest(roots: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for top, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(top, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as fh:
                    digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    try:
        with open(os.path.expanduser(path), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError as err:  # the deploy itself names the problem
        return f"unreadable: {err.strerror}"


def desired_digest(values: dict[str, Any], roots: list[str], files: list[str] | None = None) -> str:
    """sha256 of the values (canonical JSON), of every file under the roots, and of the content of
    the control-node files a deploy copies to the host (a key replaced at the same path is a new
    digest, not "nothing to do")."""
    code = _tree_digest(tuple(os.path.realpath(r) for r in roots))
    contents = {path: _file_digest(path) for path in files or [] if path}
    text = json.dumps([values, contents], sort_keys=True, default=str)
    return hashlib.sha256((code + "\0" + text).encode()).hexdigest()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"mlflow_desired_digest": desired_digest}
