"""Backup and restore, on two sandboxes, in order: a server with real data (runs with a metric
history, an artifact, a registered model, a second user) and a backup timer -> `backup` copies
one checked archive here, and the timer's service keeps the newest two on the host -> a damaged
archive, and a restore over data without --force, are refused with nothing changed -> after an
accident (the model deleted, the user removed) `restore --force` from the newest scheduled
backup brings both back -> a fresh second host restored from the archive here serves the same
data to the same users -> a restore killed after unpacking (its server never proven) is undone
by the next plain deploy, which also removes the timer and keeps the archives. On a third
sandbox, a server installed by hand (the classic runbook) is named by a deploy that finds it on
the port, and `restore --from-sqlite` adopts its runs, model and artifacts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.hand_install import install_and_start

from tests.conftest import BIN, CLI, wait_until_none_with_env
from tests.e2e.conftest import (
    LEAN,
    VM,
    admin_env,
    cli,
    deploy_until,
    experiments_seen_by,
    mlflow_client,
    read_real_data,
    write_real_data,
)

pytestmark = pytest.mark.e2e

DATA: dict[str, str] = {}  # what the first test wrote and where its archive is


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("bak-e2e", "debian12")


@pytest.fixture(scope="module")
def fresh_vm() -> Iterator[VM]:
    yield from VM.up("bak-e2e-2", "debian12")


@pytest.fixture(scope="module")
def hand_vm() -> Iterator[VM]:
    yield from VM.up("bak-e2e-3", "debian12")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archives")


def _delete_the_model(vm: VM) -> None:
    """An accident: the registered model is deleted (its rows are gone, not marked)."""
    mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
MlflowClient().delete_registered_model("backup-model")
print(json.dumps({{}}))
""", admin_env(vm))
    assert _models(vm) == []


