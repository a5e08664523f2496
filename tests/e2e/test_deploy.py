"""End to end over real SSH: sandbox VM -> deploy -> the real mlflow client -> health -> redeploy
-> render equality -> bad input leaves the host untouched -> destroy.

The tests in this module run in order against the shared sandbox (tests/e2e/conftest.py) and
build on each other; this module makes its first deploy, and destroy runs after every other test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN
from tests.e2e.conftest import VM, admin_env, cli

pytestmark = pytest.mark.e2e
SHARED_SERVER = True


# Debian 13 runs the same role in Molecule (default, postgresql_external); one distro here
# keeps the suite inside its time budget.
@pytest.fixture(scope="module")
def vm(shared_server: VM) -> VM:
    return shared_server


def test_deploy_prints_a_summary_and_the_server_answers(vm: VM) -> None:
    # `make test` deploys this first server through pipx's install of the wheel: its binary by
    # full path, with nothing but the system's directories on PATH (no venv of ours).
    pipx_cli = os.environ.get("MLOPS_PROVISION_PIPX_CLI")
    if pipx_cli:
        assert "/pipx/" in os.path.realpath(pipx_cli) and Path(pipx_cli).is_file(), pipx_cli
        system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        proc = subprocess.run([pipx_cli, "deploy", "--host", vm.name], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PATH": system_path})
    else:
        proc = cli("deploy", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"{vm.name}: deployed" in out
    assert f"URL        {vm.url}" in out
    assert "MLflow     3.17.2" in out
    assert "backend    sqlite:////var/lib/mlflow/mlflow.db" in out
    assert "artifacts  /var/lib/mlflow/artifacts (served by the server)" in out
    assert "health     OK" in out
    assert f"export MLFLOW_TRACKING_URI={vm.url}" in out
    assert "failed=0" in out
    run_log = Path(re.search(r"full log: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert "PLAY RECAP" in run_log.read_text()
    assert vm.sh("systemctl is-active mlflow.service").strip() == "active"
    assert vm.sh("systemctl is-enabled mlflow.service").strip() == "enabled"
    # The server sends MLflow's usage telemetry nowhere (mlflow_telemetry is off by default).
    environ = vm.sh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value mlflow.service)/environ"
                    " | grep -xE 'MLFLOW_DISABLE_TELEMETRY=true|DO_NOT_TRACK=true' || true")  # no secret printed
    assert sorted(environ.split()) == ["DO_NOT_TRACK=true", "MLFLOW_DISABLE_TELEMETRY=true"], environ
    # Bytecode for what the server imports, not for all ~8,450 modules of the venv (venv_bytecode.py).
    pyc = vm.sh("cd /opt/mlflow/current/lib/python3*/site-packages && ls mlflow/server/__pycache__/fastapi_app.*.pyc"
                " uvicorn/__pycache__/main.*.pyc sqlalchemy/orm/__pycache__/session.*.pyc >/dev/null"
                " && find . -name '*.pyc' | wc -l")
    assert 2000 < int(pyc) < 6000, pyc
    marker = json.loads(vm.sh("cat /opt/mlflow/current/mlops-bytecode.json"))  # written last
    if sys.version_info[:2] == (3, 11):  # this machine's Python is the sandbox's: the wheelhouse brought it
        assert marker["from"] == "wheelhouse" and 2000 < marker["pyc"] <= int(pyc), marker
    else:  # written on the host, in the background
        assert marker["pyc"] > 2000 and "mlflow.server.auth: ModuleNotFoundError" not in marker["skipped"], marker
    # The pushed wheelhouse (tar file and its unpacked copy) is gone once the venv is complete.
    assert vm.sh("ls /opt/mlflow").split() == ["current", "tools", "venvs"]


def test_real_mlflow_client_logs_and_reads_back_a_run(vm: VM) -> None:
    code = f"""
