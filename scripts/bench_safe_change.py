#!/usr/bin/env python3
"""Benchmark changes to a running server on one sandbox VM; prints numbers, it is not a test.

One sandbox is started and deployed once (not timed); then --runs times each of:

  refused-port  `deploy --port 5001` while another program holds 5001 on the VM: seconds from
                start to exit 1 (preflight refuses it; nothing is stopped)
  check         `deploy --check --workers N` on the deployed host: seconds to exit 0
  change        `deploy --workers N` (a plain config change, N alternating): seconds of /health
                not answering 200 on the published port, polled every 50 ms from here, and the
                deploy's own duration

Medians are printed last. The sandbox is named safe-bench-<id> and removed at the end.
  python scripts/bench_safe_change.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(REPO / ".venv" / "bin" / "mlops-provision")
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "cli/mlops_provision/sandbox/containers.conf"),
       "MLOPS_PROVISION_HOME": tempfile.mkdtemp(prefix="mlops-bench-state-")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=ENV, timeout=1800)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:  # noqa: S310 - 127.0.0.1 only
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def outage_during(url: str, action: list[str]) -> tuple[float, float, int]:
    """Seconds /health was not 200 while action ran, the action's duration and exit code."""
    down = 0.0
    stop = threading.Event()

    def poll() -> None:
        nonlocal down
        last = time.monotonic()
        while not stop.is_set():
            ok = healthy(url)
            now = time.monotonic()
            if not ok:
                down += now - last
            last = now
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    began = time.monotonic()
    proc = cli(*action)
    took = time.monotonic() - began
    stop.set()
    poller.join()
    return down, took, proc.returncode


def timed(*args: str) -> tuple[float, int]:
    began = time.monotonic()
    proc = cli(*args)
    return time.monotonic() - began, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    name = f"safe-bench-{uuid.uuid4().hex[:6]}"
    results: dict[str, list[float]] = {"refused_port_s": [], "check_s": [], "change_outage_s": [],
                                       "change_deploy_s": []}
    try:
        up = cli("sandbox", "up", "--name", name)
        url = re.search(r"published at (http://127\.0\.0\.1:\d+)", up.stdout).group(1)  # type: ignore[union-attr]
        if cli("deploy", "--host", name).returncode != 0:
            print("the first deploy failed", file=sys.stderr)
            return 1
        container = f"mlops-sandbox-{name}"
        subprocess.run(["podman", "exec", container, "sh", "-c",
                        "nohup python3 -m http.server 5001 >/dev/null 2>&1 &"], env=ENV, check=True)
        for i in range(args.runs):
            secs, rc = timed("deploy", "--host", name, "--port", "5001")
            assert rc == 1, f"refused port change exited {rc}"
            results["refused_port_s"].append(secs)
            workers = "3" if i % 2 == 0 else "4"
            secs, rc = timed("deploy", "--host", name, "--check", "--workers", workers)
            assert rc == 0, f"--check exited {rc}"
            results["check_s"].append(secs)
            down, took, rc = outage_during(url, ["deploy", "--host", name, "--workers", workers])
            assert rc == 0, f"config change exited {rc}"
            results["change_outage_s"].append(down)
            results["change_deploy_s"].append(took)
            print(f"run {i + 1}: refused port {results['refused_port_s'][-1]:.1f} s, --check "
                  f"{results['check_s'][-1]:.1f} s, config change outage {down:.1f} s (deploy {took:.1f} s)")
    finally:
        cli("sandbox", "down", "--name", name)
    medians = {k: round(statistics.median(v), 1) for k, v in results.items() if v}
    print(json.dumps(medians) if args.json else "medians: " + ", ".join(f"{k} {v}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
