"""Run podman with the project's containers.conf (runc, ulimits) — no system file changes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mlops_provision.errors import UsageError

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def require_podman() -> str:
    exe = shutil.which("podman")
    if exe is None:
        raise UsageError(
            "podman is not installed; the sandbox needs it: "
            "apt-get install podman runc debootstrap slirp4netns (or run `make setup`)"
        )
    return exe


def podman(*args: str, check: bool = True, capture: bool = True,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    exe = require_podman()
    return subprocess.run(
        [exe, *args], env=podman_env(), check=check, text=True,
        capture_output=capture, input=None if stdin is None else stdin.decode(),
    )
