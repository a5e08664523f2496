"""Hostile input, table by table: every bad value is refused with its exact exit code and a
message naming the flag, key or variable and what is valid, and the deployed host stays as
it was (same files, same MainPID and start time, same venvs) after every row.

The module runs on the shared sandbox (tests/e2e/conftest.py), deployed with the defaults. Rows
refused on the control node must not start Ansible (no run directory appears) and must be fast;
inventory rows run Ansible only up to the role's preflight (`--tags mlflow_preflight`, so a
validation hole cannot change the shared host: it shows as exit 0 instead of 2). Rows marked
with `bug=` are known holes, kept as strict xfails so that the fix flips them. Values that are
valid but full of shell and systemd metacharacters must reach the service's process byte for
byte, without running anything.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CLI
from tests.e2e.conftest import VM, cli, ensure_deployed

pytestmark = pytest.mark.e2e
SHARED_SERVER = True


@dataclass(frozen=True)
class Row:
    """One bad input refused on the control node. "{vm}" in args is the sandbox's name,
    "{config}" (in args and message) the path of a file holding `config`."""

    id: str
    args: tuple[str, ...]
    message: str  # a stable substring of stdout + stderr
    code: int = 2
    config: str | None = None  # YAML text for --config {config}
    env: tuple[tuple[str, str], ...] = ()  # set in the CLI's environment (AWS_*, AZURE_* are cleared)
    hidden: str = ""  # must not appear in the output (a password)
    bug: str = ""  # a known hole: strict xfail with this reason


# ---- PENDING: rows for --allow-from CIDR and --auth basic|none (flags added on main later) ----
# Same shape as CLI_ROWS; they run in test_refused_on_the_control_node.
PENDING_ROWS: list[Row] = [
    Row("allow-from-prefix-too-long", ("deploy", "--host", "{vm}", "--allow-from", "10.0.0.0/33"),
        "error: --allow-from: '10.0.0.0/33' is not a network in CIDR form with its host bits zero"),
    Row("allow-from-host-bits", ("deploy", "--host", "{vm}", "--allow-from", "10.1.2.3/8"),
        "error: --allow-from: '10.1.2.3/8' is not a network in CIDR form"),
    Row("allow-from-word", ("deploy", "--host", "{vm}", "--allow-from", "10.0.0.0/8", "--allow-from", "anywhere"),
        "error: --allow-from: 'anywhere' is not a network in CIDR form"),
    Row("allow-from-shell", ("deploy", "--host", "{vm}", "--allow-from", "10.0.0.0/8;reboot"),
        "error: --allow-from: '10.0.0.0/8;reboot' is not a network in CIDR form"),
    Row("auth-unknown", ("deploy", "--host", "{vm}", "--auth", "maybe"),
        "error: --auth: 'maybe' is not valid; choose one of: basic, none"),
    Row("tls-cert-without-key", ("deploy", "--host", "{vm}", "--tls-cert", "/etc/hostname"),
        "is not a PEM certificate"),
    Row("tls-provided-without-files", ("deploy", "--host", "{vm}", "--tls", "provided"),
        "error: --tls: provided needs --tls-cert FILE and --tls-key FILE"),
    Row("tls-key-missing-file", ("deploy", "--host", "{vm}", "--tls-key", "/nonexistent/key.pem"),
        "error: --tls-key: cannot read '/nonexistent/key.pem' on this machine: No such file or directory"),
]
# ------------------------------------------------------------------------------------------------

PWNED = "/tmp/pwned-hostile"  # created only if some value is ever run by a shell
FAST_S = 8.0  # a refusal on the control node is a Python start-up, not an Ansible run
DEPLOY = ("deploy", "--host", "{vm}")
LONG = "a" * 3000
VALID_HOSTS = "(letters, digits, . - _ : * [ ]), e.g. mlflow.example.com,mlflow.example.com:*"
CREDS = "in this shell (they are then kept in the secrets store for later deploys)"

CLI_ROWS: list[Row] = [
    # ports and numbers
    Row("port-too-big", (*DEPLOY, "--port", "70000"), "error: --port: 70000 is not a TCP port; valid: 1-65535"),
    Row("port-zero", (*DEPLOY, "--port", "0"), "error: --port: 0 is not a TCP port; valid: 1-65535"),
    Row("port-word", (*DEPLOY, "--port", "abc"), "error: --port: expected a whole number, got 'abc'"),
    Row("port-shell", (*DEPLOY, "--port", "5000;reboot"), "error: --port: expected a whole number, got '5000;reboot'"),
    Row("workers-65", (*DEPLOY, "--workers", "65"), "error: --workers: 65 workers is out of range; valid: 1-64"),
    Row("backup-schedule-shell", (*DEPLOY, "--backup-schedule", "daily; touch /tmp/x"),
        "error: --backup-schedule: 'daily; touch /tmp/x' is not a systemd calendar expression; valid: e.g. daily, "),
    Row("backup-keep-zero", (*DEPLOY, "--backup-keep", "0"),
        "error: --backup-keep: 0 is out of range; valid: 1-1000 archives"),
    Row("backup-output-is-a-file", ("backup", "--host", "{vm}", "--output", "{config}"),
        "error: --output: {config} is not a directory; valid: a directory on this machine", config="x: 1"),
    Row("restore-missing-archive", ("restore", "--host", "{vm}", "--from", "/nonexistent/a.tar.gz"),
        "error: --from: /nonexistent/a.tar.gz is not a file; valid: a backup archive written by "),
    Row("restore-not-an-archive", ("restore", "--host", "{vm}", "--from", "{config}"),
        "error: --from: {config} fails its check: ", config="x: 1"),
    Row("restore-scheduled-traversal", ("restore", "--host", "{vm}", "--from", "@../../etc/passwd"),
        "error: --from: '@../../etc/passwd' is not a scheduled backup's name; valid: @NAME"),
    Row("destroy-port-word", ("destroy", "--host", "{vm}", "--yes", "--check", "--port", "abc"),
        "error: --port: 'abc' is not a number; valid: 1-65535"),
    Row("destroy-without-yes", ("destroy", "--host", "{vm}", "--check"),
        "error: destroy removes the MLflow service from the hosts: add --yes to confirm"),
    # versions
    Row("version-below-floor", (*DEPLOY, "--mlflow-version", "3.13.0"),
        "error: --mlflow-version: MLflow 3.13.0 has known server vulnerabilities; use 3.14.0 or newer, "
        "or pass --allow-insecure-version"),
    Row("version-two-parts", (*DEPLOY, "--mlflow-version", "3.17"),
        "error: --mlflow-version: '3.17' is not a release number; e.g. 3.17.2"),
    Row("version-shell", (*DEPLOY, "--mlflow-version", "3.17.2;id"),
        "error: --mlflow-version: '3.17.2;id' is not a release number; e.g. 3.17.2"),
    Row("version-pip-specifier", (*DEPLOY, "--mlflow-version", ">=3.14,<4"),
        "error: --mlflow-version: '>=3.14,<4' is not a release number; e.g. 3.17.2"),
    # store URIs
    Row("backend-mysql", (*DEPLOY, "--backend-store-uri", "mysql:/oops"),
        "error: --backend-store-uri: 'mysql:/oops' is not supported; valid: sqlite:////var/lib/mlflow/mlflow.db"),
    Row("backend-sqlite-relative", (*DEPLOY, "--backend-store-uri", "sqlite:///mlflow.db"),
        "error: --backend-store-uri: 'sqlite:///mlflow.db' is not an absolute SQLite URI; valid: "
        "sqlite:////var/lib/mlflow/mlflow.db (absolute, four slashes, under /var/lib/mlflow)"),
    Row("backend-sqlite-traversal", (*DEPLOY, "--backend-store-uri", "sqlite:////var/lib/mlflow/../../../etc/shadow"),
        "error: --backend-store-uri: '/var/lib/mlflow/../../../etc/shadow' must be a path inside /var/lib/mlflow"),
    Row("backend-postgres-alias", (*DEPLOY, "--backend-store-uri", "postgres://u:p@db/mlflow"),
        "error: --backend-store-uri: use postgresql:// instead of postgres://"),
    Row("backend-pg-bad-port", (*DEPLOY, "--backend-store-uri", "postgresql://u:Hush4Secret@db:99999/mlflow"),
        "error: --backend-store-uri: the port in 'postgresql://u:***@db:99999/mlflow' is not a number 1-65535",
        hidden="Hush4Secret"),
    Row("backend-pg-no-database", (*DEPLOY, "--backend-store-uri", "postgresql://u:Hush4Secret@db:5432"),
        "error: --backend-store-uri: 'postgresql://u:***@db:5432' needs a host and a database; valid: ",
        hidden="Hush4Secret"),
    Row("registry-traversal", (*DEPLOY, "--registry-store-uri", "sqlite:////var/lib/mlflow/../mlflow.db"),
        "error: --registry-store-uri: '/var/lib/mlflow/../mlflow.db' must be a path inside /var/lib/mlflow"),
    Row("artifacts-outside-data-dir", (*DEPLOY, "--artifacts-destination", "/etc/mlflow"),
        "error: --artifacts-destination: '/etc/mlflow' must be a path inside /var/lib/mlflow"),
    Row("artifacts-traversal", (*DEPLOY, "--artifacts-destination", "/var/lib/mlflow/../../../root"),
        "error: --artifacts-destination: '/var/lib/mlflow/../../../root' must be a path inside /var/lib/mlflow"),
    Row("artifacts-file-traversal", (*DEPLOY, "--artifacts-destination", "file:///var/lib/mlflow/../../../etc"),
        "error: --artifacts-destination: '/var/lib/mlflow/../../../etc' must be a path inside /var/lib/mlflow"),
    Row("artifacts-bad-bucket", (*DEPLOY, "--artifacts-destination", "s3://A_B/x"),
        "error: --artifacts-destination: 's3://A_B/x' has no valid bucket name (3-63 of a-z 0-9 . -); valid: "),
    Row("artifacts-bad-wasbs", (*DEPLOY, "--artifacts-destination", "wasbs://no-account/x"),
        "error: --artifacts-destination: 'wasbs://no-account/x' must look like "
        "wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/path"),
    Row("artifact-root-ftp", (*DEPLOY, "--default-artifact-root", "ftp://x/y"),
        "error: --default-artifact-root: 'ftp://x/y' is not a supported artifact location; valid: "),
    Row("backend-choice", (*DEPLOY, "--backend", "oracle"),
        "error: --backend: 'oracle' is not valid; choose one of: sqlite, postgresql"),
    Row("backend-contradiction", (*DEPLOY, "--backend", "postgresql", "--backend-store-uri",
                                  "sqlite:////var/lib/mlflow/m.db"),
        "error: --backend: postgresql contradicts --backend-store-uri (sqlite); give one of them"),
    Row("root-needs-serving", (*DEPLOY, "--default-artifact-root", "mlflow-artifacts:/", "--no-serve-artifacts"),
        "error: --default-artifact-root: mlflow-artifacts:/ needs --serve-artifacts"),
    Row("s3-ca-bundle-relative", (*DEPLOY, "--s3-ca-bundle", "../ca.pem"),
        "error: --s3-ca-bundle: '../ca.pem' must be an absolute path on the host"),
    Row("index-url-without-index", (*DEPLOY, "--pip-index-url", "http://127.0.0.1:9/simple"),
        "error: --pip-index-url: only applies with --install-method index"),
    Row("index-url-ftp", (*DEPLOY, "--install-method", "index", "--pip-index-url", "ftp://x"),
        "error: --pip-index-url: 'ftp://x' is not an http(s) URL"),
    # addresses and Host-header patterns
    Row("bind-shell", (*DEPLOY, "--bind-address", "0.0.0.0;id"),
        "error: --bind-address: '0.0.0.0;id' is not an IP address; e.g. 0.0.0.0, 127.0.0.1 or ::"),
    Row("allowed-hosts-cidr", (*DEPLOY, "--allowed-hosts", "10.0.0.0/8"),
        f"error: --allowed-hosts: '10.0.0.0/8' is not a host name or pattern {VALID_HOSTS}"),
    Row("allowed-hosts-subst", (*DEPLOY, "--allowed-hosts", "ok.example.com,$(id)"),
        f"error: --allowed-hosts: '$(id)' is not a host name or pattern {VALID_HOSTS}"),
    Row("cors-javascript", (*DEPLOY, "--cors-allowed-origins", "javascript:alert(1)"),
        "error: --cors-allowed-origins: 'javascript:alert(1)' is not an origin; e.g. https://app.example.com"),
    # control characters and size
    Row("newline-in-uri", (*DEPLOY, "--backend-store-uri", "postgresql://u:p@db/m\nExecStartPre=/bin/sh"),
        "error: --backend-store-uri: contains a newline or control character; values must be one line"),
    Row("escape-in-hosts", (*DEPLOY, "--allowed-hosts", "ok.example.com\x1b[2J"),
        "error: --allowed-hosts: contains a newline or control character; values must be one line"),
    Row("oversize-hosts", (*DEPLOY, "--allowed-hosts", LONG), "error: --allowed-hosts: longer than 2048 characters"),
    Row("oversize-uri", (*DEPLOY, "--backend-store-uri", "sqlite:////var/lib/mlflow/" + LONG),
        "error: --backend-store-uri: longer than 2048 characters"),
    # targets and names
    Row("host-traversal", ("deploy", "--host", "../../etc/passwd"),
        "error: --host '../../etc/passwd' is not a valid host name, address, sandbox or inventory host"),
    Row("host-shell", ("deploy", "--host", "vm1;id"),
        "error: --host 'vm1;id' is not a valid host name, address, sandbox or inventory host"),
    Row("host-invalid-tld", ("deploy", "--host", "mlflow.invalid"),
        "error: --host mlflow.invalid: not a sandbox (see `mlops-provision sandbox list`), no -i inventory given, "
        "and the name does not resolve"),
    Row("inventory-missing", (*DEPLOY, "-i", "/nonexistent/hostile-inv.yml"),
        "error: -i/--inventory /nonexistent/hostile-inv.yml: file not found"),
    Row("sandbox-up-traversal", ("sandbox", "up", "--name", "hostile/../../etc"),
        "error: --name 'hostile/../../etc': use 1-31 of a-z 0-9 - starting with a letter, e.g. vm1"),
    Row("sandbox-down-traversal", ("sandbox", "down", "--name", "../hostile"),
        "error: --name '../hostile': use 1-31 of a-z 0-9 - starting with a letter, e.g. vm1"),
    Row("sandbox-name-oversize", ("sandbox", "up", "--name", "hostile-" + "x" * 30),
        f"error: --name 'hostile-{'x' * 30}': use 1-31 of a-z 0-9 - starting with a letter"),
    Row("health-file-url", ("health", "--url", "file:///etc/passwd"),
        "error: --url 'file:///etc/passwd': must start with http:// or https://"),
    # credentials of remote stores
    Row("s3-no-keys", (*DEPLOY, "--artifacts-destination", "s3://hostile-bucket/p"),
        f"error: S3 artifact store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY {CREDS}"),
    Row("s3-one-key", (*DEPLOY, "--artifacts-destination", "s3://hostile-bucket/p"),
        "error: S3 artifact store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        env=(("AWS_ACCESS_KEY_ID", "AK"),)),
    Row("s3-key-newline", (*DEPLOY, "--artifacts-destination", "s3://hostile-bucket/p"),
        "error: AWS_ACCESS_KEY_ID (environment): contains a newline; values must be one line",
        env=(("AWS_ACCESS_KEY_ID", "AK\nExecStartPre=/bin/sh"), ("AWS_SECRET_ACCESS_KEY", "sk"))),
    Row("azure-no-credentials", (*DEPLOY, "--artifacts-destination", "wasbs://hostile@acct123.blob.core.windows.net/p"),
        "error: Azure artifact store: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCESS_KEY"),
    Row("gcs-no-key-file", (*DEPLOY, "--artifacts-destination", "gs://hostile-bucket/p"),
        "error: --gcs-credentials-file is needed for this artifact store"),
    Row("gcs-key-traversal", (*DEPLOY, "--artifacts-destination", "gs://hostile-bucket/p",
                              "--gcs-credentials-file", "../../../../../../etc/passwd"),
        "error: --gcs-credentials-file ../../../../../../etc/passwd: not a JSON service-account key"),
    Row("sftp-password-in-uri", (*DEPLOY, "--artifacts-destination", "sftp://u:Hostile-Sftp-Pw@h/p"),
        "error: --artifacts-destination: an sftp:// location must not carry a password", hidden="Hostile-Sftp-Pw"),
    Row("sftp-key-missing", (*DEPLOY, "--artifacts-destination", "sftp://u@h/p", "--sftp-key-file", "/nonexistent/k"),
        "error: --sftp-key-file /nonexistent/k: file not found"),
    Row("backend-uri-from-environment", DEPLOY,
        "error: MLFLOW_BACKEND_STORE_URI (environment): 'mysql://x/y' is not supported; valid: ",
        env=(("MLFLOW_BACKEND_STORE_URI", "mysql://x/y"),)),
]

CONFIG = (*DEPLOY, "--config", "{config}")
CONFIG_ROWS: list[Row] = [
    Row("config-unknown-key", CONFIG, "error: --config {config}: unknown key 'prot'; valid keys: "
        "allow_from, allow_insecure_version, allowed_hosts, artifacts_destination,", config="prot: 5000"),
    Row("config-port", CONFIG, "error: port in {config}: 70000 is not a TCP port; valid: 1-65535",
        config="port: 70000"),
    Row("config-port-bool", CONFIG, "error: port in {config}: expected a whole number, got True", config="port: true"),
    Row("config-bool-string", CONFIG, "error: serve_artifacts in {config}: expected true or false, got 'yes'",
        config='serve_artifacts: "yes"'),
    Row("config-version-float", CONFIG,
        "error: mlflow_version in {config}: '3.17' is not a release number; e.g. 3.17.2",
        config="mlflow_version: 3.17"),
    Row("config-version-below-floor", CONFIG, "error: mlflow_version in {config}: MLflow 3.13.0 has known server "
        "vulnerabilities; use 3.14.0 or newer, or pass --allow-insecure-version", config="mlflow_version: 3.13.0"),
    Row("config-not-yaml", CONFIG, "error: --config {config}: not valid YAML", config="port: ["),
    Row("config-not-mapping", CONFIG, "error: --config {config}: must be a mapping of option: value",
        config="- port: 5000"),
    Row("config-newline", CONFIG,
        "error: backend_store_uri in {config}: contains a newline or control character; values must be one line",
        config='backend_store_uri: "sqlite:////var/lib/mlflow/m.db\\nExecStartPre=/bin/sh"'),
    Row("config-hosts-item", CONFIG, f"error: allowed_hosts in {{config}}: 'bad host' is not a host name or pattern "
        f"{VALID_HOSTS}", config='allowed_hosts: [ok.example.com, "bad host"]'),
    Row("config-mapping-value", CONFIG, "error: bind_address in {config}: expected a string, got {'a': 1}",
        config="bind_address: {a: 1}"),
    Row("config-oversize", CONFIG, "error: backend_store_uri in {config}: longer than 2048 characters",
        config=f"backend_store_uri: sqlite:////var/lib/mlflow/{LONG}"),
    Row("config-host-traversal", ("deploy", "--config", "{config}"),
        "error: --host '../../etc' is not a valid host name, address, sandbox or inventory host",
        config="host: [../../etc]"),
    Row("config-inventory-missing", ("deploy", "--config", "{config}"),
        "error: -i/--inventory /nonexistent/hostile-inv.yml: file not found",
        config="inventory: /nonexistent/hostile-inv.yml"),
    Row("config-file-missing", (*DEPLOY, "--config", "/nonexistent/hostile.yml"),
        "error: --config /nonexistent/hostile.yml: file not found"),
    Row("config-insecure-flag-as-string", ("render", "--config", "{config}"),
        "allow_insecure_version in {config}: expected true or false (unquoted), got 'false'",
        config='allow_insecure_version: "false"\nmlflow_version: 3.13.0'),
    Row("config-host-string", ("deploy", "--config", "{config}"), "'-bad'", config='host: "-bad"'),
    Row("config-inventory-list", ("deploy", "--config", "{config}"),
        "inventory in {config}: expected one file path, got ['a.yml', 'b.yml']", config="inventory: [a.yml, b.yml]"),
    Row("config-host-number", ("deploy", "--config", "{config}"),
        "host in {config}: expected a host name or a list of host names, got 5", config="host: 5"),
]


@dataclass
class InventoryRow:
    """Host variables in an -i inventory: refused by the role's argument specs or preflight asserts."""

    id: str
    hostvars: dict[str, Any]
    message: str
    code: int = 2
    bug: str = ""
    reachable: bool = True  # False: the host is 127.0.0.1 on a closed port
    hidden: str = ""  # must not appear in the output (a password)
    # A second server and a database host (never contacted: 127.0.0.1 on a closed port), with
    # these variables for all servers and the database host: the whole-inventory checks.
    realm: dict[str, Any] | None = None
    db_vars: dict[str, Any] | None = None
    lb: bool = False  # a load balancer host too (never contacted)


