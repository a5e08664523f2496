"""Render the unit, the environment file and basic_auth.ini from templates/ — the files the role installs.

Plain Jinja2 configured like Ansible's template module (trim_blocks, trailing newline kept),
so `render` output equals the file on a host byte for byte; a test holds us to that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from mlops_provision import paths
from mlops_provision.spec import DeploySpec

TEMPLATES = {"mlflow.service": "mlflow.service.j2", "mlflow.env": "mlflow.env.j2",
             "basic_auth.ini": "basic_auth.ini.j2"}
MASK = "********"
# Without --allowed-hosts each host computes its own list from its names and addresses.
LOCAL_ONLY_HOSTS = ["localhost", "127.0.0.1", "localhost:*", "127.0.0.1:*"]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - systemd files, not HTML
    )


def backend_uri(values: dict[str, Any]) -> str:
    """The backend store URI, derived as the role derives _mlflow_backend_uri (vars/main.yml).

    A project-managed PostgreSQL's password is generated on the control node at deploy time,
    so it always shows masked here.
    """
    if values["mlflow_backend_store_uri"]:
        return str(values["mlflow_backend_store_uri"])
    if values["mlflow_backend"] == "postgresql":
        host = values["mlflow_postgresql_host"] or "127.0.0.1"
        return (f"postgresql://{values['mlflow_postgresql_user']}:{MASK}@{host}:"
                f"{values['mlflow_postgresql_port']}/{values['mlflow_postgresql_database']}")
    return f"sqlite:///{values['mlflow_data_dir']}/mlflow.db"


def store_env(values: dict[str, Any]) -> dict[str, str]:
    """Artifact-store settings for the env file, as the role derives _mlflow_store_env. Keys and
    connection strings come from the controller at deploy time, so render shows them masked."""
    env = {
        "AWS_DEFAULT_REGION": values["mlflow_s3_region"],
        "MLFLOW_S3_ENDPOINT_URL": values["mlflow_s3_endpoint_url"],
        "AWS_CA_BUNDLE": values["mlflow_s3_ca_bundle"],
        "MLFLOW_S3_IGNORE_TLS": "true" if values["mlflow_s3_ignore_tls"] else "",
        "GOOGLE_APPLICATION_CREDENTIALS": (f"{values['mlflow_config_dir']}/gcs-credentials.json"
                                           if values["mlflow_gcs_credentials_file"] else ""),
    }
    for var, name in (("mlflow_s3_access_key_id", "AWS_ACCESS_KEY_ID"),
                      ("mlflow_s3_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                      ("mlflow_azure_connection_string", "AZURE_STORAGE_CONNECTION_STRING"),
                      ("mlflow_azure_account_key", "AZURE_STORAGE_ACCESS_KEY")):
        env[name] = MASK if values.get(var) else ""
    return {k: str(v) for k, v in env.items() if v}


def auth_db_uri(values: dict[str, Any], backend: str) -> str:
    """Where basic auth keeps its users, as the role derives _mlflow_auth_db_uri."""
    if backend.startswith("postgresql"):
        return "postgresql+psycopg2://" + backend.split("://", 1)[1]
    return f"sqlite:///{values['mlflow_data_dir']}/auth.db"


def render_files(spec: DeploySpec, *, mask_secrets: bool = True) -> dict[str, str]:
    variables: dict[str, Any] = dict(spec.effective)
    variables["_mlflow_allowed_hosts"] = variables["mlflow_allowed_hosts"] or LOCAL_ONLY_HOSTS
    variables["_mlflow_backend_uri"] = backend_uri(variables)
    variables["_mlflow_store_env"] = store_env(variables)
    variables["_mlflow_listen_address"] = "127.0.0.1" if variables["mlflow_tls"] else variables["mlflow_bind_address"]
    # Basic auth: the admin password and the CSRF key are generated on the control node at deploy time.
    variables["_mlflow_auth_config"] = f"{variables['mlflow_config_dir']}/basic_auth.ini"
    variables["_mlflow_auth_db_uri"] = auth_db_uri(variables, variables["_mlflow_backend_uri"])
    variables["mlflow_auth_admin_password"] = MASK
    variables["mlflow_auth_secret_key"] = MASK
    env = _environment()
    names = [n for n in TEMPLATES if n != "basic_auth.ini" or variables["mlflow_auth"] == "basic"]
    out = {name: env.get_template(TEMPLATES[name]).render(variables) for name in names}
    if mask_secrets:
        for secret in spec.secrets():
            for form in sorted(_written_forms(secret), key=len, reverse=True):
                out = {name: text.replace(form, MASK) for name, text in out.items()}
    return out


def _written_forms(secret: str) -> set[str]:
    """A secret as it appears in each file: raw, escaped for systemd's EnvironmentFile parser
    (templates/mlflow.env.j2) and with % doubled for configparser (basic_auth.ini.j2)."""
    env = secret
    for char in ("\\", '"', "$", "`"):
        env = env.replace(char, "\\" + char)
    return {secret, env, secret.replace("%", "%%")}


def write_files(files: dict[str, str], output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        target = output_dir / name
        target.write_text(text, encoding="utf-8")
        target.chmod(0o600 if name.endswith((".env", ".ini")) else 0o644)
        written.append(target)
    return written
