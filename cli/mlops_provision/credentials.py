"""Credentials of remote artifact stores: from this machine's environment, else the secrets store.

Taken from the environment, they are saved in the secrets store (mode 0600, or the vault) once
a deploy with them succeeded, so that later deploys, from cron or another shell, need not set
them again (and a mistyped key is never kept). They reach the hosts
only through the 0600 extra-vars file of one run and then the 0640 environment file.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlops_provision import derive
from mlops_provision.errors import UsageError

# kind -> (environment variable, role variable); s3 needs both keys, wasbs one of its two.
ENVIRONMENT = {
    "s3": (("AWS_ACCESS_KEY_ID", "mlflow_s3_access_key_id"),
           ("AWS_SECRET_ACCESS_KEY", "mlflow_s3_secret_access_key"),
           ("AWS_DEFAULT_REGION", "mlflow_s3_region")),
    "wasbs": (("AZURE_STORAGE_CONNECTION_STRING", "mlflow_azure_connection_string"),
              ("AZURE_STORAGE_ACCESS_KEY", "mlflow_azure_account_key")),
}


def artifact_kind(values: Mapping[str, Any]) -> str:
    """local, s3, wasbs, gs or sftp, as the role derives _mlflow_artifact_kind."""
    return derive.artifact_kind(derive.artifact_store(values["mlflow_serve_artifacts"],
                                                      values["mlflow_default_artifact_root"],
                                                      values["mlflow_artifacts_destination"]))


def _file_name(env_name: str) -> str:
    return env_name.lower().replace("_", "-")


def resolve(values: Mapping[str, Any], environ: Mapping[str, str], secrets_dir: Path,
            required: bool) -> dict[str, str]:
    """Role variables with the store's credentials. required: refuse (exit 2) when missing."""
    kind = artifact_kind(values)
    found: dict[str, str] = {}
    for env_name, var in ENVIRONMENT.get(kind, ()):
        saved = secrets_dir / _file_name(env_name)
        value = environ.get(env_name, "")
        if value:
            if "\n" in value or "\r" in value:
                raise UsageError(f"{env_name} (environment): contains a newline; values must be one line")
        elif saved.exists():
            value = saved.read_text()
        if value:
            found[var] = value
    if required:
        _require(kind, values, found)
    return found


def save(values: Mapping[str, Any], environ: Mapping[str, str], secrets_dir: Path) -> None:
    """After a successful deploy: keep the credentials taken from the environment."""
    for env_name, _var in ENVIRONMENT.get(artifact_kind(values), ()):
        if environ.get(env_name):
            saved = secrets_dir / _file_name(env_name)
            fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(environ[env_name])


def _require(kind: str, values: Mapping[str, Any], found: Mapping[str, str]) -> None:
    where = "in this shell (they are then kept in the secrets store for later deploys)"
    if kind == "s3" and not ("mlflow_s3_access_key_id" in found and "mlflow_s3_secret_access_key" in found):
        raise UsageError(f"S3 artifact store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY {where}")
    if kind == "wasbs" and not found:
        raise UsageError(f"Azure artifact store: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCESS_KEY "
                         f"{where}")
    if kind == "gs":
        _require_file("--gcs-credentials-file", values.get("mlflow_gcs_credentials_file", ""), json_key="type")
    if kind == "sftp":
        _require_file("--sftp-key-file", values.get("mlflow_sftp_private_key_file", ""))
        _require_rsa_key("--sftp-key-file", values["mlflow_sftp_private_key_file"])
        if not values.get("mlflow_sftp_known_hosts"):
            _require_file("--sftp-known-hosts-file", values.get("mlflow_sftp_known_hosts_file", ""),
                          hint=" (the SFTP server's host key, e.g. from `ssh-keyscan HOST` checked against the"
                               " server: it is never trusted on first use)")


def _require_rsa_key(flag: str, path: str) -> None:
    """MLflow's SFTP store (pysftp) loads RSA and DSA keys only: any other key would fail only
    at the store probe, with paramiko's "not a valid DSA private key file"."""
    text = Path(path).read_text(errors="replace")
    if "-----BEGIN RSA PRIVATE KEY-----" in text:
        return
    kind = "not a private key"
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
        try:
            head = base64.b64decode(body)[:200]  # the public part, with the key type, is not encrypted
        except ValueError:
            head = b""
        if b"ssh-rsa" in head:
            return
        kind = next((t for t in ("ed25519", "ecdsa", "dss") if t.encode() in head), "an OpenSSH key of another type")
    elif "PRIVATE KEY-----" in text:
        kind = text.split("-----BEGIN ", 1)[1].split("-----", 1)[0].lower()
    raise UsageError(f"{flag} {path}: MLflow's SFTP store loads RSA keys only, and this is {kind}; "
                     "make one with: ssh-keygen -t rsa -b 4096 -m PEM -f KEY")


def _require_file(flag: str, path: str, json_key: str | None = None, hint: str = "") -> None:
    if not path:
        raise UsageError(f"{flag} is needed for this artifact store{hint}")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{flag} {path}: file not found")
    if json_key is not None:
        try:
            data = json.loads(file.read_text())
        except ValueError:
            raise UsageError(f"{flag} {path}: not a JSON service-account key") from None
        if not isinstance(data, dict) or json_key not in data:
            raise UsageError(f"{flag} {path}: not a JSON service-account key (no {json_key!r})")
