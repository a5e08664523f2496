"""Shared test settings: state and cache live in per-session temporary directories unless the
caller (Makefile, CI) points MLOPS_PROVISION_CACHE at the shared cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "mlops-provision")
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "cli/mlops_provision/sandbox/containers.conf"))


def load_module(path: Path, name: str) -> ModuleType:
    """A Python file that is not a package module (role files, filter plugins, scripts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