INVENTORY_ROWS: list[InventoryRow] = [
    InventoryRow("inv-port", {"mlflow_port": 70000}, "Invalid role variables. Valid: mlflow_port 1-65535;"),
    InventoryRow("inv-sftp-password", {"mlflow_artifacts_destination": "sftp://u:Hostile-Sftp-Pw@h/p"},
                 "an sftp:// location must not carry a password", hidden="Hostile-Sftp-Pw"),
    InventoryRow("inv-data-dir-traversal", {"mlflow_data_dir": "/var/lib/../../etc"}, "mlflow_data_dir /var/lib/NAME;"),
    InventoryRow("inv-newline-in-hosts", {"mlflow_allowed_hosts": ["a\nExecStartPre=/bin/false"]},
                 "no control characters or newlines in any value"),
    # MLflow's configparser would create the admin with the password stripped: the CLI's copy would not log in.
    InventoryRow("inv-admin-password-padded", {"mlflow_auth_admin_password": " Padded-Admin-Pw-0123 "},
                 "mlflow_auth_admin_password 12+ characters, no space at either end;", hidden="Padded-Admin-Pw-0123"),
    InventoryRow("inv-workers-word", {"mlflow_workers": "many"},
                 "argument 'mlflow_workers' is of type str and we were unable to convert to int"),
    InventoryRow("inv-version-below-floor", {"mlflow_version": "3.13.0"},
                 "mlflow_version 3.13.0 has known server vulnerabilities; use 3.14.0 or newer"),
    InventoryRow("inv-newline-in-install-dir",
                 {"mlflow_install_dir": f"/opt/mlflow\nExecStartPre=/usr/bin/touch {PWNED}"},
                 "no control characters or newlines in any value"),
    InventoryRow("inv-backup-schedule-bogus", {"mlflow_backup_schedule": "bogus"},
                 'mlflow_backup_schedule "bogus" with mlflow_backup_keep 7: '),
    InventoryRow("inv-unreachable", {}, "hostile-inv: UNREACHABLE", code=3, reachable=False),
    # Checked on this machine before any host is contacted (tasks/realms.yml).
    InventoryRow("inv-shared-db-local-artifacts", {},
                 "2 servers (hostile-inv, hostile-inv2) share the database mlflow on hostile-db, but keep "
                 "artifacts on their own disks (hostile-inv: /var/lib/mlflow/artifacts, hostile-inv2: "
                 "/var/lib/mlflow/artifacts): a run logged through one server would have its artifacts on that "
                 "host only.", realm={"mlflow_backend": "postgresql"},
                 db_vars={"mlflow_postgresql_max_connections": 400}),
    InventoryRow("inv-connection-budget", {},
                 "2 server(s) on PostgreSQL mlflow on hostile-db may open 300 connections (hostile-inv: (4 workers "
                 "+ 1) x 3 stores x (5 pool + 5 overflow) = 150; hostile-inv2: (4 workers + 1) x 3 stores x (5 pool "
                 "+ 5 overflow) = 150), but its max_connections 200 leaves 187 (13 kept for superusers, backups and "
                 "maintenance). Set mlflow_postgresql_max_connections to 313 or more",
                 realm={"mlflow_backend": "postgresql", "mlflow_artifacts_destination": "s3://hostile-bucket/mlflow"},
                 db_vars={"mlflow_postgresql_max_connections": 200}),  # explicit: "auto" (default) would fit
    InventoryRow("inv-lb-server-with-tls", {"mlflow_tls": "self-signed"},
                 "Servers behind the load balancers (group mlflow_lb) must not set mlflow_tls (hostile-inv): MLflow "
                 "would listen on 127.0.0.1 only, out of the load balancers' reach.", lb=True),
]


