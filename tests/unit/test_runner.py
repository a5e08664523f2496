"""The run itself: finding ansible-playbook, reading ansible-runner's events into host results."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_provision import runner
from mlops_provision.errors import ProvisionError
from mlops_provision.failures import classify
from mlops_provision.runner import HostResult, _collect
from tests.conftest import BIN, CLI, processes_with_env, wait_until_none_with_env


def test_ansible_playbook_is_found_next_to_the_interpreter_when_path_lacks_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env: dict[str, str] = {}
    found = runner.find_ansible_playbook(env)
    assert found == str(Path(sys.executable).parent / "ansible-playbook")
    assert env["PATH"] == os.environ["PATH"] == f"{Path(sys.executable).parent}:/usr/bin:/bin"


def test_a_missing_ansible_playbook_is_named_with_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProvisionError) as err:
        runner.find_ansible_playbook({})
    assert str(err.value) == (f"ansible-playbook not found next to {tmp_path / 'python'} or on PATH; "
                              "reinstall mlops-provision (it depends on ansible-core)")
    assert err.value.exit_code == 1


def test_the_venv_command_runs_ansible_without_the_venv_on_path(tmp_path: Path) -> None:
    """bin/mlops-provision called by its full path, as pipx installs it: ansible-playbook must
    still run. A host on a closed port is unreachable (exit 3); without ansible-playbook the CLI
    would say that no host matched."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("mlflow_servers:\n  hosts:\n    closed-port:\n      ansible_host: 127.0.0.1\n"
                         "      ansible_port: 9\n      ansible_user: nobody\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_PROVISION_HOME": str(tmp_path / "state")}
    assert not any((Path(d) / "ansible-playbook").exists() for d in env["PATH"].split(":"))
    proc = subprocess.run([CLI, "destroy", "-i", str(inventory), "--yes", "--lock-wait", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert "no host matched" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "closed-port: UNREACHABLE" in proc.stdout
    assert (BIN / "ansible-playbook").exists()


def test_ssh_keepalives_fail_a_silent_host_within_15_s() -> None:
    args = runner.ansible_env()["ANSIBLE_SSH_ARGS"]
    assert "-o ServerAliveInterval=5 -o ServerAliveCountMax=3" in args
    assert "-o ControlMaster=auto -o ControlPersist=60s" in args


def _failed(host: str, task: str, msg: str, kind: str = "runner_on_failed") -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "res": {"msg": msg}}}


def _stats(**counts: dict[str, int]) -> dict[str, Any]:
    return {"event": "playbook_on_stats", "event_data": counts}


@pytest.mark.parametrize(("task", "msg", "validation", "shown"), [
    ("Configure | Check the port", "[bad input] Invalid role variables. Valid: mlflow_port 1-65535", True,
     "Invalid role variables. Valid: mlflow_port 1-65535"),
    ("Validating arguments against arg spec 'main'", "argument 'mlflow_port' is of type str", True,
     "argument 'mlflow_port' is of type str"),
    ("Preflight | Validate the role variables", "Invalid role variables.", True, "Invalid role variables."),
    ("Install | Build the venv", "pip failed: [bad input] somewhere in the middle", False,
     "pip failed: [bad input] somewhere in the middle"),
])
def test_validation_failures_are_recognised_by_marker_or_arg_spec(task: str, msg: str, validation: bool,
                                                                  shown: str) -> None:
    hosts: dict[str, HostResult] = {}
    _collect(_failed("vm1", task, msg), hosts)
    assert hosts["vm1"].validation_failed is validation
    assert hosts["vm1"].failures == [shown]


@pytest.mark.parametrize("msg", [
    "Timeout (12s) waiting for privilege escalation prompt: ",
    "Failed to connect to the host via ssh: Connection timed out during banner exchange",
    "Data could not be sent to remote host \"10.0.0.5\". Make sure this host can be reached over ssh: "
    "client_loop: send disconnect: Broken pipe\r\n",
    "Timeout, server 10.0.0.5 not responding.\nsecond line",
    'Task failed: Data could not be sent to remote host "127.0.0.1". Make sure this host can be reached over ssh:',
])
def test_a_host_that_stops_answering_is_unreachable_not_failed(msg: str) -> None:
    hosts: dict[str, HostResult] = {}
    _collect(_failed("vm1", "Install | Build the venv", msg), hosts)
    _collect(_stats(ok={"vm1": 12}, failures={"vm1": 1}), hosts)
    h = hosts["vm1"]
    first = msg.strip().splitlines()[0]
    assert h.failures == [f'vm1 stopped answering (SSH) during "Install | Build the venv": {first}']
    assert (h.failed, h.unreachable, h.ok) == (0, 1, 12)


def test_the_control_nodes_inventory_check_is_no_host_of_the_summary_unless_it_refuses() -> None:
    play = "Check the inventory as a whole, before any host is touched"
    task = "Realms | Check the servers that share a database"
    hosts: dict[str, HostResult] = {}
    for name in ("Validating arguments against arg spec 'main'", task):  # the role's dependency validates too
        _collect({"event": "runner_on_ok", "event_data": {"host": "localhost", "play": play, "task": name}}, hosts)
    _collect({"event": "runner_on_ok", "event_data": {"host": "vm1", "task": "Preflight | Facts", "res": {}}}, hosts)
    _collect(_stats(ok={"localhost": 2, "vm1": 30}), hosts)
    assert list(hosts) == ["vm1"] and hosts["vm1"].ok == 30
    hosts = {}
    refused = _failed("localhost", task, "[bad input] 2 servers (a, b) share the database mlflow on db, but ...")
    refused["event_data"]["play"] = play
    _collect(refused, hosts)
    _collect(_stats(failures={"localhost": 1}), hosts)
    check = hosts[runner.INVENTORY_CHECK_NAME]
    assert list(hosts) == [runner.INVENTORY_CHECK_NAME] and check.validation_failed and check.failed == 1
    assert check.failures == ["2 servers (a, b) share the database mlflow on db, but ..."]


