"""Shared test settings: state and cache live in per-session temporary directories unless the
caller (Makefile, CI) points MLOPS_PROVISION_CACHE at the shared cache."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The CLI under test: what users install (`make test` points MLOPS_PROVISION_CLI at the wheel
# installed outside the checkout), else this venv's, for development.
CLI = os.environ.get("MLOPS_PROVISION_CLI") or str(BIN / "mlops-provision")
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "cli/mlops_provision/sandbox/containers.conf"))
# The mlflow clients the tests start send no usage telemetry anywhere.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def load_module(path: Path, name: str) -> ModuleType:
    """A Python file that is not a package module (role files, filter plugins, scripts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def processes_with_env(marker: str) -> dict[int, str]:
    """Live processes whose environment holds marker ("NAME=value"), with their command lines:
    what a CLI started, however far it detached (own sessions, daemonised ssh)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (marker + "\0").encode() in (proc / "environ").read_bytes() + b"\0":
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    return found


def wait_until_none_with_env(marker: str, timeout: float) -> dict[int, str]:
    """The processes with marker still alive after timeout seconds (empty once all are gone).
    An idle ssh connection master ("ssh: SOCKET [mux]", ControlPersist) may stay: it runs nothing."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: cmd for pid, cmd in processes_with_env(marker).items()
                if not (cmd.startswith("ssh: ") and cmd.rstrip().endswith("[mux]"))}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)
