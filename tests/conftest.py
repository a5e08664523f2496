"""Shared test settings: state and cache live in per-session temporary directories unless the
caller (Makefile, CI) points MLOPS_PROVISION_CACHE at the shared cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "mlops-provision")
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "cli/mlops_provision/sandbox/containers.conf"))