def test_the_first_play_of_deploy_is_the_inventory_check_on_the_control_node() -> None:
    import yaml

    from tests.conftest import ROOT

    first = yaml.safe_load((ROOT / "playbooks" / "deploy.yml").read_text())[0]
    assert first["name"].startswith(runner.INVENTORY_CHECK_PLAY)
    assert (first["hosts"], first["connection"], first["gather_facts"]) == ("localhost", "local", False)


def test_an_ordinary_failure_stays_a_failure() -> None:
    failure = classify("vm1", "Service | Start", {"msg": "Unable to start service mlflow"})
    assert (failure.message, failure.validation, failure.lost_host) == ("Unable to start service mlflow",
                                                                        False, False)


def test_the_deployment_fact_becomes_typed() -> None:
    hosts: dict[str, HostResult] = {}
    fact = {"version": "3.17.2", "port": "5000", "restarted": "True", "restart_reasons": ["unit changed"]}
    _collect({"event": "runner_on_ok", "event_data": {"host": "vm1", "task": "Verify | Record",
                                                      "res": {"ansible_facts": {"mlflow_deployment": fact}}}}, hosts)
    dep = hosts["vm1"].deployment
    assert dep is not None
    assert (dep.version, dep.port, dep.restarted, dep.restart_reasons) == ("3.17.2", 5000, True, ["unit changed"])


@pytest.fixture
def silent_ssh_port() -> Iterator[int]:
    """A TCP port that accepts and then never says a word: an SSH server that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_cancels_it_and_says_where(tmp_path: Path, silent_ssh_port: int, sig: int) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"mlflow_servers:\n  hosts:\n    hung:\n      ansible_host: 127.0.0.1\n"
                         f"      ansible_port: {silent_ssh_port}\n      ansible_user: nobody\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_PROVISION_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen([CLI, "destroy", "-i", str(inventory), "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # one line per task when not on a terminal
        seen.append(line)
        if "Lock | Read the holder" in line:  # the first task that needs the (hung) connection
            break
    time.sleep(1)
    began = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - began < 10
    assert proc.returncode == 130, "".join(seen) + err
    assert re.search(r"^interrupted during Lock \(task \d+: Lock \| [^)]+\); the host may be half-changed: "
                     r"run the same command again to converge$", err, re.M), err
    assert "hung: INTERRUPTED (the host may be half-changed)" in out or "hung" not in out
    assert "removed" not in out


def test_a_broken_pipe_quoted_from_the_journal_is_a_failure_not_a_lost_host() -> None:
    hosts: dict[str, HostResult] = {}
    msg = "mlflow.service did not answer. Its journal ends with:\nBrokenPipeError: [Errno 32] Broken pipe"
    _collect(_failed("vm1", "Verify | Check that this service answers", msg), hosts)
    _collect(_stats(ok={"vm1": 12}, failures={"vm1": 1}), hosts)
    assert hosts["vm1"].failed == 1 and hosts["vm1"].unreachable == 0


def test_a_killed_cli_takes_its_playbook_with_it(tmp_path: Path, silent_ssh_port: int) -> None:
    """SIGKILL leaves no handler to cancel the run: ansible-runner's ansible-playbook (its own
    session, SIGHUP ignored) used to live on, holding the host's deploy lock. Tethered, it goes."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"mlflow_servers:\n  hosts:\n    hung:\n      ansible_host: 127.0.0.1\n"
                         f"      ansible_port: {silent_ssh_port}\n      ansible_user: nobody\n")
    run_id = f"{tmp_path.name}-{os.getpid()}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_PROVISION_HOME": str(tmp_path / "state"),
           "MLOPS_PROVISION_TEST_RUN": run_id}
    marker = f"MLOPS_PROVISION_TEST_RUN={run_id}"
    proc = subprocess.Popen([CLI, "destroy", "-i", str(inventory), "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Lock | Read the holder" in line:  # ansible-playbook is waiting on the hung host
            break
    time.sleep(1)  # its ssh is connected and waiting: untethered, all of it lived until the timeout
    assert any("ansible-playbook" in cmd for pid, cmd in processes_with_env(marker).items() if pid != proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    assert not wait_until_none_with_env(marker, 3)


@pytest.mark.parametrize(("limit", "selected"), [
    ("vm1", {"vm1"}),
    ("all:!vm2", {"vm1", "vm3"}),
    ("vm1:vm3", {"vm1", "vm3"}),
    ("!vm2", {"vm1", "vm3"}),
    ("vm1,vm2", {"vm1", "vm2"}),
    ("mlflow_servers:&vm1", {"vm1"}),  # an intersection: left as is (the inventory check does not run)
])
def test_the_deploy_limit_adds_the_control_node_and_selects_the_same_servers(tmp_path: Path, limit: str,
                                                                          selected: set[str]) -> None:
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    inventory = tmp_path / "inventory.yml"
    inventory.write_text("mlflow_servers:\n  hosts:\n    vm1:\n    vm2:\n    vm3:\n")
    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory)])
    manager.subset(runner.limit_with_control_node(limit))
    servers = {h.name for h in manager.get_hosts("mlflow_servers")}
    assert servers == selected
    assert bool(manager.get_hosts("localhost")) is ("&" not in limit)
