"""Upgrades that cannot lose data, on one sandbox, in order: MLflow 3.14.0 with real data (runs
with 50-step metrics, an artifact, a registered model, a second user) -> an upgrade killed while
it installs the new release leaves the old server serving, untouched -> an upgrade that fails
after its migration restores the backup and the old release serves the same data -> the real
upgrade killed mid-migration leaves a marker and a stopped server -> the next plain deploy
restores that backup first, migrates once more, and every run, artifact and user is still
there -> a downgrade is refused before anything stops.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import LEAN, VM, cli, deploy_until, experiments_seen_by, read_real_data, write_real_data

pytestmark = pytest.mark.e2e

OLD, NEW = "3.14.0", "3.17.2"
OLD_HEAD, NEW_HEAD = "b7e4c1a90f23", "dc11669786a5"  # the tracking schema heads of OLD and NEW
DATA: dict[str, str] = {}  # what test_old_release_with_real_data wrote, for the later reads


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("upg-e2e", "debian12")


def schema(vm: VM) -> str:
    return vm.sh("python3 -c \"import sqlite3; print(sqlite3.connect('file:/var/lib/mlflow/mlflow.db?mode=ro', "
                 "uri=True).execute('select version_num from alembic_version').fetchone()[0])\"").strip()


def running_version(vm: VM) -> str:
    """The MLflow release of the process systemd runs (its venv's), not of any file on disk."""
    return vm.sh("pid=$(systemctl show -p MainPID --value mlflow.service);"
                 " venv=$(dirname $(dirname $(tr '\\0' '\\n' < /proc/$pid/cmdline | head -1)));"
                 " $venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"mlflow\"))'").strip()


def read_back(vm: VM, tmp: str) -> dict[str, object]:
    return read_real_data(vm, DATA["run_id"], tmp)


def test_old_release_with_real_data(vm: VM) -> None:
    proc = cli("deploy", "--host", vm.name, *LEAN, "--mlflow-version", OLD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert running_version(vm) == OLD and schema(vm) == OLD_HEAD
    DATA.update(write_real_data(vm, "upgrade"))


def test_an_upgrade_killed_while_installing_the_new_release_leaves_the_old_server_serving(
        vm: VM, tmp_path: Path) -> None:
    """SIGKILL to the whole CLI a few seconds into the new release's venv install (unpacking or
    installing the pushed wheelhouse): the old server must not notice. The next plain upgrade
    (the test after this one) waits for the orphaned install, if any, and starts it again clean."""
    pid, started = vm.main_pid(), vm.sh("systemctl show -p ExecMainStartTimestampMonotonic --value mlflow.service")
    venv_before = vm.sh("readlink /opt/mlflow/current").strip()
    install = r"Install \| Install MLflow and the store clients from the wheelhouse into the venv"
    rc, _, err, _ = deploy_until(vm, install, signal.SIGKILL, *LEAN, "--mlflow-version", NEW, delay=4)
    assert rc == -signal.SIGKILL, err
    # The same process of the old release, started at the same moment, serves the same data.
    assert vm.main_pid() == pid
    assert vm.sh("systemctl show -p ExecMainStartTimestampMonotonic --value mlflow.service") == started
    assert vm.sh("readlink /opt/mlflow/current").strip() == venv_before
    assert running_version(vm) == OLD and schema(vm) == OLD_HEAD
    assert cli("health", "--host", vm.name).returncode == 0
    back = read_back(vm, str(tmp_path))
    assert back["steps"] == list(range(50)) and back["artifact"] == DATA["artifact"] and back["runs"] == 5


def test_an_upgrade_that_fails_after_its_migration_restores_the_backup(vm: VM, tmp_path: Path) -> None:
    env_before = vm.digest("/etc/mlflow/mlflow.env")
    venv_before = vm.sh("readlink /opt/mlflow/current").strip()
    # A value only the new server rejects at its start (the deploy cannot catch it earlier): the
    # migration has run by then, and the new release's venv is built and about to be switched to.
    broken = json.dumps({"mlflow_extra_env": {"MLFLOW_WORKERS": "many"},
                         "mlflow_health_retries": 7, "mlflow_health_delay": 2})
    # 14 s: long enough for a loaded machine's first failed start to print its error, shorter
    # than systemd's five starts before it gives up (the other way verify ends).
    proc = cli("deploy", "--host", vm.name, *LEAN, "--mlflow-version", NEW, "-e", broken)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"mlflow.service did not answer http://127.0.0.1:5000/health within 14 s on {vm.name}." in out
    assert "The databases were restored from /var/backups/mlflow/pre-upgrade-" in out
    assert "and hold the same data as before this deploy." in out
    assert "Rolled back: the previous configuration and venv serve again (/health OK)." in out
    assert "'many' is not a valid integer" in out  # the real cause, from the new server's journal
    # The previous server runs again with its own files and venv, and answers from outside.
    assert vm.digest("/etc/mlflow/mlflow.env") == env_before
    assert vm.sh("readlink /opt/mlflow/current").strip() == venv_before
    assert cli("health", "--host", vm.name).returncode == 0
    # The old release serves the old schema and every row, run and artifact of before.
    assert running_version(vm) == OLD and schema(vm) == OLD_HEAD
    back = read_back(vm, str(tmp_path))
    assert back["steps"] == list(range(50)) and back["artifact"] == DATA["artifact"]
    assert back["models"] == ["upgrade-model"] and back["runs"] == 5


MARKER = "/var/backups/mlflow/migration-in-progress.json"


def test_an_upgrade_killed_mid_migration_leaves_its_marker_and_a_stopped_server(vm: VM) -> None:
    """The worst moment: the server stopped, the backup taken, the migration started. SIGKILL
    to the whole CLI (a dead laptop) stops the controller and the SSH session that ran it."""
    rc, _, err, _ = deploy_until(vm, r"Upgrade \| Migrate the schema", signal.SIGKILL, *LEAN, "--mlflow-version", NEW)
    assert rc == -signal.SIGKILL, err
    time.sleep(3)  # whatever still ran on the host ends with its session
    marker = json.loads(vm.sh(f"cat {MARKER}"))
    assert marker["from"] == OLD and marker["to"] == NEW
    assert marker["backup"].startswith("/var/backups/mlflow/pre-upgrade-")
    assert vm.sh(f"cat {marker['backup']}/manifest.json")  # the backup is complete, under its own name
    assert vm.sh("systemctl is-active mlflow.service", check=False).strip() != "active"
    DATA["killed_backup"] = marker["backup"]


def test_the_upgrade_migrates_once_with_a_backup_and_keeps_every_run(vm: VM, tmp_path: Path) -> None:
    proc = cli("deploy", "--host", vm.name, *LEAN, "--mlflow-version", NEW)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The next plain run restored the killed run's backup before anything else, then migrated
    # again from that known state.
    assert (f"  recovered  an earlier deploy was killed mid-migration: restored its backup "
            f"{DATA['killed_backup']} first") in out
    assert vm.sh(f"ls {MARKER} 2>/dev/null || true").strip() == ""
    backup = re.search(rf"  schema     migrated tracking {OLD_HEAD} → {NEW_HEAD} "
                       rf"\(backup: (/var/backups/mlflow/pre-upgrade-\S+-{OLD}-to-{NEW})\)", out)
    assert backup, out
    assert running_version(vm) == NEW and schema(vm) == NEW_HEAD
    # The backup on the host is a consistent copy of the old schema, readable by root only.
    manifest = json.loads(vm.sh(f"cat {backup.group(1)}/manifest.json"))
    assert manifest["databases"]["tracking"]["revision"] == OLD_HEAD
    assert manifest["databases"]["tracking"]["counts"]["runs"] == 5
    assert vm.sh(f"stat -c '%a %U' {backup.group(1)}").strip() == "700 root"
    assert vm.sh(f"python3 -c \"import sqlite3; print(sqlite3.connect('{backup.group(1)}/mlflow.db')"
                 ".execute('PRAGMA integrity_check').fetchone()[0])\"").strip() == "ok"
    back = read_back(vm, str(tmp_path))
    assert back["steps"] == list(range(50)) and back["last"] == pytest.approx(1.0 / 50)
    assert back["artifact"] == DATA["artifact"] and back["models"] == ["upgrade-model"] and back["runs"] == 5
    assert experiments_seen_by(vm, "bob", DATA["bob"]) >= 1
    proc = cli("deploy", "--host", vm.name, *LEAN)  # migrated once: the next deploy neither migrates nor restarts
    assert proc.returncode == 0 and "  schema " not in proc.stdout and "restarted" not in proc.stdout, proc.stdout
    # Nothing is left of the killed install's wheelhouse: the two releases' venvs and nothing else.
    assert vm.sh("ls /opt/mlflow").split() == ["current", "tools", "venvs"]
    assert len(vm.sh("ls /opt/mlflow/venvs").split()) == 2


def test_a_downgrade_is_refused_before_anything_stops(vm: VM) -> None:
    pid = vm.main_pid()
    proc = cli("deploy", "--host", vm.name, *LEAN, "--mlflow-version", OLD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"mlflow_version {OLD} cannot serve this server's data: the tracking database is at schema" in out
    assert f"revision {NEW_HEAD}, which MLflow {OLD} does not know (its head is {OLD_HEAD})" in out
    assert "MLflow does not migrate a schema down." in out and f"({NEW} runs now)" in out
    assert vm.main_pid() == pid and running_version(vm) == NEW
