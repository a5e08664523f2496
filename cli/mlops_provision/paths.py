"""Where things live: shipped resources (playbooks, roles, templates, alert rules) and per-user state."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_root() -> Path:
    """The directory holding playbooks/, roles/, templates/ and prometheus/.

    In a wheel they are package data beside this module; in a source checkout they sit at
    the repository root (two levels up from cli/mlops_provision/).
    """
    if (_PACKAGE_DIR / "playbooks").is_dir():
        return _PACKAGE_DIR
    return _PACKAGE_DIR.parent.parent


def playbook(name: str) -> Path:
    return resource_root() / "playbooks" / f"{name}.yml"


def roles_dir() -> Path:
    return resource_root() / "roles"


def templates_dir() -> Path:
    return resource_root() / "templates"


def alert_rules_file() -> Path:
    """The Prometheus alert rules (docs/alerting.md)."""
    return resource_root() / "prometheus" / "mlflow-alerts.rules.yml"


def role_defaults() -> list[Path]:
    """Defaults files the server role sees: its own and those of role mlflow_common."""
    return [roles_dir() / role / "defaults" / "main.yml" for role in ("mlflow_common", "mlflow_server")]


def state_dir() -> Path:
    """Sandboxes, run logs and (later) secrets: private to the operator, mode 0700."""
    base = os.environ.get("MLOPS_PROVISION_HOME") or str(
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "mlops-provision"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def cache_dir() -> Path:
    """Shared, rebuildable things: the wheelhouse. Override with MLOPS_PROVISION_CACHE."""
    base = os.environ.get("MLOPS_PROVISION_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-provision"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
