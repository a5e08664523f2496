#!/usr/bin/env python3
"""What basic auth costs per request: latency of GET /version and of logging one metric
(POST runs/log-metric), with auth on (the default), with auth on and a 60 s login cache
(mlflow_auth_cache_ttl_sec=60) and with --auth none, on one sandbox.

Prints numbers; it is not a test (exit 1 only when a deploy or a request failed). Each figure
is the median (and 90th percentile) of --requests sequential requests from this machine,
after --warmup requests. The sandbox is bench-auth-<id> and is removed at the end. Usage:
  python scripts/bench_auth.py [--requests 50] [--distro debian12] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = str(REPO / ".venv" / "bin" / "mlops-provision")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"mlops-provision {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


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
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 1)}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("CONTAINERS_CONF", str(REPO / "cli/mlops_provision/sandbox/containers.conf"))
    name = f"bench-auth-{uuid.uuid4().hex[:6]}"
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        up = cli("sandbox", "up", "--name", name, "--distro", args.distro).stdout
        base = re.search(r"published at (http://127\.0\.0\.1:\d+)", up).group(1)  # type: ignore[union-attr]
        cli("deploy", "--host", name)
        password = cli("user", "admin-password", "--host", name).stdout.strip()
        results["auth on (basic)"] = measure(Api(base, "admin", password), args.requests, args.warmup)
        cli("deploy", "--host", name, "-e", "mlflow_auth_cache_ttl_sec=60")
        results["auth on, 60 s login cache"] = measure(Api(base, "admin", password), args.requests, args.warmup)
        cli("deploy", "--host", name, "--auth", "none")
        results["auth off (--auth none)"] = measure(Api(base), args.requests, args.warmup)
    finally:
        subprocess.run([CLI, "sandbox", "down", "--name", name], capture_output=True, check=False)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'request':<22} {'auth':<24} {'median':>9} {'p90':>9}   ({args.requests} requests, {args.distro})")
    for request in ("GET /version", "POST runs/log-metric"):
        for mode, numbers in results.items():
            row = numbers[request]
            print(f"{request:<22} {mode:<24} {row['median_ms']:>7.1f}ms {row['p90_ms']:>7.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