def _models(vm: VM) -> list[str]:
    return list(mlflow_client(f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
print(json.dumps({{"models": [m.name for m in MlflowClient().search_registered_models()]}}))
""", admin_env(vm))["models"])  # type: ignore[call-overload]


def _outgoing_on_host(vm: VM) -> list[str]:
    return vm.sh("ls -d /var/tmp/mlops-provision-backup-* 2>/dev/null || true").split()


SCHEDULE = (*LEAN, "--backup-schedule", "daily", "--backup-keep", "2")

# Eight threads, each its own client, log a metric step after step until terminated.
WRITERS = """\
import sys, threading, time, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
def write(n):
    client = MlflowClient()
    for step in range(100_000):
        client.log_metric(sys.argv[2], f"writer-{n}", float(step), step=step)
threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(8)]
for t in threads:
    t.start()
time.sleep(2)
print("writing", flush=True)
time.sleep(600)
"""


def test_a_server_with_data_backs_up_to_one_checked_archive(vm: VM, archives: Path, tmp_path: Path) -> None:
    proc = cli("deploy", "--host", vm.name, *SCHEDULE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    DATA.update(write_real_data(vm, "backup"))
    # Eight clients keep writing metrics to that run while the backup copies the database.
    writers = subprocess.Popen([str(BIN / "python"), "-c", WRITERS, vm.url, DATA["run_id"]],
                               env={**os.environ, **admin_env(vm)}, stdout=subprocess.PIPE, text=True)
    assert writers.stdout is not None and writers.stdout.readline().strip() == "writing"
    proc = cli("backup", "--host", vm.name, "--output", str(archives))
    writers.terminate()
    writers.wait(timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{vm.name}: backed up" in out
    found = re.search(r"  archive    (\S+/mlflow-backup-bak-e2e-\d{8}T\d{6}Z\.tar\.gz) \([\d.]+ MB, checksums "
                      r"checked here\)", out)
    assert found, out
    DATA["archive"] = found.group(1)
    assert "  holds      2 experiments, 5 runs, 1 registered models, 2 users, 1 artifact files (0.5 MB)" in out
    assert f"  restore    mlops-provision restore --host {vm.name} --from {DATA['archive']}" in out
    with tarfile.open(DATA["archive"]) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        env_text = tar.extractfile("config/mlflow.env").read().decode()  # type: ignore[union-attr]
    assert manifest["databases"]["tracking"]["counts"]["runs"] == 5
    assert manifest["databases"]["auth"]["counts"]["users"] == 2
    assert (manifest["host"], manifest["mlflow_version"], manifest["backend"]) == (vm.name, "3.17.2", "sqlite")
    assert [name for name in manifest["files"] if name.startswith("artifacts/")] == [
        f"artifacts/1/{DATA['run_id']}/artifacts/data/blob.bin"]
    # Secrets stay out: the env file's CSRF key is masked, the admin password is nowhere.
    password = admin_env(vm)["MLFLOW_TRACKING_PASSWORD"]
    secret_key = vm.sh("grep MLFLOW_FLASK_SERVER_SECRET_KEY /etc/mlflow/mlflow.env").split('"')[1]
    assert 'MLFLOW_FLASK_SERVER_SECRET_KEY="********"' in env_text
    assert password not in out and secret_key not in env_text
    # Nothing is left on the host: the archive was written there once, fetched, removed.
    assert _outgoing_on_host(vm) == []
    # The copy taken under those writes is a consistent database, with some of their rows.
    with tarfile.open(DATA["archive"]) as tar:
        tar.extract("db/mlflow.db", tmp_path, filter="data")
    with sqlite3.connect(tmp_path / "db" / "mlflow.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = conn.execute("SELECT COUNT(*) FROM metrics WHERE key LIKE 'writer-%'").fetchone()[0]
        in_copy = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    assert written > 0 and manifest["databases"]["tracking"]["counts"]["metrics"] == in_copy


def test_a_damaged_archive_is_refused_with_nothing_changed(vm: VM, archives: Path) -> None:
    pid = vm.main_pid()
    damaged = archives / "damaged.tar.gz"
    damaged.write_bytes(Path(DATA["archive"]).read_bytes()[:-4096])  # a copy cut short
    proc = cli("restore", "--host", vm.name, *LEAN, "--from", str(damaged), "--force")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: --from: {damaged} fails its check: " in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert vm.main_pid() == pid


def _tampered(archive: Path, target: Path, member: str) -> None:
    """What someone who can write the archive but has no key makes of it: a member the manifest
    lists with its true SHA-256, the signature left as it was."""
    import hashlib
    import io

    payload = b"* * * * * root touch /tmp/OWNED\n"
    with tarfile.open(archive) as src, tarfile.open(target, "w:gz") as dst:
        for item in src:
            data = src.extractfile(item).read()  # type: ignore[union-attr]
            if item.name == "manifest.json":
                manifest = json.loads(data)
                manifest["files"][member] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
                extra = tarfile.TarInfo(member)
                extra.size = len(payload)
                dst.addfile(extra, io.BytesIO(payload))
                data = json.dumps(manifest).encode()
            item.size = len(data)
            dst.addfile(item, io.BytesIO(data))


@pytest.mark.parametrize("member", ["db//etc/cron.d/mlops-owned", "artifacts//root/mlops-owned"])
def test_a_tampered_archive_is_refused_and_writes_nothing(vm: VM, archives: Path, member: str) -> None:
    pid = vm.main_pid()
    bad = archives / "tampered.tar.gz"
    _tampered(Path(DATA["archive"]), bad, member)
    proc = cli("restore", "--host", vm.name, *LEAN, "--from", str(bad), "--force")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: --from: {bad} fails its check: the archive's signature does not verify with this control " \
           "node's backup signing key (key id " in proc.stderr
    # Even when the operator vouches for it, the member's name is refused before anything runs.
    proc = cli("restore", "--host", vm.name, *LEAN, "--from", str(bad), "--force", "--accept-unverified-archive")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"the archive holds a member named {member!r}, which is not a path this tool writes" in proc.stderr
    assert vm.sh("ls /etc/cron.d/mlops-owned /root/mlops-owned /tmp/OWNED 2>/dev/null || true").strip() == ""
    assert vm.main_pid() == pid


def test_a_restore_over_data_needs_force(vm: VM) -> None:
    pid = vm.main_pid()
    proc = cli("restore", "--host", vm.name, *SCHEDULE, "--from", DATA["archive"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert (f"{vm.name} holds data (1 experiments besides the Default one, 5 runs, 1 registered models, "
            "1 users besides the admin) that the restore of ") in out
    assert "add --force to replace it" in out
    assert vm.main_pid() == pid


def test_the_timer_keeps_the_newest_scheduled_backups_and_lists_them(vm: VM) -> None:
    assert vm.sh("systemctl is-enabled mlflow-backup.timer").strip() == "enabled"
    assert "OnCalendar=*-*-* 00:00:00" in vm.sh("systemctl show -p TimersCalendar --value mlflow-backup.timer")
    for _ in range(3):  # what the timer starts, three times (names differ by the second)
        vm.sh("sleep 1; systemctl start mlflow-backup.service")
    proc = cli("backup", "list", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{vm.name}: 2 scheduled backups in /var/backups/mlflow/scheduled; schedule: " in proc.stdout
    names = re.findall(r"^  (mlflow-backup-bak-e2e-\d{8}T\d{6}Z\.tar\.gz) +[\d.]+ MB  3\.17\.2 +5  ", proc.stdout,
                       re.MULTILINE)
    assert len(names) == 2 and names == sorted(names, reverse=True), proc.stdout
    assert vm.sh("stat -c '%a %U' /var/backups/mlflow/scheduled").strip() == "700 root"
    DATA["scheduled"] = names[0]


def test_restore_force_from_a_scheduled_backup_brings_back_what_an_accident_removed(vm: VM,
                                                                                   tmp_path: Path) -> None:
    _delete_the_model(vm)
    assert cli("user", "remove", "--host", vm.name, "bob").returncode == 0
    proc = cli("restore", "--host", vm.name, "--from", f"@{DATA['scheduled']}", "--force", *SCHEDULE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"  restored   2 experiments, 5 runs, 1 registered models, 2 users, 1 artifact files "
                     rf"\(0\.5 MB\); taken on {vm.name} at \S+", out), out
    assert "             the databases it replaced: /var/backups/mlflow/pre-restore-" in out
    assert "             the artifacts it replaced: /var/lib/mlflow/artifacts.replaced-" in out
    back = read_real_data(vm, DATA["run_id"], str(tmp_path))
    assert back["steps"] == list(range(50)) and back["artifact"] == DATA["artifact"]
    assert back["models"] == ["backup-model"] and back["runs"] == 5
    assert experiments_seen_by(vm, "bob", DATA["bob"]) >= 1


def test_a_fresh_host_restored_from_the_archive_serves_the_same_data_and_users(fresh_vm: VM,
                                                                              tmp_path: Path) -> None:
    proc = cli("restore", "--host", fresh_vm.name, *LEAN, "--from", DATA["archive"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{fresh_vm.name}: deployed" in out and "  health     OK" in out
    back = read_real_data(fresh_vm, DATA["run_id"], str(tmp_path))
    assert back["steps"] == list(range(50)) and back["artifact"] == DATA["artifact"]
    assert back["models"] == ["backup-model"] and back["runs"] == 5
    # The admin logs in with the new host's own password (the one this machine keeps for it),
    # never one an archive chose; bob logs in as before with his.
    fresh_password = admin_env(fresh_vm)["MLFLOW_TRACKING_PASSWORD"]
    assert fresh_password != admin_env(VM("bak-e2e", "debian12"))["MLFLOW_TRACKING_PASSWORD"]
    assert f"admin_password = {fresh_password}" in fresh_vm.sh("cat /etc/mlflow/basic_auth.ini")
    assert experiments_seen_by(fresh_vm, "bob", DATA["bob"]) >= 1


def test_a_restore_killed_after_unpacking_leaves_the_old_server_stopped_and_marked(vm: VM) -> None:
    _delete_the_model(vm)  # the data before this restore differs from the archive's: no model
    rc, _, err, _ = deploy_until(vm, r"Restore \| Check the unpacking", signal.SIGKILL, *SCHEDULE,
                                 "--from", DATA["archive"], "--force", verb="restore")
    assert rc == -signal.SIGKILL, err[-2000:]
    # The archive's data is in place but its server was never proven: the marker stays.
    marker = json.loads(vm.sh("cat /var/backups/mlflow/restore-in-progress.json"))
    assert (marker["kind"], marker["archive"]) == ("restore", Path(DATA["archive"]).name)
    assert vm.sh(f"ls -d /var/lib/mlflow/artifacts.replaced-{marker['stamp']}").strip()
    assert vm.sh("systemctl is-active mlflow.service", check=False).strip() == "inactive"
    DATA["stamp"] = marker["stamp"]


def test_the_next_plain_deploy_puts_back_the_data_from_before_the_killed_restore(vm: VM, tmp_path: Path) -> None:
    # Without a schedule: the same deploy removes the timer and keeps the archives.
    proc = cli("deploy", "--host", vm.name, *LEAN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(rf"  recovered  a restore of {re.escape(Path(DATA['archive']).name)} did not finish: the "
                     r"data from before it is back \(databases: /var/backups/mlflow/pre-restore-\S+; "
                     r"artifacts: /var/lib/mlflow/artifacts\)", out), out
    assert _models(vm) == []  # as before the restore, not as in the archive
    back = read_real_data(vm, DATA["run_id"], str(tmp_path))
    assert back["steps"] == list(range(50)) and back["artifact"] == DATA["artifact"]
    assert experiments_seen_by(vm, "bob", DATA["bob"]) >= 1
    left = vm.sh(f"ls -a /var/backups/mlflow /var/lib/mlflow | grep -e in-progress -e incoming- "
                 f"-e {DATA['stamp']} || true")
    assert left.strip() == ""  # no marker, pushed archive, staged or replaced directory
    assert vm.sh("systemctl list-unit-files mlflow-backup.timer --no-legend", check=False).strip() == ""
    assert len(vm.sh("ls /var/backups/mlflow/scheduled/*.tar.gz").split()) == 2


# Logged on the host, as the runbook's users do: the client writes artifacts into ./mlruns itself.
HAND_LOG = """\
import hashlib, json, os, mlflow
mlflow.set_tracking_uri("http://127.0.0.1:5000")
mlflow.set_experiment("handmade")
with mlflow.start_run() as run:
    mlflow.log_param("alpha", "0.5")
    for step in range(10):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    with open("/tmp/weights.bin", "wb") as out:
        out.write(os.urandom(100_000))
    mlflow.log_artifact("/tmp/weights.bin")
client = mlflow.tracking.MlflowClient()
client.create_registered_model("hand-model")
client.create_model_version("hand-model", run.info.artifact_uri + "/weights.bin", run.info.run_id)
print(json.dumps({"run_id": run.info.run_id,
                  "artifact": hashlib.sha256(open("/tmp/weights.bin", "rb").read()).hexdigest()}))
"""

HAND_READ = """\
import hashlib, json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({url!r})
client = MlflowClient()
run = client.get_run({run_id!r})
path = client.download_artifacts(run.info.run_id, "weights.bin", {dst!r})
print(json.dumps({{
    "alpha": run.data.params.get("alpha"),
    "steps": [m.step for m in client.get_metric_history(run.info.run_id, "loss")],
    "artifact_uri": run.info.artifact_uri,
    "artifact": hashlib.sha256(open(path, "rb").read()).hexdigest(),
    "models": [m.name for m in client.search_registered_models()],
}}))
"""


def test_a_deploy_names_a_server_installed_by_hand_and_the_way_to_adopt_it(hand_vm: VM) -> None:
    from mlops_provision import paths

    # The classic runbook: `mlflow server --backend-store-uri sqlite:///mlflow.db
    # --default-artifact-root ./mlruns` as a login user, from its home directory.
    install_and_start(hand_vm.container, paths.cache_dir(), "--default-artifact-root ./mlruns")
    out = hand_vm.sh(f"cd /home/op && runuser -u op -- /home/op/venv/bin/python -c '{HAND_LOG}'")
    DATA.update({"hand_" + k: v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
    DATA["hand_db"] = hand_vm.digest("/home/op/mlflow.db")
    proc = cli("deploy", "--host", hand_vm.name, *LEAN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"Port 5000 on {hand_vm.name} is taken by an MLflow server started outside this tool: " in out
    assert "user op: /home/op/venv/" in out  # its command line
    assert ("It serves the backend store sqlite:////home/op/mlflow.db and the artifacts in /home/op/mlruns. "
            in out), out
    assert (f"To move its runs into this managed server, stop it, then run: mlops-provision restore --host "
            f"{hand_vm.name} --from-sqlite /home/op/mlflow.db --artifacts /home/op/mlruns (docs/backup-restore.md)."
            in out), out
    with urllib.request.urlopen(hand_vm.url + "/health", timeout=10) as answer:  # still serving, untouched
        assert answer.status == 200
    assert hand_vm.sh("ls /etc/mlflow 2>/dev/null || true").strip() == ""


def test_restore_from_sqlite_adopts_its_runs_model_and_artifacts(hand_vm: VM, tmp_path: Path) -> None:
    hand_vm.sh("systemctl stop hand-mlflow")
    proc = cli("restore", "--host", hand_vm.name, *LEAN, "--from-sqlite", "/home/op/mlflow.db",
               "--artifacts", "/home/op/mlruns")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"  adopted    /home/op/mlflow.db and /home/op/mlruns: 2 experiments, 1 runs, 1 registered "
                     r"models, 1 artifact files \(0\.1 MB\); [4-9] artifact URIs now point at the managed store",
                     out), out
    back = mlflow_client(HAND_READ.format(url=hand_vm.url, run_id=DATA["hand_run_id"], dst=str(tmp_path)),
                         admin_env(hand_vm))
    assert back["alpha"] == "0.5" and back["steps"] == list(range(10))
    assert str(back["artifact_uri"]).startswith("mlflow-artifacts:/")
    assert back["artifact"] == DATA["hand_artifact"] and back["models"] == ["hand-model"]
    assert hand_vm.digest("/home/op/mlflow.db") == DATA["hand_db"]  # the original was only read
    assert hand_vm.sh("ls -R /home/op/mlruns | grep -c weights.bin").strip() == "1"


# Inside the host: the moment the restore's unpack starts, stop it (a slow disk, a large store),
# as a CLI killed then would leave it.
HOLD_UNPACK = ("while :; do p=$(pgrep -f '^/opt/mlflow/[^ ]*/bin/python /opt/mlflow/tools/backup_archive.py "
               "--env-file [^ ]* unpack'); if [ -n \"$p\" ]; then kill -STOP $p; echo $p > /tmp/held-unpack; "
               "break; fi; sleep 0.005; done")


def test_an_unpack_left_running_by_a_killed_restore_dies_before_the_next_deploy_recovers(
        vm: VM, tmp_path: Path) -> None:
    """A killed restore once left its unpack working on the host: the next deploy recovered and
    restarted the server, then the orphan swapped the archive's data in under it (every write then
    failed with "attempt to write a readonly database" while status was green)."""
    assert _models(vm) == []  # the data now differs from the archive's (which has the model)
    vm.sh("rm -f /tmp/held-unpack")
    subprocess.run(["podman", "exec", "-d", vm.container, "sh", "-c", HOLD_UNPACK], check=True)
    run_id = f"{vm.name}-{time.time_ns()}"
    restore = subprocess.Popen([CLI, "restore", "--host", vm.name, *LEAN, "--from", DATA["archive"], "--force"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "MLOPS_PROVISION_TEST_RUN": run_id})
    deadline = time.monotonic() + 600
    while not vm.sh("cat /tmp/held-unpack 2>/dev/null || true").strip() and time.monotonic() < deadline:
        assert restore.poll() is None, restore.stdout.read() if restore.stdout else ""
        time.sleep(0.5)
    held = vm.sh("cat /tmp/held-unpack").strip()
    os.killpg(restore.pid, signal.SIGKILL)
    restore.wait(timeout=60)
    assert not wait_until_none_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}", 10)
    assert vm.sh(f"ps -o stat= -p {held}").strip().startswith("T")  # still there, stopped
    proc = cli("deploy", "--host", vm.name, *LEAN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The orphan and its scope were ended before anything was recovered or restarted.
    assert vm.sh(f"ps -o pid= -p {held} || true").strip() == ""
    assert vm.sh("systemctl list-units --plain --no-legend 'mlflow-step-*' || true").strip() == ""
    assert _models(vm) == []  # the data from before the killed restore, not the archive's
    back = read_real_data(vm, DATA["run_id"], str(tmp_path))
    assert back["steps"] == list(range(50))
    wrote = mlflow_client(f"""
import json, mlflow
mlflow.set_tracking_uri({vm.url!r})
with mlflow.start_run() as run:
    mlflow.log_metric("after-recovery", 1.0)
print(json.dumps({{"run": run.info.run_id}}))
""", admin_env(vm))
    assert wrote["run"]
    time.sleep(3)  # what a released orphan would have done by now, it cannot: it is gone
    assert _models(vm) == []
    assert cli("status", "--host", vm.name, *LEAN).returncode == 0
