#!/usr/bin/env python3
"""What basic auth costs, on one sandbox, side by side in one run. Prints numbers; it is not a
test (exit 1 only when a deploy or a request failed).

Latency (--requests sequential requests from this machine after --warmup, median and 90th
percentile) of GET /version and of logging one metric, and throughput under load (--clients
threads, each looping log-batch of 10 metrics with a runs/search every 10th call, for
--seconds, --samples times: medians of requests per second, p50 and p95 latency; errors by
kind; each sample's req/s and the load average at its start), for:

  default        this tool's default deploy: basic auth with the 30 s login cache
  no cache       basic auth with mlflow_auth_cache_ttl_sec=0 (every request hashes the password)
  auth none      --auth none
  plain mlflow   `mlflow server --backend-store-uri sqlite:///mlflow.db` with MLflow's defaults,
                 installed by hand on the same VM after `destroy --purge-data` (load only)

and the goal ratios of the issue on auth cost: default/auth-none throughput (>= 0.85) and p50
(<= 1.2x), default/plain throughput (>= 1.3), errors of the default at 2x --clients (0).
Every load sample also reports the sandbox's CPU time per request (its container's cgroup), the
one figure the sharing of cores below cannot skew.

--pin (the default on a machine with 2 or more cores) gives the sandbox the last core and this
script (its client threads, and the deploys it starts) the others, so that the load generator
does not take CPU from the server it measures; --no-pin shares every core as before.
The sandbox is bench-auth-<id> and is removed at the end. Usage:
  python scripts/bench_auth.py [--requests 50] [--clients 16] [--seconds 20] [--samples 3] [--no-pin]
                              [--distro debian12] [--json]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import benchlib
from benchlib import CONTAINER_PREFIX, CONTAINERS_CONF, admin_password, cli, percentile, sandbox, sandbox_cpu_seconds


class Api:
    def __init__(self, url: str, user: str = "", password: str = "") -> None:
        self.url, self.headers = url, {"Content-Type": "application/json"}
        if user:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, method=method, headers=self.headers,  # noqa: S310
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            return bytes(resp.read())


def timed(func: Any, requests: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "p90_ms": round(percentile(samples, 0.9), 1)}


def measure(api: Api, requests: int, warmup: int) -> dict[str, dict[str, float]]:
    exp = json.loads(api.call("POST", "/api/2.0/mlflow/experiments/create",
                              {"name": f"bench-auth-{uuid.uuid4().hex[:8]}"}))["experiment_id"]
    run = json.loads(api.call("POST", "/api/2.0/mlflow/runs/create",
                              {"experiment_id": exp, "start_time": int(time.time() * 1000)}))["run"]["info"]["run_id"]
    step = iter(range(1_000_000))

    def log_metric() -> None:
        api.call("POST", "/api/2.0/mlflow/runs/log-metric",
                 {"run_id": run, "key": "loss", "value": 0.5, "timestamp": int(time.time() * 1000),
                  "step": next(step)})

    return {"GET /version": timed(lambda: api.call("GET", "/version"), requests, warmup),
            "POST runs/log-metric": timed(log_metric, requests, warmup)}


def load(api: Api, clients: int, seconds: float) -> dict[str, Any]:
    """clients threads, each looping log-batch (10 metrics) with a runs/search every 10th call."""
    import threading

    exp = json.loads(api.call("POST", "/api/2.0/mlflow/experiments/create",
                              {"name": f"bench-load-{uuid.uuid4().hex[:8]}"}))["experiment_id"]
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()  # by kind, to tell what failed
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        run = json.loads(api.call("POST", "/api/2.0/mlflow/runs/create",
                                  {"experiment_id": exp, "start_time": int(time.time() * 1000)}))["run"]["info"]
        n = 0
        while time.monotonic() < end:
            began = time.perf_counter()
            try:
                if n % 10 == 9:
                    api.call("POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp], "max_results": 10})
                else:
                    now = int(time.time() * 1000)
                    api.call("POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": run["run_id"], "metrics": [
                        {"key": f"m{k}", "value": 0.5, "timestamp": now, "step": n} for k in range(10)]})
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
            except urllib.error.HTTPError as exc:
                with lock:
                    errors[f"HTTP {exc.code} {exc.read()[:120].decode(errors='replace')}"] += 1
            except Exception as exc:  # noqa: BLE001 - counted, not raised
                with lock:
                    errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            n += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"req_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
            "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else 0.0,
            "errors": sum(errors.values()), "error_kinds": dict(errors)}


def sampled(api: Api, clients: int, seconds: float, samples: int, sandbox_name: str) -> dict[str, Any]:
    """load() `samples` times: the median of each figure, every sample's req/s and the 1-minute
    load average at its start (this machine runs the clients and the VM), errors summed, and the
    sandbox's CPU milliseconds per answered request."""
    runs, loadavgs = [], []
    for _ in range(samples):
        loadavgs.append(round(os.getloadavg()[0], 1))
        cpu_before = sandbox_cpu_seconds(sandbox_name)
        outcome = load(api, clients, seconds)
        cpu_after = sandbox_cpu_seconds(sandbox_name)
        answered = outcome["req_per_s"] * seconds
        outcome["cpu_ms_per_req"] = (round((cpu_after - cpu_before) * 1000 / answered, 1)
                                     if cpu_before is not None and cpu_after is not None and answered else 0.0)
        runs.append(outcome)
    kinds: collections.Counter[str] = collections.Counter()
    for run in runs:
        kinds.update(run["error_kinds"])
    return {**{key: round(statistics.median(run[key] for run in runs), 1)
               for key in ("req_per_s", "p50_ms", "p95_ms", "cpu_ms_per_req")},
            "errors": sum(kinds.values()), "error_kinds": dict(kinds),
            "samples_req_per_s": [run["req_per_s"] for run in runs], "loadavg": loadavgs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--samples", type=int, default=3, help="load runs per server (medians)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                        help="the sandbox on the last core, the clients on the others (default with >= 2 cores)")
    parser.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        parser.error(f"--pin needs 2 or more cores; this process may use {len(cores)}")
    if args.pin:  # threads started later inherit this; the sandbox is pinned once it is up
        os.sched_setaffinity(0, cores[:-1])
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    from hand_install import install_and_start  # scripts/, beside this file

    from mlops_provision import paths

    name = f"bench-auth-{uuid.uuid4().hex[:6]}"
    latency: dict[str, dict[str, dict[str, float]]] = {}
    loads: dict[str, dict[str, Any]] = {}
    with sandbox(name, "--distro", args.distro) as base:
        if args.pin:
            benchlib.run(["podman", "update", "--cpuset-cpus", str(cores[-1]), CONTAINER_PREFIX + name], check=True)
        cli("deploy", "--host", name, check=True)
        admin = Api(base, "admin", admin_password(name))
        latency["default (30 s login cache)"] = measure(admin, args.requests, args.warmup)
        loads["default (30 s login cache)"] = sampled(admin, args.clients, args.seconds, args.samples, name)
        loads[f"default, {2 * args.clients} clients"] = sampled(admin, 2 * args.clients, args.seconds,
                                                                 args.samples, name)
        cli("deploy", "--host", name, "-e", "mlflow_auth_cache_ttl_sec=0", check=True)
        latency["auth, no login cache"] = measure(admin, args.requests, args.warmup)
        loads["auth, no login cache"] = sampled(admin, args.clients, args.seconds, args.samples, name)
        cli("deploy", "--host", name, "--auth", "none", check=True)
        latency["auth none"] = measure(Api(base), args.requests, args.warmup)
        loads["auth none"] = sampled(Api(base), args.clients, args.seconds, args.samples, name)
        cli("destroy", "--host", name, "--yes", "--purge-data", check=True)
        install_and_start(CONTAINER_PREFIX + name, paths.cache_dir())
        loads["plain mlflow server (defaults)"] = sampled(Api(base), args.clients, args.seconds, args.samples, name)
    default, none = loads["default (30 s login cache)"], loads["auth none"]
    plain = loads["plain mlflow server (defaults)"]
    ratios = {
        "default / auth none, throughput (goal >= 0.85)": round(default["req_per_s"] / none["req_per_s"], 2),
        "default / auth none, p50 (goal <= 1.2)": round(default["p50_ms"] / none["p50_ms"], 2),
        "default / plain mlflow, throughput (goal >= 1.3)": round(default["req_per_s"] / plain["req_per_s"], 2),
        "plain mlflow / default, server CPU per request": round(plain["cpu_ms_per_req"] / default["cpu_ms_per_req"], 2)
        if default["cpu_ms_per_req"] else 0.0,
        f"default errors at {2 * args.clients} clients (goal 0)":
            loads[f"default, {2 * args.clients} clients"]["errors"],
    }
    if args.json:
        print(json.dumps({"latency": latency, "load": loads, "ratios": ratios}, indent=2))
        return 0
    print(f"{'request':<22} {'server':<28} {'median':>9} {'p90':>9}   ({args.requests} requests, {args.distro})")
    for request in ("GET /version", "POST runs/log-metric"):
        for mode, numbers in latency.items():
            row = numbers[request]
            print(f"{request:<22} {mode:<28} {row['median_ms']:>7.1f}ms {row['p90_ms']:>7.1f}ms")
    pinning = f"sandbox on core {cores[-1]}, clients on {cores[:-1]}" if args.pin else "cores shared"
    print(f"\n{'under load':<34} {'req/s':>8} {'p50':>9} {'p95':>9} {'errors':>7} {'CPU/req':>8}   "
          f"({args.clients} clients, {args.seconds:.0f} s, {pinning}; "
          f"medians of {args.samples}: samples, load average)")
    for mode, row in loads.items():
        print(f"{mode:<34} {row['req_per_s']:>8.1f} {row['p50_ms']:>7.1f}ms {row['p95_ms']:>7.1f}ms "
              f"{row['errors']:>7.0f} {row['cpu_ms_per_req']:>6.1f}ms   {row['samples_req_per_s']} {row['loadavg']}")
    for mode, outcome in loads.items():
        for kind, count in outcome["error_kinds"].items():
            print(f"  {mode}: {count} x {kind}")
    print()
    for label, value in ratios.items():
        print(f"{label:<52} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
