"""The role's `mlflow_deployment` fact, parsed once into a typed record for the summary and
the endpoint record.

The fact crosses Ansible's templating, so values may arrive as native types or as their
string forms ("True", "5000", "['a']"), depending on the ansible-core version: accept both.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "yes", "1", "on")


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return [text]
        else:
            return [text]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return []


def _dict(value: Any) -> dict[str, Any]:
    """A dict fact, or the rendered string of one when Ansible templated it to text."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return {}
    return value if isinstance(value, dict) else {}


def _migration(value: Any) -> dict[str, tuple[str, str]]:
    """{"tracking": [from, to], ...}."""
    value = _dict(value)
    return {str(name): (str(pair[0]), str(pair[1])) for name, pair in value.items()
            if isinstance(pair, (list, tuple)) and len(pair) == 2}


@dataclass
class Deployment:
    version: str = ""
    health: str = ""
    port: int = 5000
    scheme: str = "http"
    tls: str = ""
    auth: str = ""
    auth_user: str = ""
    auth_realm: str = ""
    auth_cache_ttl: int = 0  # seconds a worker may accept a changed or removed password
    allow_from: list[str] = field(default_factory=list)
    firewall: str = "unmanaged"
    artifact_kind: str = ""
    serve_artifacts: bool = False
    backend: str = ""
    artifacts: str = ""
    restarted: bool = False
    restart_reasons: list[str] = field(default_factory=list)
    mlflow_version_running: str = ""
    plan: list[str] | None = None  # check mode: what a real run would do; None: the role said nothing
    migration: dict[str, tuple[str, str]] = field(default_factory=dict)  # database -> (from, to) revision
    backup: str = ""  # on the host: the backup taken before the migration (or the restore)
    restored: dict[str, Any] = field(default_factory=dict)  # restore --from: what the archive held
    # What a killed deploy left unfinished and this one put back first: its marker on the host,
    # {"kind": "migration" | "restore", "backup": PATH, ...} (backend/recover.yml).
    recovered: dict[str, Any] = field(default_factory=dict)
    # The deploy found the host as its last finished deploy left it and ended early
    # (roles/mlflow_server/tasks/nothing_to_do.yml).
    unchanged: bool = False

    @classmethod
    def from_fact(cls, fact: dict[str, Any]) -> Deployment:
        get = fact.get
        return cls(
            version=_str(get("version")).strip(),
            health=_str(get("health")).strip(),
            port=_int(get("port"), 5000),
            scheme=_str(get("scheme")) or "http",
            tls=_str(get("tls")),
            auth=_str(get("auth")),
            auth_user=_str(get("auth_user")),
            auth_realm=_str(get("auth_realm")),
            auth_cache_ttl=_int(get("auth_cache_ttl"), 0),
            allow_from=_list(get("allow_from")),
            firewall=_str(get("firewall")) or "unmanaged",
            artifact_kind=_str(get("artifact_kind")),
            serve_artifacts=_bool(get("serve_artifacts")),
            backend=_str(get("backend")),
            artifacts=_str(get("artifacts")).strip(),
            restarted=_bool(get("restarted")),
            restart_reasons=_list(get("restart_reasons")),
            mlflow_version_running=_str(get("mlflow_version_running")).strip(),
            plan=_list(get("plan")) if "plan" in fact else None,
            migration=_migration(get("migration")),
            backup=_str(get("backup")).strip(),
            restored=_dict(get("restored")),
            recovered=_dict(get("recovered")),
            unchanged=_bool(get("unchanged")),
        )
