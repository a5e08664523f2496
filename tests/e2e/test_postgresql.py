"""PostgreSQL backend end to end: a project-managed database on the VM, runs and a registered
model through the real client, rows in PostgreSQL, the upgrade from an older release (pg_dump
backup, one migration, the data read back), no more connections under load than the budget
counts, backup and restore, a password that never leaks, a preflight that refuses bad
credentials while the old server keeps serving, vault-encrypted secrets.

The tests run in order against one sandbox and build on each other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.conftest import VM, admin_env, cli, mlflow_client, places_where_secrets_must_not_be

pytestmark = pytest.mark.e2e
# 2 workers, not conftest.LEAN: the connection-budget test counts two processes' pools.
TWO_WORKERS = ("--workers", "2")
OUTPUTS: list[str] = []  # every CLI output of this module, checked for the password at the end


def deploy(vm: VM, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli("deploy", "--host", vm.name, *TWO_WORKERS, *args)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def password(vm: VM) -> str:
    state = Path(os.environ["MLOPS_PROVISION_HOME"])
    return (state / "secrets" / f"postgresql-{vm.name}.password").read_text().split(" salt=")[0].strip()


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-pg", "debian12")


# The first deploy installs an older release, so that the pinned one's deploy below is an
# upgrade on PostgreSQL: pg_dump backup, explicit migration, counts compared.
OLD, OLD_HEAD, NEW_HEAD = "3.14.0", "b7e4c1a90f23", "dc11669786a5"


def test_deploy_with_a_local_postgresql(vm: VM) -> None:
    proc = deploy(vm, "--backend", "postgresql", "--mlflow-version", OLD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend    postgresql://mlflow:***@127.0.0.1:5432/mlflow" in proc.stdout
    assert "health     OK" in proc.stdout
    secret = Path(os.environ["MLOPS_PROVISION_HOME"]) / "secrets" / f"postgresql-{vm.name}.password"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password(vm))
    # PostgreSQL listens on loopback only and admits TCP logins by scram-sha-256.
    listening = vm.sh("ss -Hltn 'sport = :5432'")
    assert "127.0.0.1:5432" in listening and "0.0.0.0:5432" not in listening
    assert vm.sh("runuser -u postgres -- psql -tAc 'SHOW password_encryption'").strip() == "scram-sha-256"


def test_runs_and_a_registered_model_land_in_postgresql(vm: VM) -> None:
    result = mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
mlflow.set_experiment("pg-e2e")
with mlflow.start_run() as run:
    mlflow.log_param("layers", "3")
    mlflow.log_metric("loss", 0.125)
client = MlflowClient()
client.create_registered_model("pg-model")
version = client.create_model_version("pg-model", f"runs:/{{run.info.run_id}}/model", run.info.run_id)
got = client.get_model_version("pg-model", version.version)
metrics = client.get_run(run.info.run_id).data.metrics
print(json.dumps({{"run_id": run.info.run_id, "version": got.version, "metrics": metrics}}))
""", admin_env(vm))
    assert result["metrics"] == {"loss": 0.125}
    assert str(result["version"]) == "1"
    sql = ("SELECT (SELECT count(*) FROM runs WHERE run_uuid = '{0}') || ' ' || "
           "(SELECT count(*) FROM metrics WHERE run_uuid = '{0}' AND key = 'loss') || ' ' || "
           "(SELECT count(*) FROM model_versions WHERE name = 'pg-model')").format(result["run_id"])
    assert vm.sh(f'runuser -u postgres -- psql -d mlflow -tAc "{sql}"').strip() == "1 1 1"


def test_the_upgrade_to_the_pinned_release_migrates_postgresql_after_a_pg_dump(vm: VM) -> None:
    proc = deploy(vm, "--backend", "postgresql")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    backup = re.search(rf"  schema     migrated tracking {OLD_HEAD} → {NEW_HEAD}(?:\n.*)*? "
                       rf"\(backup: (/var/backups/mlflow/pre-upgrade-\S+-{OLD}-to-\S+)\)", out)
    assert backup, out
    manifest = json.loads(vm.sh(f"cat {backup.group(1)}/manifest.json"))
    assert list(manifest["files"]) == ["mlflow.pgdump"]  # one dump holds the tracking and user tables
    assert manifest["databases"]["tracking"] == {"revision": OLD_HEAD, "counts": {
        "experiments": 2, "runs": 1, "metrics": 1, "params": 1, "registered_models": 1, "model_versions": 1,
        "trace_info": 0, "logged_models": 0}}
    assert vm.sh(f"stat -c '%a %U' {backup.group(1)}/mlflow.pgdump").strip() == "600 root"
    assert vm.sh("runuser -u postgres -- psql -d mlflow -tAc 'SELECT version_num FROM alembic_version'"
                 ).strip() == NEW_HEAD
    assert _model_versions(vm) == "1"
    got = mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