import hashlib, json, os, sys, tempfile, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
mlflow.set_experiment("e2e")
blob = os.urandom(256 * 1024)
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "model.bin")
    open(path, "wb").write(blob)
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", "0.5")
        mlflow.log_metric("rmse", 0.25, step=1)
        mlflow.log_artifact(path, artifact_path="models")
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    back = client.download_artifacts(run.info.run_id, "models/model.bin", d + "/out")
    print(json.dumps({{"params": got.data.params, "metrics": got.data.metrics,
                      "artifact_uri": got.info.artifact_uri,
                      "same": hashlib.sha256(open(back, "rb").read()).hexdigest() == hashlib.sha256(blob).hexdigest(),
                      "run_id": run.info.run_id, "exp": run.info.experiment_id}}))
"""
    proc = subprocess.run([os.environ.get("PYTHON", str(BIN / "python")), "-c", code],
                          env={**os.environ, **admin_env(vm)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["params"] == {"alpha": "0.5"}
    assert result["metrics"] == {"rmse": 0.25}
    assert result["artifact_uri"].startswith("mlflow-artifacts:/")
    assert result["same"] is True
    # The artifact really sits in the served destination on the VM.
    stored = f"/var/lib/mlflow/artifacts/{result['exp']}/{result['run_id']}/artifacts/models/model.bin"
    assert vm.sh(f"stat -c %s {stored}").strip() == str(256 * 1024)


def test_health_deep_round_trip(vm: VM) -> None:
    proc = cli("health", "--host", vm.name, "--deep", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)[vm.name]
    assert report["healthy"] is True
    assert [c["name"] for c in report["checks"]] == ["health", "version", "experiment", "run+metric",
                                                     "artifact", "cleanup"]
    assert all(c["ok"] for c in report["checks"])


def test_second_deploy_changes_nothing_and_does_not_restart(vm: VM) -> None:
    pid = vm.main_pid()
    proc = cli("deploy", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"{vm.name}: up to date \(no changes\)  \[ok=\d+ changed=0 failed=0 unreachable=0\]",
                     proc.stdout), proc.stdout
    assert vm.main_pid() == pid
    # The host runs what the first deploy left: one check, and the play ends (nothing_to_do.yml).
    assert NOTHING_TO_DO in proc.stdout, proc.stdout


NOTHING_TO_DO = "checked    nothing to do: files, units, firewall and process as the last deploy left them"


def _status(vm: VM, *args: str) -> tuple[int, Any]:
    """`status` of the one server: its exit code, and its --json entry (with --json) or the table."""
    proc = cli("status", "--host", vm.name, *args)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)["servers"][vm.name] if "--json" in args else proc.stdout


def test_a_hand_edit_or_a_restart_since_the_last_deploy_gets_the_full_deploy(vm: VM) -> None:
    """And `status` shows each: in order after a deploy, drift after the hand edit and for other
    options, in order again after the next deploy; it changes nothing."""
    pid, env_file = vm.main_pid(), vm.sh("cat /etc/mlflow/mlflow.env")
    rc, server = _status(vm, "--json")
    assert rc == 0 and server["problems"] == [], server
    assert server["service"] == {"state": "active", "pid": int(pid), "uptime_s": server["service"]["uptime_s"]}
    assert server["health"] == server["ready"] == "ok"
    assert server["version"] == server["last_deploy"]["version"]
    rc, server = _status(vm, "--json", "--workers", "3")
    assert rc == 1 and server["problems"] == ["the configuration asks for something else than the last deploy"]
    vm.sh("echo 'MLFLOW_WORKERS=\"1\"' >> /etc/mlflow/mlflow.env")
    rc, table = _status(vm)
    assert rc == 1, table
    assert re.search(rf"^{vm.name} +server +[0-9.]+ +active .* 1 \(below\)$", table, re.M), table
    assert f"{vm.name}: changed on the host since the last deploy: files:/etc/mlflow/mlflow.env" in table.splitlines()
    assert vm.main_pid() == pid and vm.sh("cat /etc/mlflow/mlflow.env") == env_file + 'MLFLOW_WORKERS="1"\n'
    password = cli("user", "admin-password", "--host", vm.name).stdout.strip()
    assert password and password not in table
    proc = cli("deploy", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NOTHING_TO_DO not in proc.stdout
    assert "restarted  yes: configuration changed" in proc.stdout, proc.stdout
    assert 'MLFLOW_WORKERS="1"' not in vm.sh("cat /etc/mlflow/mlflow.env")
    # Same files, but not the process the last deploy verified: checked in full, nothing to change.
    vm.sh("systemctl restart mlflow.service")
    pid = vm.main_pid()
    proc = cli("deploy", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NOTHING_TO_DO not in proc.stdout and "changed=0" in proc.stdout, proc.stdout
    assert vm.main_pid() == pid
    rc, server = _status(vm, "--json")
    assert rc == 0 and server["problems"] == [] and server["service"]["pid"] == int(pid), server
    proc = cli("deploy", "--host", vm.name)
    assert proc.returncode == 0 and NOTHING_TO_DO in proc.stdout, proc.stdout + proc.stderr
    proc = cli("deploy", "--host", vm.name, "--full")  # walks every step anyway
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NOTHING_TO_DO not in proc.stdout and "changed=0" in proc.stdout, proc.stdout


def test_installed_files_equal_the_cli_render_byte_for_byte(vm: VM) -> None:
    env_on_host = vm.sh("cat /etc/mlflow/mlflow.env")
    allowed = re.search(r'^MLFLOW_SERVER_ALLOWED_HOSTS="(.*)"$', env_on_host, re.M).group(1)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as out:
        proc = cli("render", "--allowed-hosts", allowed, "--output-dir", out)
        assert proc.returncode == 0, proc.stderr
        # The generated secrets exist only on hosts (and this machine's store): render masks them.
        masked_env = re.sub(r'(?m)^(MLFLOW_FLASK_SERVER_SECRET_KEY)=".*"$', r'\1="********"', env_on_host)
        assert Path(out, "mlflow.env").read_text() == masked_env
        ini_on_host = vm.sh("cat /etc/mlflow/basic_auth.ini")
        assert Path(out, "basic_auth.ini").read_text() == re.sub(r"(?m)^admin_password = .*$",
                                                                 "admin_password = ********", ini_on_host)
        assert Path(out, "mlflow.service").read_text() == vm.sh("cat /etc/systemd/system/mlflow.service")
    assert f"{vm.name}:*" in allowed.split(",")  # the host's own name, computed on the host


def test_unit_properties_and_file_modes_on_the_host(vm: VM) -> None:
    props = dict(line.split("=", 1) for line in vm.sh(
        "systemctl show mlflow.service -p User -p NoNewPrivileges -p ProtectSystem -p PrivateTmp "
        "-p Restart -p KillMode -p StateDirectory -p CapabilityBoundingSet").splitlines())
    assert props["User"] == "mlflow"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["Restart"] == "on-failure"
    assert props["KillMode"] == "control-group"
    assert props["StateDirectory"] == "mlflow"
    assert props["CapabilityBoundingSet"] == ""
    assert vm.sh("stat -c '%U:%G %a' /etc/mlflow/mlflow.env").strip() == "root:mlflow 640"
    assert vm.sh("stat -c '%U:%G %a' /etc/systemd/system/mlflow.service").strip() == "root:root 644"
    assert vm.sh(f"ps -o user= -p {vm.main_pid()}").strip() == "mlflow"
    assert vm.sh("getent passwd mlflow").strip().endswith(":/usr/sbin/nologin")


def test_env_file_quoting_survives_systemds_parser(vm: VM) -> None:
    """A value full of shell and systemd metacharacters arrives in the process unchanged."""
    nasty = 'p"w$HOME`id`\\n;x=1 \'q\' %h'
    proc = cli("render", "--backend-store-uri", f"postgresql://u:{nasty}@db:5432/mlflow", "--output-dir",
               tmp := tempfile.mkdtemp())
    assert proc.returncode == 0, proc.stderr
    # render masks the password, written escaped for systemd's parser: put that escaped form back.
    escaped = nasty.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    env_text = "".join(line.replace("********", escaped) if line.startswith("MLFLOW_BACKEND_STORE_URI=") else line
                       for line in Path(tmp, "mlflow.env").read_text().splitlines(keepends=True))
    vm.sh("cat > /tmp/nasty.env <<'EOF'\n" + env_text + "EOF")
    out = vm.sh("systemd-run --quiet --pipe --wait -p EnvironmentFile=/tmp/nasty.env /usr/bin/env")
    value = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("MLFLOW_BACKEND_STORE_URI="))
    assert value == f"postgresql+psycopg2://u:{nasty}@db:5432/mlflow"
    assert not any(line.startswith("x=") for line in out.splitlines())


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "error: --port: 70000 is not a TCP port; valid: 1-65535"),
    (["--backend-store-uri", "mysql:/oops"], "error: --backend-store-uri: 'mysql:/oops' is not supported"),
    (["-e", "mlflow_port=70000"], "Invalid role variables. Valid: mlflow_port 1-65535"),
    (["-e", '{"mlflow_allowed_hosts": ["a\\nExecStartPre=/bin/false"]}'], "no control characters or newlines"),
])
def test_bad_input_exits_2_and_leaves_the_host_unchanged(vm: VM, args: list[str], message: str) -> None:
    before = (vm.main_pid(), vm.digest("/etc/mlflow/mlflow.env"), vm.digest("/etc/systemd/system/mlflow.service"))
    proc = cli("deploy", "--host", vm.name, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr
    after = (vm.main_pid(), vm.digest("/etc/mlflow/mlflow.env"), vm.digest("/etc/systemd/system/mlflow.service"))
    assert after == before


def test_check_mode_reports_but_changes_nothing(vm: VM) -> None:
    before = vm.digest("/etc/mlflow/mlflow.env")
    proc = cli("deploy", "--host", vm.name, "--check", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked (--check: nothing changed)" in proc.stdout
    assert re.search(r"changed=[1-9]", proc.stdout)
    assert vm.digest("/etc/mlflow/mlflow.env") == before


# A deploy that fails on the host and rolls back (the new venv and files, then the running
# server's again): tests/e2e/test_upgrade.py, whose failed upgrade also restores the databases.


def test_unreachable_host_exits_3() -> None:
    proc = cli("deploy", "--host", "127.0.0.1", "-e", "ansible_port=9", "-e", "ansible_user=nobody",
               timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "127.0.0.1: UNREACHABLE" in proc.stdout


@pytest.mark.ends_shared_server
def test_destroy_removes_service_keeps_data_then_purges(vm: VM) -> None:
    proc = cli("destroy", "--host", vm.name, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{vm.name}: removed (data in /var/lib/mlflow kept" in proc.stdout
    assert vm.sh("systemctl list-unit-files mlflow.service --no-legend", check=False).strip() == ""
    assert vm.sh("ls /opt/mlflow /etc/mlflow /var/lib/mlops-provision 2>&1 || true").count("No such file") == 3
    assert vm.sh("test -f /var/lib/mlflow/mlflow.db && echo kept").strip() == "kept"
    assert vm.sh("pgrep -u mlflow || true").strip() == ""  # no worker left behind
    proc = cli("destroy", "--host", vm.name, "--yes", "--purge-data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert vm.sh("test -e /var/lib/mlflow || echo gone").strip() == "gone"
    assert vm.sh("getent passwd mlflow || echo nouser").strip() == "nouser"


def test_run_logs_are_kept_per_run() -> None:
    state = Path(os.environ.get("MLOPS_PROVISION_HOME", Path.home() / ".local/state/mlops-provision"))
    runs = sorted((state / "runs").iterdir())
    assert runs, "no run directory kept"
    summary = json.loads((runs[-1] / "summary.json").read_text())
    assert summary["action"] in ("deploy", "destroy")
    assert (state / "runs").stat().st_mode & 0o077 == 0  # logs are private to the operator

