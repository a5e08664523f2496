#!/usr/bin/env python3
"""Several MLflow servers behind HAProxy, measured on this machine's sandboxes.

One database VM (PostgreSQL, SeaweedFS's S3 gateway), two server VMs (two uvicorn workers
each: with one, 16 saturating clients ran its connection pools dry, QueuePool timeouts after
30 s; --metrics) and a load balancer VM on a podman network, deployed by one `deploy -i`
(tests/fleet.py builds the same fleet as tests/e2e/test_scale_out.py). Then, in turns:

  one / two servers   16 clients (log-batch, a search every third call, no think time) through
                      the load balancer for --seconds, with the second server in maintenance
                      (one server) or in the pool (two): requests per second, p50 and p95;
                      alternated --runs times
  rolling change      `deploy -i` of a configuration change (the login cache's TTL) that
                      restarts both servers one at a time: wall time; --runs times
  metrics             the POST requests MLflow's /metrics counted on both servers during one
                      load, against the POSTs the clients made

  python scripts/bench_scale_out.py [--runs 3] [--seconds 30] [--json]

Numbers on this 2-core machine share the cores between the four VMs and the clients, so "two
servers" shows what a second process on the second core buys, not what two real VMs would.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import CONTAINER_PREFIX, Log, admin_password, cli, sandbox

sys.path.insert(0, str(benchlib.REPO))
from tests.fleet import Load, lb_servers, podman_exec, posts_counted, start_seaweedfs, write_inventory

NETWORK = "mlops-bench-fleet"
ROLES = ("db", "s1", "s2", "lb")


@contextlib.contextmanager
def network(name: str, containers: list[str]) -> Any:
    subprocess.run(["podman", "network", "rm", "--force", name], capture_output=True)
    subprocess.run(["podman", "network", "create", "--internal", name], check=True, capture_output=True)
    try:
        addresses = {}
        for container in containers:
            subprocess.run(["podman", "network", "connect", name, container], check=True, capture_output=True)
            inspect = json.loads(subprocess.run(["podman", "inspect", container], check=True, capture_output=True,
                                                text=True).stdout)[0]
            addresses[container] = inspect["NetworkSettings"]["Networks"][name]["IPAddress"]
        subnet = json.loads(subprocess.run(["podman", "network", "inspect", name], check=True, capture_output=True,
                                           text=True).stdout)[0]["subnets"][0]["subnet"]
        yield addresses, str(ipaddress.ip_network(subnet))
    finally:
        for container in containers:
            subprocess.run(["podman", "network", "disconnect", "--force", name, container], capture_output=True)
        subprocess.run(["podman", "network", "rm", "--force", name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=benchlib.positive, default=3, help="alternations and rolling changes (default 3)")
    ap.add_argument("--seconds", type=benchlib.positive, default=30, help="each load (default 30)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    log = Log("scale-out")
    env = benchlib.private_state_env()
    os.environ.update({k: env[k] for k in ("MLOPS_PROVISION_HOME", "CONTAINERS_CONF")})
    names = {role: f"bench-fleet-{role}" for role in ROLES}
    secret = "bench-" + os.urandom(12).hex()
    results: dict[str, Any] = {"one_server": [], "two_servers": [], "rolling_change_s": []}
    with contextlib.ExitStack() as stack:
        urls = {role: stack.enter_context(sandbox(name, env=env)) for role, name in names.items()}
        addresses, subnet = stack.enter_context(network(NETWORK, [CONTAINER_PREFIX + n for n in names.values()]))
        from mlops_provision.sandbox import machines

        def host_vars(name: str) -> dict[str, Any]:
            box = machines.load(name)
            assert box is not None
            return box.inventory_vars()

        start_seaweedfs(CONTAINER_PREFIX + names["db"], addresses[CONTAINER_PREFIX + names["db"]], secret)
        inventory = Path(tempfile.mkdtemp(prefix="mlops-bench-fleet-")) / "inventory.yml"
        write_inventory(inventory, db=names["db"], servers=[names["s1"], names["s2"]], lb=names["lb"],
                        addresses={n: addresses[CONTAINER_PREFIX + n] for n in names.values()}, subnet=subnet,
                        secret=secret, host_vars=host_vars, mlflow_workers=2, mlflow_metrics=True)
        log("deploying the fleet (database, two servers, load balancer)")
        began = time.monotonic()
        cli("deploy", "-i", str(inventory), env=env, check=True)
        results["first_deploy_s"] = round(time.monotonic() - began, 1)
        log(f"deployed in {results['first_deploy_s']} s")
        password = admin_password(names["s1"], env=env)
        access = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        lb = CONTAINER_PREFIX + names["lb"]

        def load(name: str) -> dict[str, Any]:
            run = Load(urls["lb"], access, name, args.seconds, think=0.0)
            return run.result()

        for index in range(args.runs):
            podman_exec(lb, f"/usr/local/sbin/mlflow-lb-servers drain {names['s2']}")
            one = load(f"one-{index}")
            podman_exec(lb, f"/usr/local/sbin/mlflow-lb-servers ready {names['s2']}")
            two = load(f"two-{index}")
            for key, got in (("one_server", one), ("two_servers", two)):
                if got["failures"]:
                    raise benchlib.BenchError(f"{key}: the clients saw failures: {got['failures'][:3]}")
                results[key].append({k: got[k] for k in ("rps", "p50_ms", "p95_ms", "posts")})
            log(f"run {index + 1}: one server {one['rps']} req/s p95 {one['p95_ms']} ms; "
                f"two servers {two['rps']} req/s p95 {two['p95_ms']} ms")

        for index in range(args.runs):
            ttl = 20 + index
            began = time.monotonic()
            cli("deploy", "-i", str(inventory), "-e", f"mlflow_auth_cache_ttl_sec={ttl}", env=env, check=True)
            results["rolling_change_s"].append(round(time.monotonic() - began, 1))
            log(f"rolling change {index + 1}: {results['rolling_change_s'][-1]} s; "
                f"load balancer: {lb_servers(lb)}")

        server_urls = [urls["s1"], urls["s2"]]
        gated = Load(urls["lb"], access, "metrics", args.seconds, think=0.0, gated=True)
        before = posts_counted(server_urls, password)
        gated.go()
        sent = gated.result()
        counted = posts_counted(server_urls, password) - before
        results["metrics"] = {"posts_sent": sent["posts"], "posts_counted": counted}
        log(f"/metrics counted {counted} POSTs; the clients made {sent['posts']}")

    summary = {
        "one_server": {k: statistics.median(r[k] for r in results["one_server"]) for k in ("rps", "p50_ms", "p95_ms")},
        "two_servers": {k: statistics.median(r[k] for r in results["two_servers"])
                        for k in ("rps", "p50_ms", "p95_ms")},
        "rolling_change_s": statistics.median(results["rolling_change_s"]),
        "first_deploy_s": results["first_deploy_s"],
        "metrics": results["metrics"],
    }
    if args.json:
        print(json.dumps({"summary": summary, "samples": results}, indent=2))
    else:
        print(f"{'':16} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}   (medians of {args.runs}, {args.seconds} s each)")
        for key in ("one_server", "two_servers"):
            row = summary[key]
            print(f"{key.replace('_', ' '):16} {row['rps']:8.1f} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f}")
        print(f"rolling configuration change of two servers: {summary['rolling_change_s']} s "
              f"(samples {results['rolling_change_s']})")
        print(f"/metrics: {results['metrics']['posts_counted']} POSTs counted, "
              f"{results['metrics']['posts_sent']} sent")
        print(f"first deploy of the fleet: {results['first_deploy_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
