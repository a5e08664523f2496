"""Renders of the unit and env file for every option combination, checked by systemd itself."""

from __future__ import annotations

import configparser
import itertools
import subprocess
from pathlib import Path

import pytest

from mlops_provision.render import render_files
from mlops_provision.spec import build_spec

BACKENDS = ["sqlite:////var/lib/mlflow/mlflow.db", "postgresql://mlflow:s3cr3t-pw@db.example:5432/mlflow"]
ARTIFACTS = [
    {},  # served from /var/lib/mlflow/artifacts
    {"artifacts_destination": "s3://bucket1/mlflow"},
    {"serve_artifacts": False, "default_artifact_root": "wasbs://mlflow@acct1.blob.core.windows.net/a"},
]
PORTS = ["5000", "443"]
REGISTRY = [None, "sqlite:////var/lib/mlflow/registry.db"]
COMBOS = list(itertools.product(BACKENDS, ARTIFACTS, PORTS, REGISTRY))


def _env_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value.startswith('"') and value.endswith('"'), line
            out[name] = value[1:-1]
    return out


@pytest.mark.parametrize(("backend", "artifacts", "port", "registry"), COMBOS)
def test_every_combination_renders_and_systemd_accepts_the_unit(
        tmp_path: Path, backend: str, artifacts: dict[str, object], port: str, registry: str | None) -> None:
    install_dir = tmp_path / "opt"
    exe = install_dir / "current" / "bin" / "mlflow"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    spec = build_spec({"backend_store_uri": backend, "port": port, "registry_store_uri": registry, **artifacts},
                      environ={})
    spec.defaults["mlflow_install_dir"] = str(install_dir)  # so systemd-analyze finds ExecStart
    files = render_files(spec, mask_secrets=False)
    unit = tmp_path / "mlflow.service"
    unit.write_text(files["mlflow.service"])

    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # warnings count as failures

    env = _env_lines(files["mlflow.env"])
    assert env["MLFLOW_PORT"] == port
    expected_backend = backend.replace("postgresql://", "postgresql+psycopg2://")
    assert env["MLFLOW_BACKEND_STORE_URI"] == expected_backend
    assert ("MLFLOW_REGISTRY_STORE_URI" in env) == bool(registry)
    serve = artifacts.get("serve_artifacts", True)
    assert env["MLFLOW_SERVE_ARTIFACTS"] == ("true" if serve else "false")
    if serve:
        assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == "mlflow-artifacts:/"
        assert env["MLFLOW_ARTIFACTS_DESTINATION"] == artifacts.get("artifacts_destination",
                                                                      "/var/lib/mlflow/artifacts")
    else:
        assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == artifacts["default_artifact_root"]
        assert "MLFLOW_ARTIFACTS_DESTINATION" not in env
    # No value, and so no secret, is on the command line.
    exec_start = f"ExecStart={install_dir}/current/bin/mlflow server --app-name basic-auth\n"
    assert exec_start in files["mlflow.service"]
    # Basic auth by default: its users live beside the tracking data, in the same database for PostgreSQL.
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    auth = configparser.ConfigParser()
    auth.read_string(files["basic_auth.ini"])
    assert auth["mlflow"]["database_uri"] == (expected_backend if backend.startswith("postgresql")
                                              else "sqlite:////var/lib/mlflow/auth.db")
    assert auth["mlflow"]["admin_username"] == "admin"
    privileged = int(port) < 1024
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in files["mlflow.service"]) == privileged


def test_secrets_are_masked_in_render_output() -> None:
    spec = build_spec({"backend_store_uri": BACKENDS[1]}, environ={})
    files = render_files(spec)
    assert "s3cr3t-pw" not in files["mlflow.env"]
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:********@db.example:5432/mlflow"' \
        in files["mlflow.env"]


def test_quotes_and_dollars_are_escaped_for_systemd() -> None:
    spec = build_spec({"backend_store_uri": 'postgresql://u:p"$HOME`x\\y@db:5432/mlflow'}, environ={})
    env = render_files(spec, mask_secrets=False)["mlflow.env"]
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://u:p\\"\\$HOME\\`x\\\\y@db:5432/mlflow"\n' in env