def _params(rows: list[Any]) -> list[Any]:
    return [pytest.param(row, id=row.id, marks=[pytest.mark.xfail(strict=True, reason=row.bug)] if row.bug else [])
            for row in rows]


def _snapshot(vm: VM) -> str:
    return vm.sh("find /etc/mlflow -type f -exec sha256sum {} + | sort -k2; "
                 "sha256sum /etc/systemd/system/mlflow.service; "
                 "systemctl show -p MainPID -p ActiveEnterTimestamp mlflow.service; "
                 f"ls -1 /opt/mlflow/venvs; ls -d {PWNED} 2>/dev/null || true")


@pytest.fixture(scope="module")
def vm(shared_server: VM) -> VM:
    return ensure_deployed(shared_server)


@pytest.fixture(scope="module")
def baseline(vm: VM) -> str:
    Path(PWNED).unlink(missing_ok=True)
    snap = _snapshot(vm)
    assert "MainPID=0" not in snap and "ActiveEnterTimestamp=\n" not in snap, snap
    # mlflow.env, basic_auth.ini (auth is on by default), the archive signing key and the unit,
    # and the proven copies of env, ini and unit plus the name of their venv in
    # /etc/mlflow/previous/ (the rollback target).
    assert snap.count("/etc/") == 8 and snap.count("/etc/mlflow/previous/") == 4 and PWNED not in snap, snap
    assert "/etc/mlflow/backup-signing.key" in snap
    return snap


