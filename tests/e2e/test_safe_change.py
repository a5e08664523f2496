"""Safe change on a running server, on one sandbox, in order: --check on a bare host stores
nothing; a deploy killed after the env file was rendered, after `current` switched, and
interrupted (Ctrl-C) during the restart each converges on the next plain run and the one after
is changed=0; a second deploy meets the host's lock and names the holder; a second control
node with no state takes the admin password from the host; a port held by another program is
refused in seconds with nothing stopped; a blackholed host fails as unreachable in bounded
time; the CLI works called by its full path with nothing else on PATH.

Each assertion reads the host's real end state: the main process's venv and environment, its
PID, the `current` link and the files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI
from tests.e2e.conftest import VM, cli, deploy_until

pytestmark = pytest.mark.e2e

# Another requirement set (the metrics exporter), so a new venv: from the same wheelhouse as the
# first deploy's, where an extra package would make the control node build a second one.
NEW_VENV = ("--metrics",)


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("safe12", "debian12")


def process_env(vm: VM) -> dict[str, str]:
    raw = vm.sh(f"tr '\\0' '\\n' < /proc/{vm.main_pid()}/environ")
    return dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)


def converged(vm: VM, workers: str) -> None:
    """What runs is what the files say: workers from the env file, the venv `current` names."""
    assert vm.sh("systemctl is-active mlflow.service").strip() == "active"
    assert process_env(vm)["MLFLOW_WORKERS"] == workers
    assert f'MLFLOW_WORKERS="{workers}"' in vm.sh("cat /etc/mlflow/mlflow.env")
    assert vm.process_venv() == vm.sh("readlink -f /opt/mlflow/current").strip()


def changed(out: str) -> int:
    return int(re.search(r"changed=(\d+)", out).group(1))  # type: ignore[union-attr]


def test_check_on_a_bare_host_plans_and_stores_nothing(vm: VM, private_state: Path) -> None:
    proc = cli("deploy", "--host", vm.name, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked (--check: nothing changed)" in proc.stdout
    assert "would      install MLflow 3.17.2 into a new venv" in proc.stdout
    assert "would      restart mlflow.service: not running" in proc.stdout
    secrets = private_state / "secrets"
    assert not secrets.exists() or not any(secrets.iterdir()), "--check generated secrets"
    assert vm.sh("test -e /etc/mlflow || test -e /opt/mlflow/venvs || echo bare").strip() == "bare"


def test_first_deploy(vm: VM) -> None:
    proc = cli("deploy", "--host", vm.name, "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    converged(vm, "2")


def test_killed_after_the_env_file_was_rendered_converges(vm: VM) -> None:
    pid = vm.main_pid()
    rc, _, _, _ = deploy_until(vm, r"Configure \| Render the basic-auth configuration", signal.SIGKILL,
                               "--workers", "1")
    assert rc == -signal.SIGKILL
    # The file says 1, the process still runs 2: the state the next run must notice.
    assert 'MLFLOW_WORKERS="1"' in vm.sh("cat /etc/mlflow/mlflow.env")
    assert vm.main_pid() == pid and process_env(vm)["MLFLOW_WORKERS"] == "2"
    proc = cli("deploy", "--host", vm.name, "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "restarted  yes: configuration written after the server started (an interrupted deploy)" in proc.stdout
    assert changed(proc.stdout) > 0
    converged(vm, "1")


def test_killed_after_current_switched_converges(vm: VM) -> None:
    running = vm.process_venv()
    rc, _, _, _ = deploy_until(vm, r"Service \| Reset the start limit", signal.SIGKILL, "--workers", "1", *NEW_VENV)
    assert rc == -signal.SIGKILL
    switched = vm.sh("readlink -f /opt/mlflow/current").strip()
    assert switched != running and vm.process_venv() == running  # the old venv still runs
    proc = cli("deploy", "--host", vm.name, "--workers", "1", *NEW_VENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"restarted  yes: MLflow 3\.17\.2 -> 3\.17\.2 \(new venv\)", proc.stdout), proc.stdout
    converged(vm, "1")
    assert vm.process_venv() == switched
    assert vm.sh(f"test -x {running}/bin/python && echo kept").strip() == "kept"  # rollback target kept


def test_interrupted_during_the_restart_says_so_and_converges(vm: VM) -> None:
    rc, out, err, after = deploy_until(vm, r"Verify \| Wait for /health", signal.SIGINT, "--workers", "2", *NEW_VENV)
    assert rc == 130, out + err
    assert re.search(r"interrupted during Verify \(task \d+: Verify \| Wait for /health", err), err
    assert ": deployed" not in out and "up to date" not in out
    assert after < 30, f"Ctrl-C took {after:.0f} s to end the run"
    proc = cli("deploy", "--host", vm.name, "--workers", "2", *NEW_VENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    converged(vm, "2")
    # The run after a converging one is changed=0: test_the_cli_works_called_by_its_full_path...


@pytest.fixture(scope="module")
def second_operator(vm: VM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Another control node: its own empty state directory and an inventory naming the VM."""
    from mlops_provision.sandbox import machines

    box = machines.load(vm.name)
    assert box is not None
    home = tmp_path_factory.mktemp("operator2")
    inventory = home / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"mlflow_servers": {"hosts": {vm.name: box.inventory_vars()}}}))
    yield {"MLOPS_PROVISION_HOME": str(home / "state"), "INVENTORY": str(inventory)}


