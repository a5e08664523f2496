"""Several MLflow servers behind a load balancer, end to end, on a podman network this module
makes: one database host (PostgreSQL from Debian, and SeaweedFS's S3 gateway beside it), two
MLflow servers on that database and bucket, and one HAProxy load balancer, all deployed by one
`deploy -i inventory.yml`.

The real client logs runs and artifacts through the load balancer and reads them back from each
server directly; a user created through the load balancer logs in on both servers. Under the
load of 16 clients (log-batch and search) a server is killed with SIGKILL, and then the whole
fleet gets a configuration change by rolling deploy: no client sees a failure and every metric
sent is stored exactly once. A rolling deploy killed while a server is out of the load balancer
leaves the other one serving, and the next plain deploy puts it back.

The tests run in order and build on each other.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.e2e.conftest import VM, PodmanNetwork, cli, deploy_until, podman_network
from tests.fleet import (
    BUCKET,
    PROXY_ONLY,
    Load,
    lb_servers,
    podman_exec,
    posts_counted,
    start_seaweedfs,
    write_inventory,
)

pytestmark = pytest.mark.e2e

NETWORK = "mlops-e2e-fleet"
S3_SECRET = "fleet-" + os.urandom(12).hex()
# The fleet starts on an older release; the last test upgrades it, with a schema migration.
OLD, NEW = "3.14.0", "3.17.2"
OUTPUTS: list[str] = []


@dataclass
class Fleet:
    db: VM
    servers: list[VM]
    lb: VM
    net: PodmanNetwork
    inventory: Path
    vms: dict[str, VM]
    lb_vars: dict[str, object] = dataclasses.field(default_factory=dict)
    server_vars: dict[str, object] = dataclasses.field(default_factory=dict)
    server_host_vars: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)

    def pin(self, version: str) -> None:
        """Write the inventory for this MLflow release."""
        from mlops_provision.sandbox import machines

        def host_vars(name: str) -> dict[str, object]:
            box = machines.load(name)
            assert box is not None
            return box.inventory_vars()

        addresses = {vm.name: self.net.addresses[vm.container] for vm in self.vms.values()}
        write_inventory(self.inventory, db=self.db.name, servers=[vm.name for vm in self.servers], lb=self.lb.name,
                        addresses=addresses, subnet=str(self.net.subnet), secret=S3_SECRET, host_vars=host_vars,
                        lb_vars=self.lb_vars, server_host_vars=self.server_host_vars, mlflow_version=version,
                        mlflow_metrics=True,
                        # 2, not 1: one worker's pools (5 + 5 per store) ran dry with 16 clients on one server
                        # during the migration window (QueuePool timeouts after 30 s, surfaced as 400s)
                        mlflow_workers=2, **self.server_vars)

    def address(self, vm: VM) -> str:
        return self.net.addresses[vm.container]

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = cli("deploy", "-i", str(self.inventory), *args)
        OUTPUTS.append(proc.stdout + proc.stderr)
        return proc

    def lb_servers(self) -> dict[str, str]:
        return lb_servers(self.lb.container)

    def load(self, name: str, seconds: float, gated: bool = False) -> Load:
        # 1 s between calls: 16 clients at work, not 16 loops saturating a 2-core machine's
        # four VMs (scripts/bench_scale_out.py measures the saturated case).
        return Load(lb_url(self), admin(self), name, seconds, think=1.0, gated=gated)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:
        vms = {role: stack.enter_context(contextlib.contextmanager(VM.up)(f"e2e-fleet-{role}", "debian12"))
               for role in ("db", "s1", "s2", "lb")}
        net = stack.enter_context(podman_network(NETWORK, *vms.values()))
        start_seaweedfs(vms["db"].container, net.addresses[vms["db"].container], S3_SECRET)
        fleet = Fleet(vms["db"], [vms["s1"], vms["s2"]], vms["lb"], net,
                      tmp_path_factory.mktemp("fleet") / "inventory.yml", vms)
        fleet.pin(OLD)
        yield fleet


def lb_url(fleet: Fleet) -> str:
    return fleet.lb.url  # the load balancer listens on port 5000, which the sandbox publishes


def admin(fleet: Fleet) -> dict[str, str]:
    proc = cli("user", "admin-password", "--host", fleet.servers[0].name)
    assert proc.returncode == 0, proc.stderr
    return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": proc.stdout.strip()}


def assert_no_client_saw_a_failure(result: dict[str, object]) -> None:
    assert result["failures"] == [], result["failures"]
    assert result["sent"] == result["stored"], result  # each metric stored exactly once
    assert sum(result["sent"]) > 0  # type: ignore[arg-type]


def test_one_deploy_brings_up_the_database_two_servers_and_the_load_balancer(fleet: Fleet) -> None:
    proc = fleet.deploy()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # HAProxy knows both servers at their network addresses and its health checks pass.
    config = fleet.lb.sh("cat /etc/haproxy/haproxy.cfg")
    for vm in fleet.servers:
        assert f"server {vm.name} {fleet.address(vm)}:5000" in config
    assert fleet.lb_servers() == {vm.name: "UP" for vm in fleet.servers}
    # The summary gives the one URL clients use, and the load balancer's view of each server.
    lb_block = proc.stdout.split(f"{fleet.lb.name}: deployed")[1]
    assert f"  URL        {lb_url(fleet)}  (load balancer: HAProxy)" in lb_block
    assert "  servers    " + ", ".join(f"{vm.name} UP" for vm in fleet.servers) in lb_block
    assert "  health     OK" in lb_block
    # One realm: the same secret key and user database on both servers (digests only).
    digests = {vm.sh("grep -h '^MLFLOW_FLASK_SERVER_SECRET_KEY=' /etc/mlflow/*.env | sha256sum")
               for vm in fleet.servers}
    assert len(digests) == 1
    health = subprocess.run(["curl", "-fsS", lb_url(fleet) + "/health"], capture_output=True, text=True)
    assert health.stdout.strip() == "OK", health.stderr


def test_runs_and_artifacts_through_the_load_balancer_are_seen_by_both_servers(fleet: Fleet) -> None:
    code = """
