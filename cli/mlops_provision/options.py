"""The server options: one table tying each CLI flag, config key and role variable together,
with the validator for its value. Standard library only: the CLI's parser is built from it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mlops_provision import derive
from mlops_provision.errors import UsageError

# Earlier releases have published server CVEs; the role's preflight holds the same floor.
MIN_SAFE_MLFLOW = derive.MIN_SAFE_MLFLOW_VERSION
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9.*:\[\]_-]{1,253}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Option:
    flag: str  # without the leading dashes; the config key is the same with - or _
    var: str  # role variable
    kind: str  # str | int | bool | list | choice
    help: str
    check: Callable[[str, Any, Mapping[str, Any]], None] | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None  # controller environment variable read when the flag is absent
    repeatable: bool = False  # list options: the flag may be given several times

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
    # Before any message that echoes the value: a password in it must never be printed.
    if re.match(r"(?i)^sftp://[^@]*:[^@]*@", value):  # a password may hold "/", "?" or "#"
        raise UsageError(f"{label}: an sftp:// location must not carry a password (it would show in the "
                         "summary, in MLflow's artifact URIs and in the server's environment); valid: "
                         "sftp://USER@HOST/path, the store logs in with --sftp-key-file")
    if re.match(r"(?i)^[a-z][a-z0-9+.-]*://[^@/]*:[^@/]*@", value):
        raise UsageError(f"{label}: a location with USER:PASSWORD@ is not supported (not echoed here); {valid}")
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


# systemd calendar expressions: words, digits, and * , - : / . ~ and spaces ("Mon..Fri *-*-* 02:30",
# "daily", "*-*-* 00/6:00:00"); the host's `systemd-analyze calendar` checks the meaning.
_CALENDAR = re.compile(r"^[A-Za-z0-9*,:/.~ -]{1,120}$")


def check_calendar(label: str, value: str, values: Mapping[str, Any]) -> None:
    if value and not _CALENDAR.match(value):
        raise UsageError(f"{label}: {value!r} is not a systemd calendar expression; valid: e.g. daily, "
                         "'*-*-* 02:30:00', 'Mon..Fri 23:00' (man systemd.time), or empty for no scheduled backups")


def check_backup_keep(label: str, value: int, values: Mapping[str, Any]) -> None:
    if not 1 <= value <= 1000:
        raise UsageError(f"{label}: {value} is out of range; valid: 1-1000 archives")


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
    if _release(value) < _release(MIN_SAFE_MLFLOW) and not values.get("_allow_insecure"):
        raise UsageError(
            f"{label}: MLflow {value} has known server vulnerabilities; use "
            f"{MIN_SAFE_MLFLOW} or newer, or pass --allow-insecure-version"
        )


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_networks(label: str, value: list[str], values: Mapping[str, Any]) -> None:
    for item in value:
        try:
            if "/" not in item:
                raise ValueError
            ipaddress.ip_network(item, strict=True)
        except ValueError:
            raise UsageError(f"{label}: {item!r} is not a network in CIDR form with its host bits zero; "
                             "e.g. 10.0.0.0/8, 192.168.1.0/24, 203.0.113.7/32 or 2001:db8::/32") from None


def _check_pem(label: str, value: str, marker: str, what: str) -> None:
    try:
        with open(value, encoding="ascii", errors="replace") as fh:
            text = fh.read(1_000_000)
    except OSError as exc:
        raise UsageError(f"{label}: cannot read {value!r} on this machine: {exc.strerror}") from None
    if marker not in text:
        raise UsageError(f"{label}: {value!r} is not {what} (no {marker.strip('-')} block)")


def check_pem_cert(label: str, value: str, values: Mapping[str, Any]) -> None:
    _check_pem(label, value, "-----BEGIN CERTIFICATE-----", "a PEM certificate")


def check_pem_key(label: str, value: str, values: Mapping[str, Any]) -> None:
    _check_pem(label, value, "PRIVATE KEY-----", "a PEM private key")


def check_index_url(label: str, value: str, values: Mapping[str, Any]) -> None:
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise UsageError(f"{label}: {value!r} is not an http(s) URL")


def check_wheelhouse_url(label: str, value: str, values: Mapping[str, Any]) -> None:
    """An http(s) directory URL; no credentials (they would show in logs and the summary), no
    query or fragment (the tar file's name is appended to the path)."""
    if value and not re.match(r"^https?://[^/@\s?#]+(/[^@\s?#]*)?$", value):
        shown = re.sub(r"^([^:/]*://).*@", r"\1***@", value)  # a password given by mistake is not printed back
        raise UsageError(f"{label}: {shown!r} is not valid; give the http(s):// URL of a directory holding "
                         "the wheelhouse tar files, without credentials, query or fragment "
                         "(e.g. https://mirror.example/mlops-provision/wheelhouse/)")


def check_abs_path(label: str, value: str, values: Mapping[str, Any]) -> None:
    if value and not value.startswith("/"):
        raise UsageError(f"{label}: {value!r} must be an absolute path on the host")


OPTIONS: tuple[Option, ...] = (
    Option("backend", "mlflow_backend", "choice",
           "sqlite (default: a file on the host) or postgresql (installed and managed by this tool)",
           choices=("sqlite", "postgresql")),
    Option("backend-store-uri", "mlflow_backend_store_uri", "str",
           "an existing database instead, e.g. postgresql://USER:PASS@HOST:5432/DB "
           "(or the controller's MLFLOW_BACKEND_STORE_URI)", check_backend_uri,
           env="MLFLOW_BACKEND_STORE_URI"),
    Option("registry-store-uri", "mlflow_registry_store_uri", "str",
           "model registry store URI (default: the tracking store)", check_backend_uri),
    Option("default-artifact-root", "mlflow_default_artifact_root", "str",
           "artifact root for new experiments (default mlflow-artifacts:/ when serving)", check_artifact_uri),
    Option("artifacts-destination", "mlflow_artifacts_destination", "str",
           "where a serving server stores artifacts (default /var/lib/mlflow/artifacts)", check_artifact_uri),
    Option("serve-artifacts", "mlflow_serve_artifacts", "bool",
           "proxy artifacts through the server (default on)"),
    Option("s3-endpoint-url", "mlflow_s3_endpoint_url", "str",
           "S3-compatible store endpoint (MinIO, Ceph, SeaweedFS), e.g. https://s3.example.internal:9000",
           check_index_url),
    Option("s3-ca-bundle", "mlflow_s3_ca_bundle", "str", "CA bundle path on the host for the S3 endpoint",
           check_abs_path),
    Option("s3-ignore-tls", "mlflow_s3_ignore_tls", "bool", "do not verify the S3 endpoint's certificate (insecure)"),
    Option("gcs-credentials-file", "mlflow_gcs_credentials_file", "str",
           "service-account JSON on this machine, for gs:// (pushed 0600 to the host)", None),
    Option("gcs-endpoint-url", "mlflow_gcs_endpoint_url", "str",
           "GCS emulator endpoint for gs://, e.g. http://gcs-emulator.example.internal:4443 (the server "
           "then talks to it without credentials)", check_index_url),
    Option("sftp-key-file", "mlflow_sftp_private_key_file", "str",
           "private key on this machine for sftp:// (pushed 0600 for the service user)", None),
    Option("sftp-known-hosts-file", "mlflow_sftp_known_hosts_file", "str",
           "known_hosts file on this machine with the SFTP server's host key, for sftp://", None),
    Option("auth", "mlflow_auth", "choice",
           "basic (default: MLflow's basic-auth app, an admin password generated on this machine) or none "
           "(anyone who reaches the port can read and delete everything)", choices=("basic", "none")),
    Option("tls", "mlflow_tls", "choice",
           "put nginx with TLS in front (MLflow then listens on 127.0.0.1 only): self-signed, or "
           "give --tls-cert and --tls-key; none (default) serves plain HTTP",
           choices=("self-signed", "provided", "none")),
    Option("tls-cert", "mlflow_tls_cert_file", "str", "PEM certificate (with chain) on this machine, for nginx",
           check_pem_cert),
    Option("tls-key", "mlflow_tls_key_file", "str", "PEM private key on this machine (pushed 0600)", check_pem_key),
    Option("allow-from", "mlflow_allow_from", "list",
           "admit only this source network to the port (CIDR, repeatable); default: everyone",
           check_networks, repeatable=True),
    Option("job-execution", "mlflow_job_execution", "bool",
           "run MLflow's server-side jobs (GenAI: LLM-judge scoring, evaluations, prompt optimization, "
           "trace archival) in 8 more processes, about 1.8 GB more memory (default off)"),
    Option("metrics", "mlflow_metrics", "bool",
           "serve MLflow's Prometheus metrics at /metrics (an admin login; counters of every worker, from zero "
           "at each start; default off)"),
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
    Option("wheelhouse-url", "mlflow_wheelhouse_url", "str",
           "hosts download the wheelhouse this machine built from this http(s) directory URL, checked by "
           "SHA-256 (default: pushed over SSH)", check_wheelhouse_url),
    Option("pip-index-url", "mlflow_pip_index_url", "str", "index for --install-method index", check_index_url),
    Option("pip-ca-bundle", "mlflow_pip_ca_bundle", "str", "CA bundle path on the host", check_abs_path),
    Option("pip-proxy", "mlflow_pip_proxy", "str", "HTTP(S) proxy for pip on the host", check_index_url),
    Option("backup-schedule", "mlflow_backup_schedule", "str",
           "back up on the host by a systemd timer, e.g. daily or '*-*-* 02:30:00' (default: off)", check_calendar),
    Option("backup-keep", "mlflow_backup_keep", "int", "scheduled backups kept on the host (default 7)",
           check_backup_keep),
)


def _redact_uri(value: str) -> str:
    return derive.redact_uri(value)