runs = mlflow.search_runs(experiment_names=["pg-e2e"], output_format="list")
print(json.dumps({{"version": MlflowClient().get_model_version("pg-model", "1").version,
                  "metrics": [r.data.metrics for r in runs]}}))
""", admin_env(vm))  # the admin logs in: the user tables came through the migration too
    assert got == {"version": "1", "metrics": [{"loss": 0.125}]}


def _model_versions(vm: VM) -> str:
    return vm.sh("runuser -u postgres -- psql -d mlflow -tAc "
                 "\"SELECT count(*) FROM model_versions WHERE name = 'pg-model'\"").strip()


def test_backup_and_restore_force_of_a_postgresql_server(vm: VM, tmp_path: Path) -> None:
    proc = cli("backup", "--host", vm.name, "--output", str(tmp_path))
    OUTPUTS.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archive = re.search(r"  archive    (\S+\.tar\.gz) ", proc.stdout).group(1)  # type: ignore[union-attr]
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["backend"] == "postgresql" and "db/mlflow.pgdump" in manifest["files"]
    assert manifest["databases"]["tracking"]["counts"]["model_versions"] == 1
    assert manifest["databases"]["auth"]["counts"]["users"] == 1
    # An accident: the model and its version are deleted; restore --force brings both back.
    mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
MlflowClient().delete_registered_model("pg-model")
print(json.dumps({{}}))
""", admin_env(vm))
    assert _model_versions(vm) == "0"
    proc = cli("restore", "--host", vm.name, *TWO_WORKERS, "--from", archive, "--force", "--backend", "postgresql")
    OUTPUTS.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  restored   2 experiments, 1 runs, 1 registered models, 1 users, 0 artifact files (0.0 MB); " \
        f"taken on {vm.name} at " in proc.stdout
    assert "             the databases it replaced: /var/backups/mlflow/pre-restore-" in proc.stdout
    assert _model_versions(vm) == "1"


def test_under_load_the_server_holds_no_more_connections_than_the_budget_counts(vm: VM) -> None:
    """The connection budget (tasks/realms.yml, mlflow_derive.server_connections) is a hard
    bound only if MLflow never opens more: 24 writers at once, the peak sampled meanwhile."""
    budget = 3 * 3 * (5 + 5)  # (2 workers + 1) x 3 stores x (pool 5 + overflow 5)
    count = "runuser -u postgres -- psql -tAc \"SELECT count(*) FROM pg_stat_activity WHERE usename = 'mlflow'\""
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], int(vm.sh(count).strip()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = mlflow_client(f"""
import json, mlflow
from concurrent.futures import ThreadPoolExecutor
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
client = MlflowClient({vm.url!r})
exp = client.create_experiment("pg-budget")
def work(i):
    run = client.create_run(exp).info.run_id
    for step in range(15):
        client.log_batch(run, metrics=[Metric(f"m{{k}}", 0.5, 0, step) for k in range(10)])
        client.search_runs([exp], max_results=5)
    return run
with ThreadPoolExecutor(24) as pool:
    runs = list(pool.map(work, range(24)))
print(json.dumps({{"steps": sum(len(client.get_metric_history(r, "m0")) for r in runs)}}))
""", admin_env(vm))
    finally:
        done.set()
        sampler.join()
    assert result["steps"] == 24 * 15
    assert 0 < peak[0] <= budget, peak[0]


def test_redeploy_changes_nothing(vm: VM) -> None:
    pid = vm.main_pid()
    proc = deploy(vm, "--backend", "postgresql")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed=0 failed=0" in proc.stdout, proc.stdout
    assert vm.main_pid() == pid


def test_verbose_ansible_output_does_not_show_the_password(vm: VM) -> None:
    proc = deploy(vm, "--backend", "postgresql", "-vvv")
    assert proc.returncode == 0
    assert "PLAY RECAP" in proc.stdout  # -v really shows Ansible's own output


def test_switching_back_to_sqlite_is_refused_without_force(vm: VM) -> None:
    pid = vm.main_pid()
    proc = deploy(vm)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"{vm.name} keeps its runs in postgresql://127.0.0.1:5432/mlflow; this deploy would switch the "
            "server to sqlite:////var/lib/mlflow/mlflow.db and leave them behind") in proc.stdout
    assert vm.main_pid() == pid


