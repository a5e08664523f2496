"""The role's derivations, for the CLI: roles/mlflow_server/filter_plugins/mlflow_derive.py.

That file is the one source of the values the role derives from its variables (the backend
URI, the auth database and realm, the store environment, ...): vars/main.yml calls its
functions as filters, and `render`, the version check and the credentials use the same
functions from here. It ships with the role (package data), not as a module of this package,
so it is loaded by path, from the roles directory the playbooks use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from mlops_provision import paths


def _load() -> Any:
    path = paths.roles_dir() / "mlflow_server" / "filter_plugins" / "mlflow_derive.py"
    spec = importlib.util.spec_from_file_location("mlops_provision._mlflow_derive", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the role's derivations from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_plugin = _load()

MIN_SAFE_MLFLOW_VERSION: str = _plugin.MIN_SAFE_MLFLOW_VERSION
postgresql_uri: Callable[..., str] = _plugin.postgresql_uri
backend_uri: Callable[..., str] = _plugin.backend_uri
backend_kind: Callable[[str], str] = _plugin.backend_kind
redact_uri: Callable[[str], str] = _plugin.redact_uri
auth_db_uri: Callable[[str, str], str] = _plugin.auth_db_uri
auth_config_path: Callable[[str], str] = _plugin.auth_config_path
artifact_store: Callable[[Any, str, str], str] = _plugin.artifact_store
artifact_kind: Callable[[str], str] = _plugin.artifact_kind
store_env: Callable[..., dict[str, Any]] = _plugin.store_env
listen_address: Callable[[str, Any], str] = _plugin.listen_address
allowed_hosts: Callable[[Sequence[str], Sequence[str]], Sequence[str]] = _plugin.allowed_hosts