def cli_as(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MLOPS_PROVISION_HOME": env["MLOPS_PROVISION_HOME"]})


def test_a_second_deploy_meets_the_lock_and_names_the_holder(vm: VM, second_operator: dict[str, str]) -> None:
    first = subprocess.Popen([CLI, "deploy", "--host", vm.name, "--workers", "1", *NEW_VENV],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stderr is not None
    for line in first.stderr:  # wait until the first one holds the lock
        if "Preflight |" in line:
            break
    started = time.monotonic()
    other = cli_as(second_operator, "deploy", "-i", second_operator["INVENTORY"], "--host", vm.name,
                   "--lock-wait", "0")
    waited = time.monotonic() - started
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert other.returncode == 1, other.stdout + other.stderr
    assert re.search(rf"Another deploy is changing {vm.name}: started .+ by \S+ on \S+ \(pid \d+\)", other.stdout), \
        other.stdout
    assert "Nothing was changed." in other.stdout
    assert waited < 60
    converged(vm, "1")  # only the first deploy's settings are live


def test_a_second_control_node_without_state_takes_the_password_from_the_host(
        vm: VM, second_operator: dict[str, str]) -> None:
    pid = vm.main_pid()
    proc = cli_as(second_operator, "deploy", "-i", second_operator["INVENTORY"], "--host", vm.name,
                  "--workers", "1", *NEW_VENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert vm.main_pid() == pid, "a deploy without the state directory restarted the server"
    ours = cli("user", "admin-password", "--host", vm.name).stdout.strip()
    theirs = Path(second_operator["MLOPS_PROVISION_HOME"], "secrets", f"mlflow-admin-{vm.name}.password")
    assert theirs.read_text().strip() == ours
    # The recovered password logs in (the inventory names the VM's SSH, not its published port).
    proc = subprocess.run([CLI, "health", "--url", vm.url, "--deep"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ours})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_port_held_by_another_program_is_refused_with_nothing_stopped(vm: VM) -> None:
    vm.sh("nohup python3 -m http.server 5001 >/dev/null 2>&1 & sleep 1")
    try:
        pid = vm.main_pid()
        started = time.monotonic()
        proc = cli("deploy", "--host", vm.name, "--port", "5001", "--workers", "1", *NEW_VENV)
        took = time.monotonic() - started
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert re.search(r"Port 5001 on \S+ is taken by another program: python3 \(pid \d+, user root: "
                         r"python3 -m http\.server 5001\)", proc.stdout), proc.stdout
        assert took < 30
        assert vm.main_pid() == pid and 'MLFLOW_PORT="5000"' in vm.sh("cat /etc/mlflow/mlflow.env")
    finally:
        vm.sh("pkill -f 'http[.]server 5001' || true")


def test_the_cli_works_called_by_its_full_path_with_nothing_else_on_path(vm: VM) -> None:
    """Also the plain re-run after the converging ones above: changed=0, no restart."""
    pid = vm.main_pid()
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    proc = subprocess.run([CLI, "deploy", "--host", vm.name, "--workers", "1", *NEW_VENV], capture_output=True,
                          text=True, timeout=900, env={**env, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert changed(proc.stdout) == 0 and vm.main_pid() == pid


def test_removing_a_user_that_does_not_exist_says_so(vm: VM) -> None:
    proc = cli("user", "remove", "--host", vm.name, "nobody-here")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "user nobody-here does not exist" in proc.stderr


def test_a_host_that_stops_answering_fails_as_unreachable_in_bounded_time(vm: VM) -> None:
    proc = subprocess.Popen([CLI, "deploy", "--host", vm.name, "--workers", "2", *NEW_VENV],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Preflight | Check free disk space for the venv" in line:
            subprocess.run(["podman", "pause", vm.container], check=True, capture_output=True)
            break
    paused = time.monotonic()
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        subprocess.run(["podman", "unpause", vm.container], capture_output=True)
    took = time.monotonic() - paused
    assert proc.returncode == 3, out + err
    assert f"{vm.name} stopped answering (SSH)" in out + err
    assert took < 90, f"a blackholed host took {took:.0f} s to fail"
