"""The typed spec: every bad value is refused with a message naming the flag or key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mlops_provision.errors import UsageError
from mlops_provision.spec import build_spec

BAD_FLAGS = [
    ({"port": "70000"}, "--port: 70000 is not a TCP port; valid: 1-65535"),
    ({"port": "0"}, "--port: 0 is not a TCP port; valid: 1-65535"),
    ({"port": "50x"}, "--port: expected a whole number, got '50x'"),
    ({"workers": "0"}, "--workers: 0 workers is out of range; valid: 1-64"),
    ({"backend_store_uri": "mysql:/oops"}, "--backend-store-uri: 'mysql:/oops' is not supported; valid: "
     "sqlite:////var/lib/mlflow/mlflow.db (absolute, four slashes, under /var/lib/mlflow) or "
     "postgresql://USER:PASSWORD@HOST:5432/DATABASE"),
    ({"backend_store_uri": "sqlite:///mlflow.db"}, "--backend-store-uri: 'sqlite:///mlflow.db' is not an "
     "absolute SQLite URI"),
    ({"backend_store_uri": "sqlite:////etc/mlflow.db"}, "--backend-store-uri: '/etc/mlflow.db' must be a path "
     "inside /var/lib/mlflow"),
    ({"backend_store_uri": "sqlite:////var/lib/mlflow/../../etc/x.db"}, "must be a path inside /var/lib/mlflow"),
    ({"backend_store_uri": "postgres://u:p@db/mlflow"}, "--backend-store-uri: use postgresql:// instead of "
     "postgres://"),
    ({"backend_store_uri": "postgresql://u:secret@db:99999/mlflow"}, "--backend-store-uri: the port in "
     "'postgresql://u:***@db:99999/mlflow' is not a number 1-65535"),
    ({"backend_store_uri": "postgresql://u:secret@db:5432/"}, "needs a host and a database"),
    ({"default_artifact_root": "ftp://x"}, "--default-artifact-root: 'ftp://x' is not a supported artifact "
     "location"),
    ({"artifacts_destination": "s3://"}, "--artifacts-destination: 's3://' has no valid bucket name"),
    ({"artifacts_destination": "wasbs://nocontainer"}, "--artifacts-destination: 'wasbs://nocontainer' must "
     "look like wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/path"),
    ({"artifacts_destination": "gs:/x"}, "--artifacts-destination: 'gs:/x' is not a supported artifact location"),
    ({"gcs_endpoint_url": "127.0.0.1:4443"}, "--gcs-endpoint-url: '127.0.0.1:4443' is not an http(s) URL"),
    ({"artifacts_destination": "relative/dir"}, "--artifacts-destination: 'relative/dir' is not a supported"),
    ({"artifacts_destination": "/srv/artifacts"}, "--artifacts-destination: '/srv/artifacts' must be a path "
     "inside /var/lib/mlflow"),
    ({"bind_address": "0.0.0.0; rm -rf /"}, "--bind-address: '0.0.0.0; rm -rf /' is not an IP address"),
    ({"allowed_hosts": "ok.example,bad host"}, "--allowed-hosts: 'bad host' is not a host name or pattern"),
    ({"cors_allowed_origins": "app.example"}, "--cors-allowed-origins: 'app.example' is not an origin"),
    ({"mlflow_version": "latest"}, "--mlflow-version: 'latest' is not a release number; e.g. 3.17.2"),
    ({"mlflow_version": "3.1.0"}, "--mlflow-version: MLflow 3.1.0 has known server vulnerabilities; use "
     "3.14.0 or newer, or pass --allow-insecure-version"),
    ({"backend": "mysql"}, "--backend: 'mysql' is not valid; choose one of: sqlite, postgresql"),
    ({"backend": "sqlite", "backend_store_uri": "postgresql://u:p@db:5432/mlflow"},
     "--backend: sqlite contradicts --backend-store-uri (postgresql); give one of them"),
    ({"install_method": "conda"}, "--install-method: 'conda' is not valid; choose one of: wheelhouse, index"),
    ({"pip_index_url": "https://pypi.example/simple"}, "--pip-index-url: only applies with --install-method index"),
    ({"wheelhouse_url": "ftp://mirror.example/wh/"}, "--wheelhouse-url: 'ftp://mirror.example/wh/' is not valid; give "
     "the http(s):// URL of a directory holding the wheelhouse tar files, without credentials, query or fragment"),
    ({"wheelhouse_url": "https://mirror.example/wh/?sig=x"}, "--wheelhouse-url: 'https://mirror.example/wh/?sig=x' "
     "is not valid"),
    ({"install_method": "index", "wheelhouse_url": "https://mirror.example/wh/"},
     "--wheelhouse-url: only applies with --install-method wheelhouse"),
    ({"install_method": "index", "pip_ca_bundle": "certs/ca.pem"}, "--pip-ca-bundle: 'certs/ca.pem' must be an "
     "absolute path on the host"),
    ({"default_artifact_root": "mlflow-artifacts:/", "serve_artifacts": False},
     "--default-artifact-root: mlflow-artifacts:/ needs --serve-artifacts"),
    ({"backend_store_uri": "sqlite:////var/lib/mlflow/a.db\nExecStartPre=/bin/sh"},
     "--backend-store-uri: contains a newline or control character; values must be one line"),
    ({"allowed_hosts": "a.example\rb"}, "--allowed-hosts: contains a newline or control character"),
    ({"artifacts_destination": "/var/lib/mlflow/" + "a" * 3000}, "--artifacts-destination: longer than 2048"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[str(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_refused_with_its_name(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as err:
        build_spec(flags, environ={})
    assert message in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("password", ["hunter22", "hunt/er22", "hunt@er22", "hu:nt/@er22"])
def test_wheelhouse_url_credentials_are_refused_and_not_printed_back(password: str) -> None:
    with pytest.raises(UsageError) as err:
        build_spec({"wheelhouse_url": f"https://ops:{password}@mirror.example/wh/"}, environ={})
    assert err.value.exit_code == 2
    assert "--wheelhouse-url: 'https://***@mirror.example/wh/' is not valid" in str(err.value)
    assert "er22" not in str(err.value)


def test_password_never_in_error_messages() -> None:
    with pytest.raises(UsageError) as err:
        build_spec({"backend_store_uri": "postgresql://u:hunter22@db:notaport/mlflow"}, environ={})
    assert "hunter22" not in str(err.value)


@pytest.mark.parametrize("flag", ["artifacts_destination", "default_artifact_root"])
@pytest.mark.parametrize(("uri", "message"), [
    ("sftp://u:hunter22@host1/srv/a", "an sftp:// location must not carry a password"),
    ("sftp://u:hun/ter22@host1/srv/a", "an sftp:// location must not carry a password"),
    ("sftp://u:hun?ter22@host1/srv/a", "an sftp:// location must not carry a password"),
    ("SFTP://u:hunter22@host1/srv/a", "an sftp:// location must not carry a password"),
    ("ftp://u:hunter22@host1/srv/a", "a location with USER:PASSWORD@ is not supported (not echoed here)"),
])
def test_a_password_in_an_artifact_location_is_refused_and_never_echoed(flag: str, uri: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        build_spec({flag: uri}, environ={})
    assert message in str(err.value)
    assert "ter22" not in str(err.value) and err.value.exit_code == 2


def test_good_values_become_role_variables() -> None:
    spec = build_spec({"port": "5001", "workers": "2", "serve_artifacts": False,
                       "default_artifact_root": "s3://bucket/prefix", "allowed_hosts": "a.example, a.example:*",
                       "backend_store_uri": "postgresql://mlflow:pw@db.example:5432/mlflow"}, environ={})
    assert spec.explicit == {
        "mlflow_port": 5001, "mlflow_workers": 2, "mlflow_serve_artifacts": False,
        "mlflow_default_artifact_root": "s3://bucket/prefix", "mlflow_allowed_hosts": ["a.example", "a.example:*"],
        "mlflow_backend_store_uri": "postgresql://mlflow:pw@db.example:5432/mlflow",
    }
    assert spec.secrets() == ["pw"]


def test_only_explicit_values_are_passed_so_inventory_variables_still_apply() -> None:
    assert build_spec({}, environ={}).explicit == {}


def test_backend_uri_from_controller_environment() -> None:
    env = {"MLFLOW_BACKEND_STORE_URI": "postgresql://u:envpw@db:5432/mlflow"}
    assert build_spec({}, environ=env).explicit["mlflow_backend_store_uri"] == env["MLFLOW_BACKEND_STORE_URI"]
    with pytest.raises(UsageError, match=r"^MLFLOW_BACKEND_STORE_URI \(environment\): 'mysql://x' is not"):
        build_spec({}, environ={"MLFLOW_BACKEND_STORE_URI": "mysql://x"})


def test_flag_beats_config_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "mlflow.yml"
    config.write_text("port: 5005\nworkers: 3\nserve-artifacts: false\ndefault_artifact_root: s3://bucket1/p\n")
    spec = build_spec({"port": "5006"}, str(config), environ={})
    assert spec.effective["mlflow_port"] == 5006
    assert spec.effective["mlflow_workers"] == 3
    assert spec.effective["mlflow_serve_artifacts"] is False
    assert spec.effective["mlflow_bind_address"] == "0.0.0.0"


@pytest.mark.parametrize(("content", "message"), [
    ("port: 5000\nfoo: 1\n", "unknown key 'foo'; valid keys: allow_from, allow_insecure_version, allowed_hosts"),
    ("port: [1, 2]\n", "port in {path}: expected a whole number, got [1, 2]"),
    ("serve_artifacts: 'yes please'\n", "serve_artifacts in {path}: expected true or false"),
    ("- port\n", "--config {path}: must be a mapping of option: value"),
    ("port: 5000\n  bad: indent\n", "--config {path}: not valid YAML"),
    ("workers: 99\n", "workers in {path}: 99 workers is out of range; valid: 1-64"),
])
def test_bad_config_file(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "c.yml"
    config.write_text(content)
    with pytest.raises(UsageError) as err:
        build_spec({}, str(config), environ={})
    assert message.format(path=config) in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"c\.yml: file not found"):
        build_spec({}, str(tmp_path / "c.yml"), environ={})


def test_insecure_version_allowed_when_asked() -> None:
    spec = build_spec({"mlflow_version": "3.1.0", "allow_insecure_version": True}, environ={})
    assert spec.explicit["mlflow_version"] == "3.1.0"


def test_store_credentials_are_required_and_named(tmp_path: Path) -> None:
    from mlops_provision import credentials

    s3 = build_spec({"artifacts_destination": "s3://bucket1/a"}, environ={}).effective
    with pytest.raises(UsageError, match=r"^S3 artifact store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        credentials.resolve(s3, {"AWS_ACCESS_KEY_ID": "only-the-id"}, tmp_path, required=True)
    found = credentials.resolve(s3, {"AWS_ACCESS_KEY_ID": "id1", "AWS_SECRET_ACCESS_KEY": "sk1"}, tmp_path, True)
    assert found == {"mlflow_s3_access_key_id": "id1", "mlflow_s3_secret_access_key": "sk1"}
    assert list(tmp_path.iterdir()) == []  # kept only after a successful deploy
    credentials.save(s3, {"AWS_ACCESS_KEY_ID": "id1", "AWS_SECRET_ACCESS_KEY": "sk1"}, tmp_path)
    assert credentials.resolve(s3, {}, tmp_path, True)["mlflow_s3_secret_access_key"] == "sk1"
    assert (tmp_path / "aws-secret-access-key").stat().st_mode & 0o777 == 0o600

    azure = build_spec({"artifacts_destination": "wasbs://mlflow@acct1.blob.core.windows.net/a"}, environ={})
    with pytest.raises(UsageError, match=r"^Azure artifact store: set AZURE_STORAGE_CONNECTION_STRING or"):
        credentials.resolve(azure.effective, {}, tmp_path, required=True)
    gcs = build_spec({"artifacts_destination": "gs://bucket1/a"}, environ={})
    with pytest.raises(UsageError, match=r"^--gcs-credentials-file is needed for this artifact store"):
        credentials.resolve(gcs.effective, {}, tmp_path, required=True)
    key = tmp_path / "sa.json"
    key.write_text("not json")
    gcs = build_spec({"artifacts_destination": "gs://bucket1/a", "gcs_credentials_file": str(key)}, environ={})
    with pytest.raises(UsageError, match=r"sa\.json: not a JSON service-account key"):
        credentials.resolve(gcs.effective, {}, tmp_path, required=True)
    sftp = build_spec({"artifacts_destination": "sftp://u@host1/srv/a"}, environ={})
    with pytest.raises(UsageError, match=r"^--sftp-key-file is needed"):
        credentials.resolve(sftp.effective, {}, tmp_path, required=True)
    keys = {}
    for kind in ("ed25519", "rsa"):
        keys[kind] = tmp_path / f"id_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(keys[kind])], check=True)
    sftp = build_spec({"artifacts_destination": "sftp://u@host1/srv/a", "sftp_key_file": str(keys["ed25519"])},
                      environ={})
    with pytest.raises(UsageError, match=r"id_ed25519: MLflow's SFTP store loads RSA keys only, and this is ed25519"):
        credentials.resolve(sftp.effective, {}, tmp_path, required=True)
    sftp = build_spec({"artifacts_destination": "sftp://u@host1/srv/a", "sftp_key_file": str(keys["rsa"])},
                      environ={})
    with pytest.raises(UsageError, match=r"^--sftp-known-hosts-file is needed for this artifact store \(the SFTP"):
        credentials.resolve(sftp.effective, {}, tmp_path, required=True)
    (tmp_path / "known_hosts").write_text("host1 ssh-ed25519 AAAA\n")
    sftp = build_spec({"artifacts_destination": "sftp://u@host1/srv/a", "sftp_key_file": str(keys["rsa"]),
                       "sftp_known_hosts_file": str(tmp_path / "known_hosts")}, environ={})
    assert credentials.resolve(sftp.effective, {}, tmp_path, required=True) == {}
    with pytest.raises(UsageError, match="AWS_SECRET_ACCESS_KEY \\(environment\\): contains a newline"):
        credentials.resolve(s3, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b\nc"}, tmp_path, True)


def test_render_masks_store_credentials_and_names_the_endpoint() -> None:
    from mlops_provision.render import render_files

    spec = build_spec({"artifacts_destination": "s3://bucket1/a", "s3_endpoint_url": "http://s3.local:8333",
                       "s3_ignore_tls": True}, environ={})
    spec.explicit["mlflow_s3_secret_access_key"] = "very-secret"
    env = render_files(spec)["mlflow.env"]
    assert 'AWS_SECRET_ACCESS_KEY="********"' in env and "very-secret" not in env
    assert 'MLFLOW_S3_ENDPOINT_URL="http://s3.local:8333"' in env and 'MLFLOW_S3_IGNORE_TLS="true"' in env


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    import subprocess

    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_cert_and_key_from_a_config_file_make_provided(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "a")
    config = tmp_path / "c.yml"
    config.write_text(f"tls_cert: {cert}\ntls_key: {key}\n")
    assert build_spec({}, str(config), environ={}).explicit["mlflow_tls"] == "provided"


@pytest.mark.parametrize(("flags", "message"), [
    ({"tls_cert": "A.crt"}, "--tls-cert: give --tls-cert and --tls-key together"),
    ({"tls_cert": "A.crt", "tls_key": "B.key"}, "--tls-key: '{B.key}' is not the unencrypted private key of '{A.crt}'"),
    ({"tls_cert": "A.crt", "tls_key": "A.crt"}, "--tls-key: '{A.crt}' is not a PEM private key"),
    ({"tls": "self-signed", "bind_address": "0.0.0.0"}, "--bind-address: with TLS, MLflow listens on 127.0.0.1 only"),
])
def test_bad_tls_input(tmp_path: Path, flags: dict[str, str], message: str) -> None:
    files = {}
    for name in ("A", "B"):
        cert, key = _self_signed(tmp_path, name)
        files[f"{name}.crt"], files[f"{name}.key"] = str(cert), str(key)
    flags = {k: files.get(v, v) for k, v in flags.items()}
    with pytest.raises(UsageError) as err:
        build_spec(flags, environ={})
    for short, path in files.items():
        message = message.replace("{" + short + "}", path)
    assert message in str(err.value)


def test_allow_from_is_normalized_so_firewall_rules_compare_equal() -> None:
    spec = build_spec({"allow_from": ["10.0.0.0/8,2001:DB8::/32", "192.168.1.7/32"]}, environ={})
    assert spec.explicit["mlflow_allow_from"] == ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]
