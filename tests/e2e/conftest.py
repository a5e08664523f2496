"""Shared pieces of the end-to-end tests: the CLI as a subprocess and sandbox VMs.

Each test module keeps its own state directory (sandbox records, run logs, the secrets store),
so the tests neither see nor change an operator's, and one module's stored store keys or vault
never change what another sees; the wheelhouse cache stays shared.

The modules that need "a server deployed with the defaults" (test_deploy, test_hostile_input,
test_reliability, test_security) share one sandbox and one state directory instead: they set
SHARED_SERVER = True and take the `shared_server` fixture. Each leaves the server healthy for the
next; tests marked `ends_shared_server` (destroy) run after every other test of the session.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scripts.benchlib import published_url

from tests.conftest import BIN, CLI, wait_until_none_with_env

os.environ["MLOPS_PROVISION_HOME"] = tempfile.mkdtemp(prefix="mlops-e2e-state-")
SHARED_STATE = tempfile.mkdtemp(prefix="mlops-e2e-shared-state-")
# Another name lets a module run beside a full run (which uses the default) on the same machine.
SHARED_SANDBOX = os.environ.get("MLOPS_E2E_SHARED_SANDBOX", "e2e-debian12")
# Modules whose subject is not the server's defaults (stores, backends, upgrades, backups,
# firewalls, installs) deploy with 1 uvicorn worker: MLflow's command and uvicorn each import
# the server (about 4 CPU-s apiece on these 2-core machines), and each worker one more, so a
# start costs 2 imports instead of 5. The shared-server modules prove the defaults (4 workers).
LEAN = ("--workers", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that take the shared server down run last, whatever module they are in."""
    items.sort(key=lambda item: item.get_closest_marker("ends_shared_server") is not None)


