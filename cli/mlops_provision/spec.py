"""One typed, validated deploy spec from flags, a config file and the controller's
environment. Bad input stops here (exit 2), before anything runs.

Only values the operator set are passed to Ansible: role defaults and inventory variables
keep working underneath them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from mlops_provision import paths
from mlops_provision.errors import UsageError
from mlops_provision.options import OPTIONS, Option

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_VALUE = 2048

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
    """Role defaults as plain values; templated ones (a password lookup) are left out."""
    out: dict[str, Any] = {}
    for path in paths.role_defaults():
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        out.update({k: v for k, v in data.items() if not (isinstance(v, str) and "{{" in v)})
    return out


def load_config(path: str) -> dict[str, Any]:
    label = f"--config {path}"
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise UsageError(f"{label}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not a text file
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
        raise UsageError(f"{label}: cannot read it ({why}); valid: a YAML file of flags") from None
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
        if key in EXTRA_CONFIG_KEYS:
            value = _config_value(f"{key} in {path}", EXTRA_CONFIG_KEYS[key], value)
        out[key] = value
    return out


def _config_value(label: str, kind: str, value: Any) -> Any:
    """The config keys that are not server options: a bool, a path, a list of host names."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"{label}: expected true or false (unquoted), got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise UsageError(f"{label}: expected one file path, got {value!r}")
        _check_plain(label, value)
        return value
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise UsageError(f"{label}: expected a host name or a list of host names, got {value!r}")
    _check_plain(label, items)
    return items


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
        items = value if isinstance(value, list) else [value]
        return [part.strip() for i in items for part in str(i).split(",") if part.strip()]
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
    uri = str(spec.explicit.get("mlflow_backend_store_uri") or "")
    backend = spec.explicit.get("mlflow_backend")
    if uri and backend and not uri.startswith(backend):
        raise UsageError(f"{labels['mlflow_backend']}: {backend} contradicts {labels['mlflow_backend_store_uri']} "
                         f"({uri.split(':', 1)[0]}); give one of them")
    root = str(eff.get("mlflow_default_artifact_root") or "")
    if root.startswith("mlflow-artifacts:") and not eff.get("mlflow_serve_artifacts"):
        raise UsageError(
            f"{labels.get('mlflow_default_artifact_root', '--default-artifact-root')}: mlflow-artifacts:/ needs "
            "--serve-artifacts; with --no-serve-artifacts give the store itself, e.g. s3://bucket/prefix"
        )
    _check_tls(spec, labels)
    if spec.explicit.get("mlflow_allow_from"):  # one spelling, so firewall rules compare equal
        import ipaddress

        spec.explicit["mlflow_allow_from"] = [str(ipaddress.ip_network(n)) for n in spec.explicit["mlflow_allow_from"]]
    if eff.get("mlflow_install_method") == "index" and eff.get("mlflow_wheelhouse_url"):
        raise UsageError(f"{labels['mlflow_wheelhouse_url']}: only applies with --install-method wheelhouse")
    if eff.get("mlflow_install_method") != "index":
        for var in ("mlflow_pip_index_url", "mlflow_pip_ca_bundle", "mlflow_pip_proxy"):
            if eff.get(var):
                raise UsageError(f"{labels[var]}: only applies with --install-method index")





def _check_tls(spec: DeploySpec, labels: Mapping[str, str]) -> None:
    """--tls none|self-signed|provided with --tls-cert/--tls-key: one consistent mlflow_tls."""
    cert, key = spec.explicit.get("mlflow_tls_cert_file"), spec.explicit.get("mlflow_tls_key_file")
    mode = spec.explicit.get("mlflow_tls")
    if bool(cert) != bool(key):
        given = labels["mlflow_tls_cert_file" if cert else "mlflow_tls_key_file"]
        raise UsageError(f"{given}: give --tls-cert and --tls-key together (the certificate and its private key)")
    if cert:
        if mode not in (None, "provided"):
            raise UsageError(f"{labels['mlflow_tls']}: {mode} contradicts --tls-cert/--tls-key; "
                             "drop one of them")
        _check_key_pair(labels["mlflow_tls_key_file"], str(cert), str(key))
        spec.explicit["mlflow_tls"] = "provided"
    elif mode == "provided":
        raise UsageError(f"{labels['mlflow_tls']}: provided needs --tls-cert FILE and --tls-key FILE")
    elif mode == "none":
        spec.explicit["mlflow_tls"] = ""
    if spec.explicit.get("mlflow_tls") and "mlflow_bind_address" in spec.explicit:
        raise UsageError(f"{labels['mlflow_bind_address']}: with TLS, MLflow listens on 127.0.0.1 only and "
                         "nginx takes the outside; drop --bind-address")


def _check_key_pair(label: str, cert: str, key: str) -> None:
    """The key must open the certificate, unencrypted: nginx starts without anyone to type a passphrase."""
    import ssl

    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=lambda: "")
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{label}: {key!r} is not the unencrypted private key of {cert!r} ({exc})") from None