import hashlib, json, os, sys, tempfile, mlflow
from mlflow import MlflowClient
lb, s1, s2 = sys.argv[1:4]
blob = os.urandom(3 * 1024 * 1024)
mlflow.set_tracking_uri(lb)
mlflow.set_experiment("through-the-lb")
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "weights.bin")
    open(path, "wb").write(blob)
    ids = []
    for i in range(6):  # several runs: the load balancer spreads them over both servers
        with mlflow.start_run() as run:
            mlflow.log_metric("acc", 0.5 + i / 100)
            mlflow.log_artifact(path, artifact_path="model")
        ids.append(run.info.run_id)
    seen = {}
    for name, url in (("s1", s1), ("s2", s2)):
        client = MlflowClient(url)
        seen[name] = {
            "runs": sorted(r.info.run_id for r in client.search_runs(
                [client.get_experiment_by_name("through-the-lb").experiment_id])),
            "sha": [hashlib.sha256(open(client.download_artifacts(i, "model/weights.bin", tempfile.mkdtemp()),
                                        "rb").read()).hexdigest() for i in ids],
            "uri": client.get_run(ids[0]).info.artifact_uri}
print(json.dumps({"ids": sorted(ids), "sha": hashlib.sha256(blob).hexdigest(), "seen": seen}))
"""
    s1, s2 = fleet.servers
    proc = subprocess.run([str(BIN / "python"), "-c", code, lb_url(fleet), s1.url, s2.url],
                          env={**os.environ, **admin(fleet), **PROXY_ONLY}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("s1", "s2"):
        assert out["seen"][name]["runs"] == out["ids"]
        assert out["seen"][name]["sha"] == [out["sha"]] * 6
        assert out["seen"][name]["uri"].startswith("mlflow-artifacts:")
    # The artifacts are in the shared bucket, not on either server's disk.
    master = f"{fleet.address(fleet.db)}:9333"
    listing = fleet.db.sh(f"echo 'fs.ls /buckets/{BUCKET}/artifacts' | weed shell -master={master}")
    assert listing.strip(), listing
    for vm in fleet.servers:
        assert vm.sh("find /var/lib/mlflow -name weights.bin 2>/dev/null | wc -l").strip() == "0"


def test_a_user_created_through_the_load_balancer_logs_in_on_both_servers(fleet: Fleet) -> None:
    env = admin(fleet)
    auth = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    password = "fleet-user-" + os.urandom(8).hex()
    created = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", auth, "-H", "Content-Type: application/json",
         "-d", json.dumps({"username": "fleet-user", "password": password}),
         lb_url(fleet) + "/api/2.0/mlflow/users/create"], capture_output=True, text=True)
    assert created.stdout == "200", created
    for vm in fleet.servers:
        answer = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"fleet-user:{password}",
             vm.url + "/api/2.0/mlflow/experiments/search?max_results=1"], capture_output=True, text=True)
        assert answer.stdout == "200", (vm.name, answer)
        wrong = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", "fleet-user:not-the-password",
             vm.url + "/api/2.0/mlflow/experiments/search?max_results=1"], capture_output=True, text=True)
        assert wrong.stdout == "401", (vm.name, wrong)


def _wait_lb(fleet: Fleet, want: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (seen := fleet.lb_servers()) != {vm.name: want for vm in fleet.servers} and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def test_status_shows_every_host_and_a_hand_edit_on_one_server(fleet: Fleet) -> None:
    proc = cli("status", "-i", str(fleet.inventory), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert {name: s["problems"] for name, s in out["servers"].items()} == {vm.name: [] for vm in fleet.servers}
    lb = out["load_balancers"][fleet.lb.name]
    assert lb["problems"] == [] and lb["state"] == "active"
    assert {s["name"]: s["status"] for s in lb["servers"]} == {vm.name: "UP" for vm in fleet.servers}
    s1, s2 = fleet.servers
    size = s1.sh("stat -c %s /etc/mlflow/mlflow.env").strip()
    s1.sh("echo '# a hand edit' >> /etc/mlflow/mlflow.env")
    try:
        proc = cli("status", "-i", str(fleet.inventory))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert f"{s1.name}: changed on the host since the last deploy: files:/etc/mlflow/mlflow.env" in lines
        assert not [line for line in lines if line.startswith((f"{s2.name}:", f"{fleet.lb.name}:"))], proc.stdout
        assert [line.split()[:2] for line in lines[1:4]] == [[s1.name, "server"], [s2.name, "server"],
                                                             [fleet.lb.name, "lb"]]
    finally:
        s1.sh(f"truncate -s {size} /etc/mlflow/mlflow.env")  # the same file again: no drift
    assert cli("status", "-i", str(fleet.inventory)).returncode == 0


def test_a_server_that_cannot_read_its_database_is_out_of_the_load_balancer(fleet: Fleet) -> None:
    """Readiness, not only liveness: /health still answers, the load balancer's check reads the
    database and takes both servers out while PostgreSQL is stopped, and puts them back after."""
    fleet.db.sh("systemctl stop postgresql.service")
    try:
        assert _wait_lb(fleet, "DOWN") == {vm.name: "DOWN" for vm in fleet.servers}
        for vm in fleet.servers:
            assert subprocess.run(["curl", "-fsS", vm.url + "/health"], capture_output=True,
                                  text=True).stdout.strip() == "OK"
        out = json.loads(cli("status", "-i", str(fleet.inventory), "--json").stdout)
        for vm in fleet.servers:
            assert out["servers"][vm.name]["health"] == "ok"
            assert out["servers"][vm.name]["ready"].startswith("a database read answered 5"), out["servers"][vm.name]
        assert {s["status"] for s in out["load_balancers"][fleet.lb.name]["servers"]} == {"DOWN"}
    finally:
        fleet.db.sh("systemctl start postgresql.service")
    assert _wait_lb(fleet, "UP") == {vm.name: "UP" for vm in fleet.servers}


def test_a_server_killed_under_load_costs_the_clients_nothing(fleet: Fleet) -> None:
    victim = fleet.servers[0]
    before = victim.main_pid()
    load = fleet.load("kill-9", seconds=30)
    time.sleep(8)
    victim.sh(f"kill -9 {before}")
    result = load.result()
    assert_no_client_saw_a_failure(result)
    # systemd started it again and the load balancer took it back.
    deadline = time.monotonic() + 90
    while fleet.lb_servers().get(victim.name) != "UP":
        assert time.monotonic() < deadline, fleet.lb_servers()
        time.sleep(1)
    assert victim.main_pid() not in ("0", before)


def deploy_watched(fleet: Fleet, load_name: str, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                      dict[str, object], list[dict[str, str]]]:
    """A deploy of the whole inventory, while 16 clients work through the load balancer (unless
    load_name is empty), and what HAProxy said of each server twice a second meanwhile."""
    states: list[dict[str, str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(AssertionError, ValueError):
                states.append(fleet.lb_servers())
            time.sleep(0.5)

    load = fleet.load(load_name, seconds=900) if load_name else None
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = fleet.deploy(*args)
    finally:
        stop.set()
        watcher.join()
        if load is not None:
            load.stop()
    return proc, load.result() if load is not None else {}, states


def test_metrics_count_every_request_the_load_sent_and_stay_off_the_load_balancer(fleet: Fleet) -> None:
    load = fleet.load("metrics", seconds=15, gated=True)  # its experiment and runs made, it waits
    urls, password = [vm.url for vm in fleet.servers], admin(fleet)["MLFLOW_TRACKING_PASSWORD"]
    before = posts_counted(urls, password)
    load.go()
    result = load.result()
    assert_no_client_saw_a_failure(result)
    assert posts_counted(urls, password) - before == result["posts"]
    # Refused however the path is spelled: a percent-encoded letter or a doubled slash reaches
    # Flask's /metrics route too.
    for path in ("/metrics", "/%6detrics", "//metrics"):
        refused = subprocess.run(["curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                                  "-u", f"admin:{password}", lb_url(fleet) + path], capture_output=True, text=True)
        assert refused.stdout == "403", (path, refused)
    # The exporter's files are in the directory systemd empties at each start.
    for vm in fleet.servers:
        assert vm.sh("ls /run/mlflow-metrics | grep -c '[.]db$'").strip() != "0"


def test_a_roll_that_fails_on_the_first_server_stops_there_and_leaves_both_serving(fleet: Fleet) -> None:
    """The new configuration cannot start on the first server (a drop-in refuses it): that server
    is rolled back and put back, the roll stops, the second server is not touched."""
    first, second = fleet.servers
    drop_in = "/etc/systemd/system/mlflow.service.d/refuse-ttl-21.conf"
    unit = ("[Service]\nExecStartPre=/bin/sh -c '! grep -q \"auth_cache_ttl_seconds = 21\" "
            "/etc/mlflow/basic_auth.ini'\n")
    encoded = base64.b64encode(unit.encode()).decode()
    first.sh(f"mkdir -p $(dirname {drop_in}) && echo {encoded} | base64 -d > {drop_in} && systemctl daemon-reload")
    pid_second = second.main_pid()
    try:
        proc = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=21")
    finally:
        first.sh(f"rm -f {drop_in} && systemctl daemon-reload")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"{first.name}: FAILED" in proc.stdout
    assert f"{second.name}: deployed" not in proc.stdout
    assert second.main_pid() == pid_second
    for vm in fleet.servers:  # the first rolled back, the second never changed
        assert "auth_cache_ttl_seconds = 30" in vm.sh("cat /etc/mlflow/basic_auth.ini")
    assert fleet.lb_servers() == {vm.name: "UP" for vm in fleet.servers}


def test_a_roll_killed_while_a_server_is_out_is_finished_by_the_next_deploy(fleet: Fleet) -> None:
    """SIGKILL to the CLI as the first server restarts (it was drained: maintenance): the second
    keeps serving alone. The next plain deploy finishes the roll of the configuration change one
    server at a time, never with both out, while 16 clients work through the load balancer."""
    first, second = fleet.servers
    rc, _, err, _ = deploy_until(first, r"Restart mlflow\.service", signal.SIGKILL,
                                 "-e", "mlflow_auth_cache_ttl_sec=25", select=("-i", str(fleet.inventory)))
    assert rc == -signal.SIGKILL, err[-3000:]
    states = fleet.lb_servers()
    assert states[first.name].startswith("MAINT"), states
    assert states[second.name] == "UP", states
    health = subprocess.run(["curl", "-fsS", lb_url(fleet) + "/health"], capture_output=True, text=True)
    assert health.stdout.strip() == "OK", health.stderr
    pid_second = second.main_pid()

    # The rolling configuration change finishes under load: no client may notice.
    proc, result, seen = deploy_watched(fleet, "config-roll", "-e", "mlflow_auth_cache_ttl_sec=25")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_no_client_saw_a_failure(result)
    assert second.main_pid() != pid_second  # restarted with the change, in its turn
    for vm in fleet.servers:
        assert "auth_cache_ttl_seconds = 25" in vm.sh("cat /etc/mlflow/basic_auth.ini")
    assert not [s for s in seen if not any(v.startswith("UP") for v in s.values())], seen
    assert any(s.get(second.name, "").startswith("MAINT") for s in seen), "the second server was never drained"
    assert fleet.lb_servers() == {vm.name: "UP" for vm in fleet.servers}


def test_a_redeploy_changes_nothing_and_keeps_every_server_in(fleet: Fleet) -> None:
    pids = {vm.name: vm.main_pid() for vm in fleet.servers}
    proc = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {vm.name: vm.main_pid() for vm in fleet.servers} == pids
    assert fleet.lb_servers() == {vm.name: "UP" for vm in fleet.servers}


def test_an_upgrade_that_migrates_the_schema_rolls_under_load_and_stops_every_server_only_to_migrate(
        fleet: Fleet) -> None:
    """MLflow OLD -> NEW changes the schema: the first server's deploy takes every server of the
    database out and stops them, backs up and migrates once, and starts the new release; the
    other starts the new release in its turn. The clients (and their retries) notice nothing."""
    fleet.pin(NEW)
    proc, result, states = deploy_watched(fleet, "rolling-upgrade", "-e", "mlflow_auth_cache_ttl_sec=25")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_no_client_saw_a_failure(result)
    env = admin(fleet)
    for vm in fleet.servers:
        version = subprocess.run(["curl", "-fsS", "-u", f"admin:{env['MLFLOW_TRACKING_PASSWORD']}",
                                  vm.url + "/version"], capture_output=True, text=True)
        assert version.stdout.strip() == NEW, (vm.name, version)
    # One migration, by the first server, with its backup; none on the second.
    first, second = fleet.servers
    assert first.sh("ls /var/backups/mlflow | grep -c '^pre-upgrade-'").strip() == "1"
    assert second.sh("ls /var/backups/mlflow 2>/dev/null | grep -c '^pre-upgrade-' || true").strip() == "0"
    # Both were out at once (stopped for the migration), and both are back.
    assert any(all(v.startswith("MAINT") for v in s.values()) for s in states), states[-20:]
    assert fleet.lb_servers() == {vm.name: "UP" for vm in fleet.servers}


def test_tls_on_the_load_balancer_serves_https_alone_and_leaves_the_servers_running(fleet: Fleet) -> None:
    """mlflow_tls on the load balancer: HAProxy serves HTTPS with a certificate made on it for its
    names (fetched for clients to trust), sends plain HTTP there, no longer listens on 5000,
    and the servers behind it keep running (their configuration did not change)."""
    from mlops_provision import paths
    from mlops_provision.sandbox import machines

    pids = {vm.name: vm.main_pid() for vm in fleet.servers}
    fleet.lb_vars = {"mlflow_tls": "self-signed"}
    fleet.pin(NEW)
    proc = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {vm.name: vm.main_pid() for vm in fleet.servers} == pids
    box = machines.load(fleet.lb.name)
    assert box is not None
    url = f"https://127.0.0.1:{box.https_port}"  # the sandbox publishes the load balancer's 443 there
    lb_block = proc.stdout.split(f"{fleet.lb.name}: deployed")[1]
    assert f"  URL        {url}  (load balancer: HAProxy)" in lb_block
    assert "  health     OK" in lb_block
    ca = paths.state_dir() / "tls" / f"{fleet.lb.name}.crt"
    assert ca.read_text() == fleet.lb.sh("cat /etc/mlflow/tls/mlflow.crt")
    assert fleet.lb.sh("stat -c '%a %U' /etc/mlflow/tls/mlflow.key").strip() == "600 root"
    # The real client through HTTPS, trusting the fetched certificate only.
    code = """
