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
import subprocess
import sys
import uuid

from benchlib import CONTAINER_PREFIX, cli, outage_during, print_medians, private_state_env, sandbox, timed_cli

ENV = private_state_env()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    name = f"safe-bench-{uuid.uuid4().hex[:6]}"
    results: dict[str, list[float]] = {"refused_port_s": [], "check_s": [], "change_outage_s": [],
                                       "change_deploy_s": []}
    with sandbox(name, env=ENV) as url:
        if cli("deploy", "--host", name, env=ENV).returncode != 0:
            print("the first deploy failed", file=sys.stderr)
            return 1
        subprocess.run(["podman", "exec", CONTAINER_PREFIX + name, "sh", "-c",
                        "nohup python3 -m http.server 5001 >/dev/null 2>&1 &"], env=ENV, check=True)
        for i in range(args.runs):
            secs, rc = timed_cli("deploy", "--host", name, "--port", "5001", env=ENV)
            assert rc == 1, f"refused port change exited {rc}"
            results["refused_port_s"].append(secs)
            workers = "3" if i % 2 == 0 else "4"
            secs, rc = timed_cli("deploy", "--host", name, "--check", "--workers", workers, env=ENV)
            assert rc == 0, f"--check exited {rc}"
            results["check_s"].append(secs)
            down, took, rc = outage_during(url, ["deploy", "--host", name, "--workers", workers], ENV)
            assert rc == 0, f"config change exited {rc}"
            results["change_outage_s"].append(down)
            results["change_deploy_s"].append(took)
            print(f"run {i + 1}: refused port {results['refused_port_s'][-1]:.1f} s, --check "
                  f"{results['check_s'][-1]:.1f} s, config change outage {down:.1f} s (deploy {took:.1f} s)")
    print_medians(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