def test_hardening_directives_present() -> None:
    unit = render_files(build_spec({}, environ={}))["mlflow.service"]
    for directive in ("User=mlflow", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                      "SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM", "CapabilityBoundingSet=\n",
                      "Restart=on-failure", "KillMode=control-group", "StateDirectory=mlflow",
                      "EnvironmentFile=/etc/mlflow/mlflow.env"):
        assert directive in unit, directive


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported on stderr."""
    unit = tmp_path / "broken.service"
    unit.write_text(render_files(build_spec({}, environ={}))["mlflow.service"].replace("Restart=", "Restartt="))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key 'Restartt'" in proc.stderr


def test_managed_postgresql_renders_a_masked_uri_and_pool_settings() -> None:
    env = render_files(build_spec({"backend": "postgresql"}, environ={}))["mlflow.env"]
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:********@127.0.0.1:5432/mlflow"\n' in env
    assert 'MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="5"\nMLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="5"\n' in env
    sqlite_env = render_files(build_spec({}, environ={}))["mlflow.env"]
    assert 'MLFLOW_BACKEND_STORE_URI="sqlite:////var/lib/mlflow/mlflow.db"\n' in sqlite_env
    # SQLite: more connections than a worker's 40 request threads (MLflow's 5 + 10 stalls 32 writers).
    assert 'MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="5"\nMLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="60"\n' in sqlite_env


@pytest.mark.parametrize(("value", "expected"), [(None, "false"), (True, "true"), (False, "false")])
def test_job_execution_is_off_unless_asked_for(value: object, expected: str) -> None:
    config = {} if value is None else {"job_execution": value}
    env = _env_lines(render_files(build_spec(config, environ={}))["mlflow.env"])
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == expected


@pytest.mark.parametrize(("value", "expected"), [("yes", "true"), ("True", "true"), ("no", "false"), ("0", "false")])
def test_job_execution_as_text_from_an_inventory_or_extra_vars(value: str, expected: str) -> None:
    spec = build_spec({}, environ={})
    spec.defaults["mlflow_job_execution"] = value  # what `-e mlflow_job_execution=yes` gives the template
    assert _env_lines(render_files(spec)["mlflow.env"])["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == expected


@pytest.mark.parametrize(("value", "sent"), [(None, False), ("no", False), (True, True), ("yes", True)])
def test_mlflow_telemetry_is_off_unless_asked_for(value: object, sent: bool) -> None:
    spec = build_spec({}, environ={})
    if value is not None:
        spec.defaults["mlflow_telemetry"] = value
    env = _env_lines(render_files(spec)["mlflow.env"])
    if sent:
        assert "MLFLOW_DISABLE_TELEMETRY" not in env and "DO_NOT_TRACK" not in env
    else:
        assert (env["MLFLOW_DISABLE_TELEMETRY"], env["DO_NOT_TRACK"]) == ("true", "true")


def test_auth_none_drops_the_auth_app_and_its_files() -> None:
    files = render_files(build_spec({"auth": "none"}, environ={}))
    assert "basic_auth.ini" not in files
    assert "--app-name" not in files["mlflow.service"]
    assert "MLFLOW_AUTH_CONFIG_PATH" not in files["mlflow.env"]


def test_tls_binds_mlflow_to_loopback_only() -> None:
    env = _env_lines(render_files(build_spec({"tls": "self-signed"}, environ={}))["mlflow.env"])
    assert env["MLFLOW_HOST"] == "127.0.0.1"


def test_a_percent_in_a_database_password_survives_configparser() -> None:
    uri = "postgresql://u:p%25w%40rd@db:5432/mlflow"
    files = render_files(build_spec({"backend_store_uri": uri}, environ={}), mask_secrets=False)
    auth = configparser.ConfigParser()
    auth.read_string(files["basic_auth.ini"])
    assert auth["mlflow"]["database_uri"] == "postgresql+psycopg2://u:p%25w%40rd@db:5432/mlflow"


def test_s3_settings_render_and_its_keys_are_masked() -> None:
    spec = build_spec({"artifacts_destination": "s3://bucket1/mlflow", "s3_endpoint_url": "https://s3.example:8333",
                       "s3_ca_bundle": "/etc/ssl/private-ca.pem", "s3_ignore_tls": True}, environ={})
    spec.defaults.update(mlflow_s3_access_key_id="AKIA-KEY", mlflow_s3_secret_access_key="se/cr+et",
                         mlflow_s3_region="eu-west-1")
    env = _env_lines(render_files(spec, mask_secrets=False)["mlflow.env"])
    assert {name: env[name] for name in env if name.startswith(("AWS_", "MLFLOW_S3_"))} == {
        "AWS_ACCESS_KEY_ID": "********", "AWS_SECRET_ACCESS_KEY": "********", "AWS_DEFAULT_REGION": "eu-west-1",
        "MLFLOW_S3_ENDPOINT_URL": "https://s3.example:8333", "AWS_CA_BUNDLE": "/etc/ssl/private-ca.pem",
        "MLFLOW_S3_IGNORE_TLS": "true"}


def test_azure_and_gcs_settings_render() -> None:
    spec = build_spec({"serve_artifacts": False,
                       "default_artifact_root": "wasbs://mlflow@acct1.blob.core.windows.net/a"}, environ={})
    spec.defaults.update(mlflow_azure_connection_string="DefaultEndpointsProtocol=https;AccountKey=k==")
    env = _env_lines(render_files(spec, mask_secrets=False)["mlflow.env"])
    assert env["AZURE_STORAGE_CONNECTION_STRING"] == "********" and "AZURE_STORAGE_ACCESS_KEY" not in env
    spec = build_spec({"artifacts_destination": "gs://bucket/x", "gcs_credentials_file": "/tmp/sa.json"}, environ={})
    env = _env_lines(render_files(spec)["mlflow.env"])
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/etc/mlflow/gcs-credentials.json"
    assert not [name for name in env if name.startswith(("AWS_", "AZURE_"))] and "STORAGE_EMULATOR_HOST" not in env
    spec = build_spec({"artifacts_destination": "gs://bucket/x", "gcs_credentials_file": "/tmp/sa.json",
                       "gcs_endpoint_url": "http://gcs.example:4443"}, environ={})
    assert _env_lines(render_files(spec)["mlflow.env"])["STORAGE_EMULATOR_HOST"] == "http://gcs.example:4443"


def test_managed_postgresql_on_a_named_host() -> None:
    spec = build_spec({"backend": "postgresql"}, environ={})
    spec.defaults.update(mlflow_postgresql_host="db.internal", mlflow_postgresql_port=6543,
                         mlflow_postgresql_database="ml")
    files = render_files(spec)
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:********@db.internal:6543/ml"\n' \
        in files["mlflow.env"]
    auth = configparser.ConfigParser()
    auth.read_string(files["basic_auth.ini"])
    assert auth["mlflow"]["database_uri"] == "postgresql+psycopg2://mlflow:********@db.internal:6543/ml"


def test_allowed_hosts_default_to_the_local_names_with_any_port() -> None:
    env = _env_lines(render_files(build_spec({}, environ={}))["mlflow.env"])
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "localhost,127.0.0.1,localhost:*,127.0.0.1:*"
    given = build_spec({"allowed_hosts": "mlflow.example.com,mlflow.example.com:*"}, environ={})
    env = _env_lines(render_files(given)["mlflow.env"])
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "mlflow.example.com,mlflow.example.com:*"


@pytest.mark.parametrize("metrics", [True, False])
def test_metrics_get_an_empty_runtime_directory_at_each_start(tmp_path: Path, metrics: bool) -> None:
    install_dir = tmp_path / "opt"
    exe = install_dir / "current" / "bin" / "mlflow"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    spec = build_spec({"metrics": metrics}, environ={})
    spec.defaults["mlflow_install_dir"] = str(install_dir)
    files = render_files(spec, mask_secrets=False)
    unit = tmp_path / "mlflow.service"
    unit.write_text(files["mlflow.service"])
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    env = _env_lines(files["mlflow.env"])
    if metrics:
        assert env["MLFLOW_EXPOSE_PROMETHEUS"] == "/run/mlflow-metrics"
        assert "\nRuntimeDirectory=mlflow-metrics\nRuntimeDirectoryMode=0700\n" in files["mlflow.service"]
    else:
        assert "MLFLOW_EXPOSE_PROMETHEUS" not in env
        assert "RuntimeDirectory" not in files["mlflow.service"]
