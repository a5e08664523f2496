"""Render the unit, the environment file and basic_auth.ini from templates/ — the files the role installs.

Plain Jinja2 configured like Ansible's template module (trim_blocks, trailing newline kept),
so `render` output equals the file on a host byte for byte; a test holds us to that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from mlops_provision import derive, paths
from mlops_provision.spec import DeploySpec

TEMPLATES = {"mlflow.service": "mlflow.service.j2", "mlflow.env": "mlflow.env.j2",
             "basic_auth.ini": "basic_auth.ini.j2"}
MASK = "********"
# Without --allowed-hosts each host computes its own list from its names and addresses; render
# knows only these.
LOCAL_NAMES = ["localhost", "127.0.0.1"]
LOCAL_ONLY_HOSTS = list(derive.allowed_hosts([], LOCAL_NAMES))
# Artifact-store credentials: taken from the controller at deploy time, so render masks them.
STORE_SECRETS = ("s3_access_key_id", "s3_secret_access_key", "azure_connection_string", "azure_account_key")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - systemd files, not HTML
    )


def backend_uri(values: dict[str, Any]) -> str:
    """The backend store URI, derived by the role's own function (derive.backend_uri).

    A project-managed PostgreSQL's password is generated on the control node at deploy time,
    so it always shows masked here; its address is 127.0.0.1 unless mlflow_postgresql_host
    names it (the address of an mlflow_db host is known only from that host's facts).
    """
    managed = derive.postgresql_uri(values["mlflow_postgresql_user"], MASK,
                                    values["mlflow_postgresql_host"] or "127.0.0.1",
                                    values["mlflow_postgresql_port"], values["mlflow_postgresql_database"],
                                    quote_password=False)
    return derive.backend_uri(values["mlflow_backend_store_uri"], values["mlflow_backend"],
                              values["mlflow_data_dir"], managed)


def store_env(values: dict[str, Any]) -> dict[str, str]:
    """Artifact-store settings for the env file, by the role's own function (derive.store_env),
    with the keys and connection strings masked."""
    masked = {name: MASK if values.get(f"mlflow_{name}") else "" for name in STORE_SECRETS}
    env = derive.store_env(values["mlflow_config_dir"], s3_region=values["mlflow_s3_region"],
                           s3_endpoint_url=values["mlflow_s3_endpoint_url"], s3_ca_bundle=values["mlflow_s3_ca_bundle"],
                           s3_ignore_tls=values["mlflow_s3_ignore_tls"],
                           gcs_credentials_file=values["mlflow_gcs_credentials_file"],
                           gcs_endpoint_url=values["mlflow_gcs_endpoint_url"], **masked)
    return {name: str(value) for name, value in env.items()}


def render_files(spec: DeploySpec, *, mask_secrets: bool = True) -> dict[str, str]:
    variables: dict[str, Any] = dict(spec.effective)
    # The role's vars/main.yml values the templates use, by the same functions (derive).
    variables["_mlflow_allowed_hosts"] = derive.allowed_hosts(variables["mlflow_allowed_hosts"] or [], LOCAL_NAMES)
    variables["_mlflow_backend_uri"] = backend_uri(variables)
    variables["_mlflow_store_env"] = store_env(variables)
    variables["_mlflow_listen_address"] = derive.listen_address(variables["mlflow_bind_address"],
                                                                variables["mlflow_tls"])
    # Basic auth: the admin password and the CSRF key are generated on the control node at deploy time.
    variables["_mlflow_auth_config"] = derive.auth_config_path(variables["mlflow_config_dir"])
    variables["_mlflow_auth_db_uri"] = derive.auth_db_uri(variables["_mlflow_backend_uri"],
                                                          variables["mlflow_data_dir"])
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
