"""One typed, validated deploy spec from flags and a config file. Bad input stops here.

Each Option ties a CLI flag, a config-file key and a role variable together, so the three
can never drift apart. Only values the operator set are passed to Ansible: role defaults and
inventory variables keep working underneath them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mlops_provision import paths
from mlops_provision.errors import UsageError

MIN_SAFE_MLFLOW = (3, 14)  # earlier 3.x servers have published CVEs
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9.*:\[\]_-]{1,253}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MAX_VALUE = 2048


@dataclass(frozen=True)
class Option:
    flag: str  # without the leading dashes; the config key is the same with - or _
    var: str  # role variable
    kind: str  # str | int | bool | list | choice
    help: str
    check: Callable[[str, Any, Mapping[str, Any]], None] | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None  # controller environment variable read when the flag is absent

    @property
    def key(self) -> str:
        return self.flag.replace("-", "_")


# --- validators: (label, value, all effective values) -> raise UsageError -------------


def _data_dir(values: Mapping[str, Any]) -> str:
    return str(values.get("mlflow_data_dir", "/var/lib/mlflow")).rstrip("/")


def check_backend_uri(label: str, value: str, values: Mapping[str, Any]) -> None:
    valid = (f"valid: sqlite:///{_data_dir(values)}/mlflow.db (absolute, four slashes, under "
             f"{_data_dir(values)}) or postgresql://USER:PASSWORD@HOST:5432/DATABASE")
    if label.endswith("registry-store-uri") and value == "":
        return
    if value.startswith("sqlite:"):
        if not value.startswith("sqlite:////"):
            raise UsageError(f"{label}: {value!r} is not an absolute SQLite URI; {valid}")
        path = value[len("sqlite:///"):]
        _check_under_data_dir(label, path, values)
        return
    if value.startswith("postgres://"):
        raise UsageError(f"{label}: use postgresql:// instead of postgres:// (SQLAlchemy dropped the alias)")
    if re.match(r"^postgresql(\+psycopg2)?://", value):
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise UsageError(f"{label}: the port in {_redact_uri(value)!r} is not a number 1-65535") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise UsageError(f"{label}: {_redact_uri(value)!r} needs a host and a database; {valid}")
        return
    raise UsageError(f"{label}: {_redact_uri(value)!r} is not supported; {valid}")


def _check_under_data_dir(label: str, path: str, values: Mapping[str, Any]) -> None:
    data_dir = _data_dir(values)
    norm = os.path.normpath(path)
    if not path.startswith("/") or not (norm + "/").startswith(data_dir + "/") or norm == data_dir:
        raise UsageError(
            f"{label}: {path!r} must be a path inside {data_dir} (the service's only writable "
            "directory under ProtectSystem=strict)"
        )


def check_artifact_uri(label: str, value: str, values: Mapping[str, Any]) -> None:
    valid = ("valid: an absolute path under /var/lib/mlflow, file:///var/lib/mlflow/..., "
             "s3://BUCKET[/prefix], wasbs://CONTAINER@ACCOUNT.blob.core.windows.net[/path], "
             "gs://BUCKET[/path], sftp://USER@HOST/path")
    if label.endswith("default-artifact-root"):
        if value == "" or value.rstrip("/") in ("mlflow-artifacts:", "mlflow-artifacts:/"):
            return
        valid += " or mlflow-artifacts:/"
    if value.startswith("/"):
        _check_under_data_dir(label, value, values)
        return
    scheme, _, rest = value.partition("://")
    if scheme == "file":
        _check_under_data_dir(label, rest, values)
        return
    if scheme in ("s3", "gs"):
        bucket = rest.split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise UsageError(f"{label}: {value!r} has no valid bucket name (3-63 of a-z 0-9 . -); {valid}")
        return
    if scheme == "wasbs":
        m = re.match(r"^([a-z0-9-]{3,63})@([a-z0-9]{3,24})\.blob\.[a-z0-9.-]+(/.*)?$", rest)
        if not m:
            raise UsageError(f"{label}: {value!r} must look like "
                             "wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/path")
        return
    if scheme == "sftp":
        parts = urlsplit(value)
        if not parts.hostname or not parts.username or not parts.path.strip("/"):
            raise UsageError(f"{label}: {value!r} must look like sftp://USER@HOST/path")
        return
    raise UsageError(f"{label}: {value!r} is not a supported artifact location; {valid}")


def check_port(label: str, value: int, values: Mapping[str, Any]) -> None:
    if not 1 <= value <= 65535:
        raise UsageError(f"{label}: {value} is not a TCP port; valid: 1-65535")


def check_workers(label: str, value: int, values: Mapping[str, Any]) -> None:
    if not 1 <= value <= 64:
        raise UsageError(f"{label}: {value} workers is out of range; valid: 1-64")


def check_address(label: str, value: str, values: Mapping[str, Any]) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"{label}: {value!r} is not an IP address; e.g. 0.0.0.0, 127.0.0.1 or ::") from None


def check_hosts(label: str, value: list[str], values: Mapping[str, Any]) -> None:
    for item in value:
        if not _HOST_PATTERN.match(item):
            raise UsageError(f"{label}: {item!r} is not a host name or pattern "
                             "(letters, digits, . - _ : * [ ]), e.g. mlflow.example.com,mlflow.example.com:*")


def check_origins(label: str, value: list[str], values: Mapping[str, Any]) -> None:
    for item in value:
        if not re.match(r"^https?://[A-Za-z0-9.*:_\[\]-]+$", item):
            raise UsageError(f"{label}: {item!r} is not an origin; e.g. https://app.example.com")


def check_version(label: str, value: str, values: Mapping[str, Any]) -> None:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", value)
    if not m:
        raise UsageError(f"{label}: {value!r} is not a release number; e.g. 3.17.2")
    if tuple(int(p) for p in m.groups()[:2]) < MIN_SAFE_MLFLOW and not values.get("_allow_insecure"):
        raise UsageError(
            f"{label}: MLflow {value} has known server vulnerabilities; use "
            f"{MIN_SAFE_MLFLOW[0]}.{MIN_SAFE_MLFLOW[1]}.0 or newer, or pass --allow-insecure-version"
        )


def check_index_url(label: str, value: str, values: Mapping[str, Any]) -> None:
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise UsageError(f"{label}: {value!r} is not an http(s) URL")


def check_abs_path(label: str, value: str, values: Mapping[str, Any]) -> None:
    if value and not value.startswith("/"):
        raise UsageError(f"{label}: {value!r} must be an absolute path on the host")


OPTIONS: tuple[Option, ...] = (
    Option("backend-store-uri", "mlflow_backend_store_uri", "str",
           "tracking store URI (default sqlite:////var/lib/mlflow/mlflow.db)", check_backend_uri,
           env="MLFLOW_BACKEND_STORE_URI"),
    Option("registry-store-uri", "mlflow_registry_store_uri", "str",
           "model registry store URI (default: the tracking store)", check_backend_uri),
    Option("default-artifact-root", "mlflow_default_artifact_root", "str",
           "artifact root for new experiments (default mlflow-artifacts:/ when serving)", check_artifact_uri),
    Option("artifacts-destination", "mlflow_artifacts_destination", "str",
           "where a serving server stores artifacts (default /var/lib/mlflow/artifacts)", check_artifact_uri),
    Option("serve-artifacts", "mlflow_serve_artifacts", "bool",
           "proxy artifacts through the server (default on)"),
    Option("port", "mlflow_port", "int", "server port (default 5000)", check_port),
    Option("workers", "mlflow_workers", "int", "uvicorn workers (default 4)", check_workers),
    Option("allowed-hosts", "mlflow_allowed_hosts", "list",
           "comma-separated Host header patterns (default: the host's names and addresses)", check_hosts),
    Option("cors-allowed-origins", "mlflow_cors_allowed_origins", "list",
           "comma-separated origins allowed for CORS", check_origins),
    Option("bind-address", "mlflow_bind_address", "str", "listen address (default 0.0.0.0)", check_address),
    Option("mlflow-version", "mlflow_version", "str", "MLflow release (default pinned)", check_version),
    Option("install-method", "mlflow_install_method", "choice",
           "wheelhouse (default; no index needed on hosts) or index", choices=("wheelhouse", "index")),
    Option("pip-index-url", "mlflow_pip_index_url", "str", "index for --install-method index", check_index_url),
    Option("pip-ca-bundle", "mlflow_pip_ca_bundle", "str", "CA bundle path on the host", check_abs_path),
    Option("pip-proxy", "mlflow_pip_proxy", "str", "HTTP(S) proxy for pip on the host", check_index_url),
)
OPTIONS_BY_KEY = {o.key: o for o in OPTIONS}
# Config-file keys that are not server options.
EXTRA_CONFIG_KEYS = {"allow_insecure_version": "bool", "inventory": "str", "host": "list"}


@dataclass
class DeploySpec:
    """Values the operator set (role variable -> value), plus the effective view for rendering."""

    explicit: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # non-option keys from --config

    @property
    def effective(self) -> dict[str, Any]:
        return {**self.defaults, **self.explicit}

    def secrets(self) -> list[str]:
        """Values that must never be printed: passwords inside URIs."""
        found = []
        for value in self.effective.values():
            if isinstance(value, str) and "://" in value:
                password = urlsplit(value).password
                if password:
                    found.append(password)
        return found


def load_defaults() -> dict[str, Any]:
    with open(paths.role_defaults(), encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return dict(data)


def load_config(path: str) -> dict[str, Any]:
    label = f"--config {path}"
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise UsageError(f"{label}: file not found") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{label}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{label}: must be a mapping of option: value")
    out: dict[str, Any] = {}
    valid = sorted([*OPTIONS_BY_KEY, *EXTRA_CONFIG_KEYS])
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in OPTIONS_BY_KEY and key not in EXTRA_CONFIG_KEYS:
            raise UsageError(f"{label}: unknown key {raw_key!r}; valid keys: {', '.join(valid)}")
        out[key] = value
    return out


def _coerce(opt: Option, label: str, value: Any) -> Any:
    if opt.kind == "int":
        if isinstance(value, bool):
            raise UsageError(f"{label}: expected a whole number, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"{label}: expected a whole number, got {value!r}") from None
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        raise UsageError(f"{label}: expected true or false, got {value!r}")
    if opt.kind == "list":
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(i).strip() for i in items if str(i).strip()]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise UsageError(f"{label}: expected a string, got {value!r}")
    text = str(value)
    if opt.kind == "choice" and text not in opt.choices:
        raise UsageError(f"{label}: {text!r} is not valid; choose one of: {', '.join(opt.choices)}")
    return text


def _check_plain(label: str, value: Any) -> None:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            if _CONTROL_CHARS.search(item):
                raise UsageError(f"{label}: contains a newline or control character; values must be one line")
            if len(item) > _MAX_VALUE:
                raise UsageError(f"{label}: longer than {_MAX_VALUE} characters")


def build_spec(flags: Mapping[str, Any], config_path: str | None = None,
               environ: Mapping[str, str] | None = None) -> DeploySpec:
    """flags: option key -> value for flags given on the command line (None = not given)."""
    environ = os.environ if environ is None else environ
    config = load_config(config_path) if config_path else {}
    spec = DeploySpec(defaults=load_defaults(),
                      config={k: v for k, v in config.items() if k in EXTRA_CONFIG_KEYS})
    labels: dict[str, str] = {}
    for opt in OPTIONS:
        if flags.get(opt.key) is not None:
            raw, label = flags[opt.key], f"--{opt.flag}"
        elif opt.key in config:
            raw, label = config[opt.key], f"{opt.key} in {config_path}"
        elif opt.env and environ.get(opt.env):
            raw, label = environ[opt.env], f"{opt.env} (environment)"
        else:
            continue
        value = _coerce(opt, label, raw)
        _check_plain(label, value)
        spec.explicit[opt.var] = value
        labels[opt.var] = label
    allow_insecure = bool(flags.get("allow_insecure_version") or config.get("allow_insecure_version"))
    context = {**spec.effective, "_allow_insecure": allow_insecure}
    for opt in OPTIONS:
        if opt.var in spec.explicit and opt.check is not None:
            opt.check(labels[opt.var], spec.explicit[opt.var], context)
    _check_combination(spec, labels)
    return spec


def _check_combination(spec: DeploySpec, labels: Mapping[str, str]) -> None:
    eff = spec.effective
    root = str(eff.get("mlflow_default_artifact_root") or "")
    if root.startswith("mlflow-artifacts:") and not eff.get("mlflow_serve_artifacts"):
        raise UsageError(
            f"{labels.get('mlflow_default_artifact_root', '--default-artifact-root')}: mlflow-artifacts:/ needs "
            "--serve-artifacts; with --no-serve-artifacts give the store itself, e.g. s3://bucket/prefix"
        )
    if eff.get("mlflow_install_method") != "index":
        for var in ("mlflow_pip_index_url", "mlflow_pip_ca_bundle", "mlflow_pip_proxy"):
            if eff.get(var):
                raise UsageError(f"{labels[var]}: only applies with --install-method index")


def _redact_uri(value: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", value)