@pytest.mark.parametrize(("uri", "reason"), [
    ("postgresql://mlflow:wrong-password@127.0.0.1:5432/mlflow", "password authentication failed for user"),
    ("postgresql://mlflow:x@127.0.0.1:5999/mlflow", "Connection refused"),
    ("postgresql://mlflow:{password}@127.0.0.1:5432/nosuchdb", 'database "nosuchdb" does not exist'),
])
def test_bad_credentials_fail_preflight_and_the_old_server_keeps_serving(vm: VM, uri: str, reason: str) -> None:
    uri = uri.format(password=password(vm))
    pid, env = vm.main_pid(), vm.digest("/etc/mlflow/mlflow.env")
    proc = deploy(vm, "--backend-store-uri", uri, "--force")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    endpoint = re.search(r"@([^/]+)/", uri).group(1)  # type: ignore[union-attr]
    assert f"cannot connect to PostgreSQL at {endpoint} as mlflow:" in proc.stdout
    assert reason in proc.stdout + proc.stderr
    assert vm.main_pid() == pid and vm.digest("/etc/mlflow/mlflow.env") == env
    assert cli("health", "--host", vm.name).returncode == 0


def test_external_uri_from_the_controller_environment(vm: VM) -> None:
    """The same database given as an external URI: nothing but the env file's form changes."""
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow:{password(vm)}@127.0.0.1:5432/mlflow"}
    proc = subprocess.run([CLI, "deploy", "--host", vm.name, *TWO_WORKERS], capture_output=True, text=True, env=env,
                          timeout=900)
    OUTPUTS.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend    postgresql://mlflow:***@127.0.0.1:5432/mlflow" in proc.stdout


def test_the_password_never_leaks(vm: VM) -> None:
    secret = password(vm)
    assert secret in vm.sh("cat /etc/mlflow/mlflow.env")  # it is there, where it belongs
    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    assert [name for name, text in places.items() if secret in text] == []


def test_vault_encrypts_the_secrets_and_keeps_the_password(vm: VM, tmp_path: Path) -> None:
    state = Path(os.environ["MLOPS_PROVISION_HOME"])
    before = password(vm)
    vault_pass = tmp_path / "vault-pass"
    vault_pass.write_text("correct horse battery staple\n")
    proc = deploy(vm, "--backend", "postgresql", "--vault-password-file", str(vault_pass))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed=0" in proc.stdout  # the same password, taken from the vault
    assert not (state / "secrets" / f"postgresql-{vm.name}.password").exists()
    vault = (state / "secrets.vault").read_text()
    assert vault.startswith("$ANSIBLE_VAULT;1.1;AES256") and before not in vault
    assert (state / "secrets.vault").stat().st_mode & 0o777 == 0o600

    proc = deploy(vm, "--backend", "postgresql")
    assert proc.returncode == 2
    assert "are vault-encrypted: pass --vault-password-file FILE or --ask-vault-pass" in proc.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    proc = deploy(vm, "--backend", "postgresql", "--vault-password-file", str(wrong))
    assert proc.returncode == 2
    assert "the password does not open" in proc.stderr


def test_registry_in_a_separate_store(vm: VM, tmp_path: Path) -> None:
    vault_pass = tmp_path / "vault-pass"
    vault_pass.write_text("correct horse battery staple\n")
    proc = deploy(vm, "--backend", "postgresql", "--registry-store-uri", "sqlite:////var/lib/mlflow/registry.db",
                  "--vault-password-file", str(vault_pass))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
with mlflow.start_run() as run:
    mlflow.log_metric("acc", 0.5)
client = MlflowClient()
client.create_registered_model("sqlite-registry-model")
v = client.create_model_version("sqlite-registry-model", f"runs:/{{run.info.run_id}}/m", run.info.run_id)
print(json.dumps({{"version": v.version, "names": [m.name for m in client.search_registered_models()]}}))
""", admin_env(vm, "--vault-password-file", str(vault_pass)))
    assert result["names"] == ["sqlite-registry-model"]  # pg-model lives in the other store
    tables = vm.sh("runuser -u postgres -- psql -d mlflow -tAc "
                   "\"SELECT count(*) FROM registered_models WHERE name = 'sqlite-registry-model'\"")
    assert tables.strip() == "0"
    assert vm.sh("test -s /var/lib/mlflow/registry.db && echo yes").strip() == "yes"
