#!/usr/bin/env python3
"""Benchmark how fast a deployed MLflow server recovers on its own, on one sandbox VM.

Prints numbers; it is not a test (exit 0 whatever the numbers, 1 when a measurement failed).
One sandbox is started and deployed once (not timed); then --runs times each of:

  kill     `kill -9` of mlflow.service's main process -> /health answers 200 again on the
           published port (polled from here), counted only once systemd runs a new main
           process: the old uvicorn workers keep answering while the old cgroup is torn down
  reboot   `podman restart` of the sandbox (the VM reboots) -> /health answers 200 again

Before each timed sample the script waits (bounded) for the 1-minute load average to fall to
--max-load, and notes the load it started at: other containers share this machine.
The sandbox is named rel-bench-<id> and is always removed at the end. Usage:
  python scripts/bench_recovery.py [--runs 3] [--distro debian12] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    CLI,
    CONTAINER_PREFIX,
    BenchError,
    Log,
    add_load_args,
    add_output_args,
    add_sample_args,
    cli_env,
    http_ok,
    measured,
    published_url,
    settle,
    wait_for,
)

UNIT = "mlflow.service"


@dataclass
class Sample:
    seconds: float
    load: float  # 1-minute load average as the sample began
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return round(statistics.median(s.seconds for s in self.samples), 2) if self.samples else None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "median_s": self.median,
                "samples": [{"seconds": s.seconds, "load1_at_start": s.load, **s.detail} for s in self.samples]}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"rel-bench-{uuid.uuid4().hex[:4]}"
        self.container = CONTAINER_PREFIX + self.name
        self.url = ""
        self.live = False
        self.log = Log("bench-recovery")
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mlops-bench-recovery-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = cli_env()
        self.results = {
            "kill": Scenario("kill -9 main process -> healthy"),
            "reboot": Scenario("VM restart (podman restart) -> healthy"),
        }

    # ---- plumbing -----------------------------------------------------------------------

    def run(self, cmd: list[str], log_name: str, timeout: float = 1800) -> str:
        """Run cmd, keep its output in the log dir, raise BenchError when it fails."""
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{' '.join(cmd[:4])}... did not finish within {timeout:.0f} s") from exc
        log = self.log_dir / f"{log_name}.log"
        log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}# exit {proc.returncode}\n")
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd[:4])}... exited {proc.returncode}; see {log}:\n"
                             f"{(proc.stdout + proc.stderr)[-1500:]}")
        return proc.stdout

    def sh(self, command: str) -> str:
        return self.run(["podman", "exec", self.container, "sh", "-c", command], "exec", timeout=120)

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def settle(self) -> float:
        """Wait (bounded) until the machine is quiet before a timed sample; return the load it starts at."""
        return settle(self.args.max_load, self.args.load_wait, self.log)

    def wait_healthy(self, began: float, what: str) -> float:
        """Seconds from `began` until /health answers 200; BenchError after --timeout."""
        if not wait_for(lambda: http_ok(f"{self.url}/health"), self.args.timeout - (time.monotonic() - began),
                        interval=0.1):
            raise BenchError(f"{self.url}/health not 200 within {self.args.timeout:.0f} s after {what}")
        return time.monotonic() - began

    # ---- sandbox --------------------------------------------------------------------------

    def up(self) -> None:
        self.log(f"sandbox up {self.name} ({self.args.distro})")
        self.live = True
        out = self.run([str(CLI), "sandbox", "up", "--name", self.name, "--distro", self.args.distro], "sandbox-up")
        self.url = published_url(out)
        self.log(f"deploy (not measured) on {self.name}")
        self.run([str(CLI), "deploy", "--host", self.name], "deploy")
        if not http_ok(f"{self.url}/health"):
            raise BenchError(f"{self.url}/health does not answer 200 after the deploy")

    def down(self) -> None:
        if not self.live:
            return
        self.log(f"sandbox down {self.name}")
        try:
            self.run([str(CLI), "sandbox", "down", "--name", self.name], "sandbox-down", timeout=120)
            self.live = False
        except BenchError as exc:
            self.log(f"warning: could not remove sandbox {self.name}: {exc}")

    # ---- scenarios ------------------------------------------------------------------------

    def kill(self, index: int) -> None:
        before = self.show("MainPID", "NRestarts")
        if before["MainPID"] in ("", "0"):
            raise BenchError(f"{UNIT} has no main process before kill #{index}")
        load = self.settle()
        began = time.monotonic()
        self.sh(f"kill -9 {before['MainPID']}")
        if not wait_for(lambda: self.show("MainPID")["MainPID"] not in ("0", before["MainPID"]),
                        self.args.timeout, interval=0.2):
            raise BenchError(f"systemd started no new main process within {self.args.timeout:.0f} s of kill #{index}")
        new_pid = time.monotonic() - began
        seconds = self.wait_healthy(began, f"kill #{index}")
        after = self.show("MainPID", "NRestarts")
        self.results["kill"].samples.append(Sample(round(seconds, 2), load, {
            "new_main_pid_s": round(new_pid, 2),
            "nrestarts": f"{before['NRestarts']}->{after['NRestarts']}"}))
        self.log(f"kill -9 #{index}: healthy after {seconds:.1f} s (new main process after {new_pid:.1f} s, "
                 f"load {load:.1f})")

    def reboot(self, index: int) -> None:
        load = self.settle()
        began = time.monotonic()
        self.run(["podman", "restart", self.container], f"restart-{index}", timeout=300)
        restart = time.monotonic() - began
        seconds = self.wait_healthy(began, f"restart #{index}")
        self.results["reboot"].samples.append(Sample(round(seconds, 2), load, {"podman_restart_s": round(restart, 2)}))
        self.log(f"restart #{index}: healthy after {seconds:.1f} s (podman restart took {restart:.1f} s, "
                 f"load {load:.1f})")

    def measure(self) -> None:
        self.up()
        for index in range(1, self.args.runs + 1):
            # Interleaved, so drifting load on the machine hits both alike.
            self.kill(index)
            self.reboot(index)

    # ---- output ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return {"distro": self.args.distro, "runs": self.args.runs, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cpus": os.cpu_count(), "log_dir": str(self.log_dir),
                "scenarios": {key: s.to_dict() for key, s in self.results.items()}}

    def table(self) -> str:
        lines = [f"mlops-provision recovery benchmark: {self.args.distro}, {self.args.runs} runs on one "
                 f"deployed sandbox; seconds until /health answers 200 from this machine", "",
                 f"{'scenario':<40} {'run':>6} {'seconds':>8} {'load':>6}  detail"]
        for s in self.results.values():
            for index, sample in enumerate(s.samples, 1):
                detail = ", ".join(f"{k} {v}" for k, v in sample.detail.items())
                lines.append(f"{s.label:<40} {index:>6} {sample.seconds:>8.1f} {sample.load:>6.1f}  {detail}")
            if s.median is not None:
                lines.append(f"{s.label:<40} {'median':>6} {s.median:>8.1f}")
        lines.append(f"  (load: the 1-minute load average as a sample began; {os.cpu_count()} CPUs)")
        lines.append(f"\nlogs: {self.log_dir}")
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_args(ap)
    add_load_args(ap, float(2 * (os.cpu_count() or 1)), "twice the CPU count", load_wait=300)
    ap.add_argument("--timeout", type=float, default=300,
                    help="longest wait for a recovery, seconds (default 300)")
    add_output_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not CLI.exists():
        sys.stderr.write(f"bench-recovery: {CLI} is missing; run `make setup` first\n")
        return 1
    bench = Bench(args)
    bench.log(f"sandbox {bench.name}, logs in {bench.log_dir}")
    failed = measured(bench.measure, bench.down, bench.log)
    if failed:
        return failed
    print(json.dumps(bench.report(), indent=2) if args.json else bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