def _runs() -> set[str]:
    runs = Path(os.environ["MLOPS_PROVISION_HOME"]) / "runs"
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def _clean_env(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_STORAGE_")) and k != "MLFLOW_BACKEND_STORE_URI"}
    return {**env, **dict(extra)}


@pytest.mark.parametrize("row", _params(CLI_ROWS + CONFIG_ROWS + PENDING_ROWS))
def test_refused_on_the_control_node(row: Row, vm: VM, baseline: str, tmp_path: Path) -> None:
    config = tmp_path / "hostile.yml"
    if row.config is not None:
        config.write_text(row.config + "\n")
    args = [a.replace("{vm}", vm.name).replace("{config}", str(config)) for a in row.args]
    runs, start = _runs(), time.monotonic()
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=_clean_env(row.env))
    elapsed, out = time.monotonic() - start, proc.stdout + proc.stderr
    assert _snapshot(vm) == baseline
    assert proc.returncode == row.code, out
    assert row.message.replace("{config}", str(config)) in out
    assert "Traceback" not in out
    assert _runs() == runs, "Ansible ran for input the CLI should refuse"
    assert elapsed < FAST_S, f"{elapsed:.1f} s"
    if row.hidden:
        assert row.hidden not in out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("row", _params(INVENTORY_ROWS))