import sys, mlflow
from mlflow import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("over-tls")
with mlflow.start_run() as run:
    mlflow.log_metric("acc", 0.75)
print(MlflowClient().get_run(run.info.run_id).data.metrics["acc"])
"""
    env = {**os.environ, **admin(fleet), **PROXY_ONLY, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca)}
    logged = subprocess.run([str(BIN / "python"), "-c", code, url], env=env, capture_output=True,
                            text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    assert logged.stdout.strip().splitlines()[-1] == "0.75"
    # On the host (no curl there): plain HTTP answers only with a redirect to the same path on
    # HTTPS, HAProxy refuses TLS 1.1 (the client allows it, the server answers with an alert),
    # and port 5000 is closed.
    probe = """
import http.client, socket, sys
c = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
c.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1")
r = c.getresponse()
print(r.status, r.getheader("Location"))
try:
    socket.create_connection(("127.0.0.1", 5000), timeout=5)
    print("5000 open")
except ConnectionRefusedError:
    print("5000 closed")
"""
    answer = fleet.lb.sh(f"python3 -c '{probe}'").splitlines()
    assert answer == ["301 https://127.0.0.1/api/2.0/mlflow/experiments/search?max_results=1", "5000 closed"], answer
    old_tls = fleet.lb.sh("echo | openssl s_client -connect 127.0.0.1:443 -tls1_1 -cipher DEFAULT@SECLEVEL=0 2>&1",
                          check=False)
    assert "alert protocol version" in old_tls, old_tls
    # A second deploy changes nothing: the same certificate, and HAProxy not reloaded (a reload
    # replaces the master's worker).
    cert = ca.read_text()
    workers = "pgrep -P $(systemctl show -p MainPID --value haproxy.service)"
    worker = fleet.lb.sh(workers)
    again = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert ca.read_text() == cert
    assert fleet.lb.sh(workers) == worker


def test_an_allowlist_on_the_servers_admits_the_load_balancers_and_no_one_else(fleet: Fleet) -> None:
    """--allow-from on servers behind a load balancer: their firewall admits the load balancer's
    addresses too (its health checks and the requests it forwards come from them), so both stay
    in the pool, while another host on the same network is dropped."""
    from mlops_provision import paths
    from mlops_provision.sandbox import machines

    drop_policy = ("nft -f - <<'EOF'\n"
                   "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n"
                   "  ct state established,related accept\n  iif lo accept\n  tcp dport 22 accept\n }\n}\nEOF")
    probe = ("python3 -c 'import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], 5000), timeout=5)"
             "\n    print(\"open\")\nexcept OSError as e:\n    print(type(e).__name__)' ")
    try:
        for vm in fleet.servers:  # a host firewall like many servers have: drop by default, SSH allowed
            vm.sh("apt-get update -q >/dev/null"
                  " && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null")
            vm.sh(drop_policy)
        fleet.server_vars = {"mlflow_allow_from": ["192.0.2.0/24"]}  # a network no host here is in
        fleet.pin(NEW)
        proc = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        lb_address = fleet.address(fleet.lb)
        for vm in fleet.servers:
            block = proc.stdout.split(f"{vm.name}: deployed")[1]
            line = next(x for x in block.splitlines() if x.startswith("  firewall "))
            assert line.startswith("  firewall   port 5000 open only to 192.0.2.0/24, "), line
            assert f"{lb_address}/32" in line and line.endswith("(nftables)"), line
            rules = [r for r in vm.sh("nft list chain inet filter input").splitlines() if "dport 5000 accept" in r]
            assert any(lb_address in r and "192.0.2.0/24" in r for r in rules), rules
            # The database host, on the same network but not in the allowlist, is dropped.
            assert fleet.db.sh(probe + fleet.address(vm)).strip() == "TimeoutError"
        assert _wait_lb(fleet, "UP") == {vm.name: "UP" for vm in fleet.servers}
        # Through the load balancer (HTTPS since the last test): from the load balancer itself,
        # since its own allowlist follows the servers' by default and so refuses this machine.
        box = machines.load(fleet.lb.name)
        assert box is not None
        refused = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                  str(paths.state_dir() / "tls" / f"{fleet.lb.name}.crt"),
                                  f"https://127.0.0.1:{box.https_port}/health"], capture_output=True, text=True)
        assert refused.stdout == "000", refused
        user, password = admin(fleet).values()
        call = ("python3 -c 'import base64, ssl, sys, urllib.request as u\n"
                "r = u.Request(\"https://127.0.0.1/api/2.0/mlflow/experiments/search?max_results=1\","
                " headers={\"Authorization\": \"Basic \" + base64.b64encode(sys.argv[1].encode()).decode()})\n"
                "print(u.urlopen(r, context=ssl.create_default_context(cafile=\"/etc/mlflow/tls/mlflow.crt\"),"
                " timeout=30).status)' ")
        assert fleet.lb.sh(call + f"'{user}:{password}'").strip() == "200"
    finally:
        fleet.server_vars = {}
        fleet.pin(NEW)
        for vm in fleet.servers:
            vm.sh("nft delete table inet filter", check=False)


def test_a_server_in_maintenance_stays_out_of_the_load_balancer_until_it_is_asked_back(fleet: Fleet) -> None:
    """mlflow_lb_maintenance on one server: the load balancer drains it and keeps it out (across
    a reload, and a deploy takes it out again after someone readied it by hand) while the server
    itself is deployed and answers; `status` counts it as in maintenance, not as a problem; set
    back to false, the next deploy puts it back."""
    s1, s2 = fleet.servers
    fleet.server_host_vars = {s2.name: {"mlflow_lb_maintenance": True}}
    fleet.pin(NEW)
    try:
        proc = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        lb_block = proc.stdout.split(f"{fleet.lb.name}: deployed")[1]
        assert f"  servers    {s1.name} UP, {s2.name} MAINT (mlflow_lb_maintenance)" in lb_block
        assert fleet.lb_servers() == {s1.name: "UP", s2.name: "MAINT"}
        assert f"server {s2.name} {fleet.address(s2)}:5000 disabled" in fleet.lb.sh("cat /etc/haproxy/haproxy.cfg")
        assert s2.sh("systemctl is-active mlflow.service").strip() == "active"
        shown = cli("status", "-i", str(fleet.inventory), "-e", "mlflow_auth_cache_ttl_sec=25")
        assert shown.returncode == 0, shown.stdout + shown.stderr  # in order: out on purpose
        lb_row = next(line for line in shown.stdout.splitlines() if line.startswith(fleet.lb.name + " "))
        assert "1/2 UP, 1 in maintenance" in lb_row, shown.stdout
        # Readied by hand: the next deploy takes it out again.
        podman_exec(fleet.lb.container, f"/usr/local/sbin/mlflow-lb-servers ready {s2.name}")
        assert _wait_lb(fleet, "UP") == {s1.name: "UP", s2.name: "UP"}
        again = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
        assert fleet.lb_servers() == {s1.name: "UP", s2.name: "MAINT"}
    finally:
        fleet.server_host_vars = {}
        fleet.pin(NEW)
    back = fleet.deploy("-e", "mlflow_auth_cache_ttl_sec=25")
    assert back.returncode == 0, back.stdout[-4000:] + back.stderr[-4000:]
    assert fleet.lb_servers() == {s1.name: "UP", s2.name: "UP"}
    assert "disabled" not in fleet.lb.sh("grep '^ *server ' /etc/haproxy/haproxy.cfg")


def test_the_s3_keys_never_show_in_the_output(fleet: Fleet) -> None:
    assert OUTPUTS
    for out in OUTPUTS:
        assert S3_SECRET not in out