@pytest.fixture(scope="module", autouse=True)
def private_state(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh state directory for each test module (set before its sandboxes start), or the
    shared server's for the modules that use it."""
    before = os.environ["MLOPS_PROVISION_HOME"]
    shared = getattr(request.module, "SHARED_SERVER", False)
    os.environ["MLOPS_PROVISION_HOME"] = SHARED_STATE if shared else tempfile.mkdtemp(prefix="mlops-e2e-state-")
    yield Path(os.environ["MLOPS_PROVISION_HOME"])
    os.environ["MLOPS_PROVISION_HOME"] = before


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


class VM:
    def __init__(self, name: str, distro: str) -> None:
        self.name, self.distro = name, distro
        self.container = f"mlops-sandbox-{name}"
        self.url = ""

    def sh(self, command: str, check: bool = True) -> str:
        proc = subprocess.run(["podman", "exec", self.container, "sh", "-c", command],
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{command!r} failed: {proc.stderr}")
        return proc.stdout

    def main_pid(self) -> str:
        return self.sh("systemctl show -p MainPID --value mlflow.service").strip()

    def process_venv(self) -> str:
        """The venv the running main process was started from (its argv[0]), not what `current` says."""
        argv0 = self.sh(f"tr '\\0' '\\n' < /proc/{self.main_pid()}/cmdline | head -1").strip()
        return argv0.rsplit("/bin/", 1)[0]

    def digest(self, path: str) -> str:
        return self.sh(f"sha256sum {path}").split()[0]

    @classmethod
    def up(cls, name: str, distro: str = "debian12", *extra: str) -> Iterator[VM]:
        box = cls(name, distro)
        proc = cli("sandbox", "up", "--name", name, "--distro", distro, *extra)
        assert proc.returncode == 0, proc.stderr
        box.url = published_url(proc.stdout)
        yield box
        cli("sandbox", "down", "--name", name)


@pytest.fixture(scope="session")
def shared_server() -> Iterator[VM]:
    """One Debian 12 sandbox for the modules that set SHARED_SERVER (test_deploy deploys it
    first and asserts that first deploy; the others call `ensure_deployed`)."""
    before = os.environ["MLOPS_PROVISION_HOME"]
    os.environ["MLOPS_PROVISION_HOME"] = SHARED_STATE
    boxes = VM.up(SHARED_SANDBOX, "debian12")
    box = next(boxes)
    os.environ["MLOPS_PROVISION_HOME"] = before
    yield box
    os.environ["MLOPS_PROVISION_HOME"] = SHARED_STATE
    next(boxes, None)  # sandbox down
    os.environ["MLOPS_PROVISION_HOME"] = before


@dataclass
class PodmanNetwork:
    name: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    addresses: dict[str, str]  # container -> its address on this network


@contextlib.contextmanager
def podman_network(name: str, *vms: VM) -> Iterator[PodmanNetwork]:
    """An internal podman network made for one module (no route out of it; each VM keeps its
    one default route, to this machine), with vms connected to it; removed afterwards."""
    podman = ["podman", "network"]
    subprocess.run([*podman, "rm", "--force", name], capture_output=True)
    subprocess.run([*podman, "create", "--internal", name], check=True, capture_output=True)
    try:
        addresses = {}
        for vm in vms:
            subprocess.run([*podman, "connect", name, vm.container], check=True, capture_output=True)
            inspect = json.loads(subprocess.run(["podman", "inspect", vm.container], check=True,
                                                capture_output=True, text=True).stdout)[0]
            addresses[vm.container] = inspect["NetworkSettings"]["Networks"][name]["IPAddress"]
        subnet = json.loads(subprocess.run([*podman, "inspect", name], check=True, capture_output=True,
                                           text=True).stdout)[0]["subnets"][0]["subnet"]
        yield PodmanNetwork(name, ipaddress.ip_network(subnet), addresses)
    finally:
        for vm in vms:
            subprocess.run([*podman, "disconnect", "--force", name, vm.container], capture_output=True)
        subprocess.run([*podman, "rm", "--force", name], capture_output=True)


def deploy_until(vm: VM, pattern: str, sig: int, *args: str, verb: str = "deploy",
                 delay: float = 0, select: tuple[str, ...] = ()) -> tuple[int, str, str, float]:
    """Start a deploy (or another verb that deploys: restore), and send sig to its whole process
    group when a progress line matches pattern (the task has started, so the one before it has
    finished), or `delay` seconds after it (to land inside a long task). After SIGKILL nothing
    the CLI started may live on: not ansible-playbook, its workers or their ssh (they would hold
    the host's deploy lock and go on changing the host). select: what to deploy instead of
    `--host vm` (e.g. `-i inventory.yml`)."""
    run_id = f"{vm.name}-{time.time_ns()}"
    proc = subprocess.Popen([CLI, verb, *(select or ("--host", vm.name)), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "MLOPS_PROVISION_TEST_RUN": run_id})
    assert proc.stderr is not None
    seen = []
    sent_at = 0.0
    for line in proc.stderr:
        seen.append(line)
        if not sent_at and re.search(pattern, line):
            time.sleep(delay)
            os.killpg(proc.pid, sig)
            sent_at = time.monotonic()
    out = proc.stdout.read() if proc.stdout else ""
    rc = proc.wait(timeout=300)
    assert sent_at, f"the deploy never reached {pattern!r}:\n" + "".join(seen)[-3000:]
    if sig == signal.SIGKILL:
        left = wait_until_none_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}", 10)
        assert not left, f"still running {time.monotonic() - sent_at:.0f} s after SIGKILL: {left}"
    return rc, out, "".join(seen), time.monotonic() - sent_at


def ensure_deployed(vm: VM) -> VM:
    """Deploy the defaults unless the server already runs (a module run on its own)."""
    if vm.sh("systemctl is-active mlflow.service", check=False).strip() != "active":
        proc = cli("deploy", "--host", vm.name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return vm


def admin_env(vm: VM, *secrets_args: str) -> dict[str, str]:
    """MLflow client variables that log in as the admin the deploy created (basic auth is on
    by default); the password comes from this machine's secrets store through the CLI."""
    proc = cli("user", "admin-password", "--host", vm.name, *secrets_args)
    assert proc.returncode == 0, proc.stderr
    return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": proc.stdout.strip()}


def mlflow_client(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run code with the real mlflow client in the test venv; it prints one JSON line last."""
    import json

    proc = subprocess.run([str(BIN / "python"), "-c", code], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def places_where_secrets_must_not_be(vm: VM, cli_outputs: list[str]) -> dict[str, str]:
    """Everything an attacker or a log collector could read, by name: process command lines,
    the unit, `systemctl show`, the journal (sudo logs command lines there), the CLI's output
    and every kept run log."""
    from pathlib import Path

    places = {
        "ps": vm.sh("ps -eo args"),
        "unit file": vm.sh("cat /etc/systemd/system/mlflow.service"),
        "systemctl show": vm.sh("systemctl show mlflow.service"),
        "journal": vm.sh("journalctl --no-pager -o verbose"),
        "cli output": "\n".join(cli_outputs),
    }
    runs = Path(os.environ["MLOPS_PROVISION_HOME"]) / "runs"
    for path in runs.rglob("*"):
        if path.is_file():
            places[f"run log {path.relative_to(runs)}"] = path.read_text(errors="replace")
    assert len(places) > 6, "no run log was read"
    return places


# ---- real data written and read back with the real client (upgrade, backup and restore) -----

WRITE_REAL_DATA = """
import hashlib, json, os, tempfile, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({url!r})
mlflow.set_experiment({experiment!r})
blob = os.urandom(512 * 1024)
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, "blob.bin"), "wb").write(blob)
    with mlflow.start_run() as run:
        for step in range(50):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_param("alpha", "0.5")
        mlflow.log_artifact(os.path.join(d, "blob.bin"), artifact_path="data")
    for _ in range(4):
        with mlflow.start_run():
            mlflow.log_metric("loss", 0.5)
MlflowClient().create_registered_model({experiment!r} + "-model")
print(json.dumps({{"run_id": run.info.run_id, "artifact": hashlib.sha256(blob).hexdigest()}}))
"""

READ_REAL_DATA = """
import hashlib, json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({url!r})
client = MlflowClient()
run = client.get_run({run_id!r})
history = client.get_metric_history({run_id!r}, "loss")
path = client.download_artifacts({run_id!r}, "data/blob.bin", {dst!r})
print(json.dumps({{
    "steps": sorted(m.step for m in history), "last": run.data.metrics["loss"],
    "artifact": hashlib.sha256(open(path, "rb").read()).hexdigest(),
    "models": [m.name for m in client.search_registered_models()],
    "runs": len(client.search_runs([run.info.experiment_id])),
}}))
"""


def write_real_data(vm: VM, experiment: str) -> dict[str, str]:
    """Five runs (one with a 50-step metric, a param and a 512 KiB artifact), a registered model
    named <experiment>-model, and a second user, bob: {run_id, artifact (SHA-256), bob (password)}."""
    data = {k: str(v) for k, v in mlflow_client(WRITE_REAL_DATA.format(url=vm.url, experiment=experiment),
                                                admin_env(vm)).items()}
    proc = cli("user", "add", "--host", vm.name, "bob")
    assert proc.returncode == 0, proc.stderr
    data["bob"] = re.search(r"password \(shown once, not kept\): (\S+)", proc.stdout).group(1)  # type: ignore[union-attr]
    return data


def read_real_data(vm: VM, run_id: str, tmp: str) -> dict[str, object]:
    return mlflow_client(READ_REAL_DATA.format(url=vm.url, run_id=run_id, dst=tmp), admin_env(vm))


def experiments_seen_by(vm: VM, user: str, password: str) -> int:
    """Logs in as user (an MLflow user the server knows) and counts the experiments it sees."""
    seen = mlflow_client(f"""
import json, mlflow
mlflow.set_tracking_uri({vm.url!r})
print(json.dumps({{"experiments": len(mlflow.search_experiments())}}))
""", {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
    return int(seen["experiments"])  # type: ignore[call-overload]