def test_refused_by_the_role_before_any_change(row: InventoryRow, vm: VM, baseline: str, tmp_path: Path) -> None:
    from mlops_provision.sandbox import machines

    box = machines.load(vm.name)
    assert box is not None
    connection = (box.inventory_vars() if row.reachable else
                  {"ansible_host": "127.0.0.1", "ansible_port": _closed_port(), "ansible_user": "nobody"})
    inventory = tmp_path / "inventory.yml"
    servers: dict[str, Any] = {"hosts": {"hostile-inv": {**connection, **row.hostvars}}}
    groups = {"mlflow_servers": servers}
    if row.realm is not None:
        nowhere = {"ansible_host": "127.0.0.1", "ansible_port": _closed_port(), "ansible_user": "nobody"}
        servers["hosts"]["hostile-inv2"] = nowhere
        servers["vars"] = row.realm
        groups["mlflow_db"] = {"hosts": {"hostile-db": {**nowhere, **(row.db_vars or {})}}}
    if row.lb:
        groups["mlflow_lb"] = {"hosts": {"hostile-lb": {"ansible_host": "127.0.0.1", "ansible_port": _closed_port(),
                                                        "ansible_user": "nobody"}}}
    inventory.write_text(yaml.safe_dump(groups))
    proc = subprocess.run([CLI, "deploy", "-i", str(inventory), "--tags", "mlflow_preflight"],
                          capture_output=True, text=True, timeout=300, env=_clean_env())
    out = proc.stdout + proc.stderr
    assert _snapshot(vm) == baseline
    assert proc.returncode == row.code, out
    assert row.message in out
    assert "changed=0" in out
    if row.hidden:
        assert row.hidden not in out


# ---- values that pass validation, full of shell and systemd metacharacters ----------------

ENV_LINE = re.compile(r'^[A-Z_][A-Z0-9_]*="(?:[^"\\]|\\.)*"$')
USER = "u\"$HOME`id`\\;x=1 'q' %h $(id)"
PASSWORD = "p\"w$HOME`id`\\n;x=1 'q' %h $(touch${IFS}%2Ftmp%2Fpwned-hostile) \\"  # test_deploy's, and more
S3_PATH = f"s3://hostile-bucket/$(touch {PWNED})/`touch {PWNED}`;\"q\"\\$HOME %h ${{PATH}} \\"
EXTRA_ENV = {
    "MLFLOW_HOSTILE_SUBST": f"$(touch {PWNED})",
    "MLFLOW_HOSTILE_TICK": f"`touch {PWNED}`",
    "MLFLOW_HOSTILE_QUOTES": "\"; MLFLOW_PORT=1 \\\" 'x' $$ ${HOME}",
    "MLFLOW_HOSTILE_TRAILING": "ends in a backslash \\",
    "MLFLOW_HOSTILE_SEPARATOR": "line\u2028separator",
}


def _render_cli(*args: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as out:
        proc = cli("render", *args, "--output-dir", out)
        assert proc.returncode == 0, proc.stderr
        return Path(out, "mlflow.env").read_text(), Path(out, "mlflow.service").read_text()


def _render_in_process(flags: dict[str, Any], extra_env: dict[str, str] | None = None) -> tuple[str, str]:
    """The CLI's own render, unmasked (`render` masks passwords), with variables it has no flag for."""
    from mlops_provision.render import render_files
    from mlops_provision.spec import build_spec

    spec = build_spec(flags, None, environ={})
    if extra_env:
        spec.explicit["mlflow_extra_env"] = extra_env
    files = render_files(spec, mask_secrets=False)
    return files["mlflow.env"], files["mlflow.service"]


def _pg_user() -> tuple[str, str, dict[str, str]]:
    env, unit = _render_cli("--backend-store-uri", f"postgresql://{USER}:plainpw99@db:5432/mlflow")
    return (env.replace("********", "plainpw99"), unit,
            {"MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{USER}:plainpw99@db:5432/mlflow"})


def _pg_password() -> tuple[str, str, dict[str, str]]:
    env, unit = _render_in_process({"backend_store_uri": f"postgresql://u:{PASSWORD}@db:5432/mlflow"})
    return env, unit, {"MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://u:{PASSWORD}@db:5432/mlflow"}


def _s3_path() -> tuple[str, str, dict[str, str]]:
    env, unit = _render_cli("--artifacts-destination", S3_PATH)
    return env, unit, {"MLFLOW_ARTIFACTS_DESTINATION": S3_PATH}


def _extra_env() -> tuple[str, str, dict[str, str]]:
    env, unit = _render_in_process({}, EXTRA_ENV)
    return env, unit, EXTRA_ENV


CASES: dict[str, Callable[[], tuple[str, str, dict[str, str]]]] = {
    "pg-user-via-render": _pg_user, "pg-password": _pg_password,
    "s3-path-via-render": _s3_path, "mlflow-extra-env": _extra_env,
}


def _process_env(vm: VM, env_text: str) -> dict[str, str]:
    """Have systemd parse env_text as an EnvironmentFile and return the process's environment."""
    subprocess.run(["podman", "exec", "-i", vm.container, "sh", "-c", "cat > /tmp/hostile.env"],
                   input=env_text, text=True, check=True, timeout=60)
    out = vm.sh("systemd-run --quiet --pipe --wait -p EnvironmentFile=/tmp/hostile.env /usr/bin/env -0")
    pairs = (item.partition("=") for item in out.split("\0") if item)
    return {name: value for name, _, value in pairs}


@pytest.mark.parametrize("case", list(CASES))
def test_metacharacters_reach_the_process_byte_for_byte(case: str, vm: VM, baseline: str) -> None:
    env_text, unit_text, expected = CASES[case]()
    lines = [line for line in env_text.split("\n") if line and not line.startswith("#")]
    assert all(ENV_LINE.match(line) for line in lines), env_text  # one KEY="..." per line
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)) and set(expected) <= set(keys), keys
    assert unit_text == _render_in_process({})[1]  # no value reaches the unit
    assert all(re.match(r"^(\[[A-Za-z]+\]|[A-Za-z]+=.*)$", line) for line in unit_text.split("\n")
               if line and not line.startswith("#"))

    empty = _process_env(vm, "")
    got = _process_env(vm, env_text)
    assert set(got) == set(empty) | set(keys)  # nothing like `x=1` split off a value
    for name, value in expected.items():
        assert got[name] == value, name
    assert vm.sh(f"ls -d {PWNED} 2>/dev/null || true").strip() == ""
    assert not Path(PWNED).exists()
    assert _snapshot(vm) == baseline


def test_render_masks_a_password_with_metacharacters() -> None:
    proc = cli("render", "--backend-store-uri", 'postgresql://u:Sup3r"$ecret@db:5432/mlflow')
    assert proc.returncode == 0, proc.stderr
    assert "Sup3r" not in proc.stdout + proc.stderr
