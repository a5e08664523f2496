#!/usr/bin/env python3
"""Benchmark `mlops-provision` against the manual runbook on identical fresh sandbox VMs.

Prints numbers; it is not a test (exit 0 whatever the numbers, 1 when a measurement failed).
Each wall time is the median of --runs samples, every sample on a freshly started sandbox:

  manual    the manual runbook over SSH as the sandbox's sudo user: apt-get python3-venv,
            python3 -m venv, pip install mlflow, nohup mlflow server; from the first SSH
            command until /health answers 200 on the published port (polled from here)
  cold      `mlops-provision deploy --host NAME` with an empty MLOPS_PROVISION_CACHE (the
            wheelhouse is downloaded during the deploy)
  warm      the same with the shared wheelhouse cache already built
  redeploy  a no-change re-deploy of an already deployed sandbox
  fleet     one `deploy --host A --host B ...` of --fleet fresh sandboxes at once (wheelhouse
            built), against `warm`: one host alone (goal: at most 1.6x); every host must end
            deployed and healthy
  help      `mlops-provision --help`
  health    /health latency from this machine on the deployed server

Sandboxes are named bench-<id>-<scenario>-<n> and are always removed at the end. Usage:
  python scripts/bench.py [--runs 3] [--distro debian12] [--only manual,cold,...] [--fleet 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchlib import (
    CLI,
    CONTAINERS_CONF,
    REPO,
    VENV_BIN,
    BenchError,
    Log,
    add_load_args,
    add_output_args,
    add_sample_args,
    children_cpu_seconds,
    cli_env,
    http_ok,
    measured,
    percentile,
    positive,
    sandbox_cpu_seconds,
    settle,
    wait_for,
)

if TYPE_CHECKING:
    from mlops_provision.sandbox.machines import Sandbox

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SCENARIOS = ("manual", "cold", "warm", "redeploy", "fleet", "help", "health")
DEFAULT_MLFLOW_VERSION = "3.17.2"

# (label, numerator scenario, denominator scenario or None, comparison, target, unit)
GOALS: list[tuple[str, str, str | None, str, float, str]] = [
    ("cold deploy / manual runbook", "cold", "manual", "<=", 1.15, "x"),
    ("warm-wheelhouse deploy / manual", "warm", "manual", "<=", 0.60, "x"),
    ("no-change re-deploy", "redeploy", None, "<=", 8.0, "s"),
    ("fleet deployed at once / one host", "fleet", "warm", "<=", 1.6, "x"),
    ("mlops-provision --help", "help", None, "<", 0.3, "s"),
]

# Runs as the sandbox's sudo user through `bash -s`. The `@phase` lines time each step; the
# CA bundle copied beforehand stands in for the corporate proxy that pip in a container needs.
MANUAL_RUNBOOK = """\
set -euo pipefail
phase() {{ echo "@phase $1 $(date +%s.%N)"; }}
phase apt
sudo DEBIAN_FRONTEND=noninteractive apt-get update
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
phase venv
python3 -m venv ~/venv
phase pip
PIP_CERT=~/ca-certificates.crt ~/venv/bin/pip install --disable-pip-version-check mlflow=={version}
phase start
nohup ~/venv/bin/mlflow server --backend-store-uri sqlite:///mlflow.db --default-artifact-root file:artifacts \\
  --host 0.0.0.0 --port 5000 >mlflow.log 2>&1 </dev/null &
"""

# Not timed, like the CA bundle copy: the sandbox image (recipe r1) writes the literal text
# `$(. /etc/os-release; ...)` into sources.list, so apt-get update fails on it. A real VM has
# a working sources.list; this restores one. Prints "fixed" when it had to.
FIX_SOURCES_LIST = """\
set -eu
if grep -qF '$(' /etc/apt/sources.list 2>/dev/null; then
  mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
  . /etc/os-release
  echo "deb $mirror $VERSION_CODENAME main" | sudo tee /etc/apt/sources.list >/dev/null
  echo fixed
fi
"""


@dataclass
class Ran:
    seconds: float
    lines: list[tuple[float, str]]  # (seconds since start, line) of stdout and stderr merged

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@dataclass
class Scenario:
    label: str
    unit: str  # "s" or "ms"
    samples: list[float] = field(default_factory=list)
    discarded: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average as each sample began
    window_loads: list[float] = field(default_factory=list)  # its mean while each sample ran (long samples)
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return round(statistics.median(self.samples), 4) if self.samples else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "unit": self.unit, "median": self.median,
                               "samples": self.samples}
        if self.discarded:
            out["discarded"] = self.discarded
        if self.loads:
            out["load1_at_start"] = self.loads
        if self.window_loads:
            out["load1_mean_during"] = self.window_loads
        if self.details:
            out["details"] = self.details
        return out


def _role_mlflow_version() -> str:
    """The MLflow release the roles deploy, so the manual runbook installs the same one."""
    import yaml
    from hand_install import pinned_version  # scripts/, beside this file

    from mlops_provision import paths

    try:  # the roles of the CLI under test, which need not be this checkout's
        return pinned_version(paths.roles_dir())
    except (OSError, LookupError, TypeError, yaml.YAMLError):
        return DEFAULT_MLFLOW_VERSION


class LoadMonitor(threading.Thread):
    """Samples the 1-minute load average every 2 s: other people's work on this machine shows up."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(2.0):
            self.samples.append((time.monotonic(), os.getloadavg()[0]))

    def mean_since(self, began: float) -> float | None:
        window = [load for at, load in self.samples if at >= began]
        return round(statistics.mean(window), 2) if window else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:4]
        self.live: list[str] = []  # sandboxes this run started and has not removed yet
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mlops-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log = Log("bench")
        self.git = _git_state()
        self.monitor = LoadMonitor()
        self.monitor.start()
        self.mlflow_version = args.mlflow_version or _role_mlflow_version()
        self.env = cli_env()
        self.results = {
            "manual": Scenario("manual runbook (apt, venv, pip, start)", "s"),
            "cold": Scenario("cold deploy, no wheelhouse", "s"),
            "warm": Scenario("deploy, wheelhouse already built", "s"),
            "redeploy": Scenario("no-change re-deploy", "s"),
            "fleet": Scenario(f"{args.fleet} hosts in one deploy", "s"),
            "help": Scenario("mlops-provision --help", "s"),
            "health": Scenario(f"/health latency ({args.health_requests} requests)", "ms"),
        }

    # ---- plumbing -----------------------------------------------------------------------

    def run(self, cmd: list[str], log_name: str, *, env: dict[str, str] | None = None,
            stdin: str | None = None, timeout: float | None = None) -> Ran:
        """Run cmd with stdout and stderr merged; keep each line, stamped, in the log dir."""
        began = time.monotonic()
        proc = subprocess.Popen(cmd, env=env or self.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        lines: list[tuple[float, str]] = []
        try:
            if timer:
                timer.start()
            if stdin is not None and proc.stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.close()
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.monotonic() - began, line.rstrip("\n")))
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        ran = Ran(time.monotonic() - began, lines)
        log = self.log_dir / f"{log_name}.log"
        log.write_text(f"$ {' '.join(cmd)}\n" + "".join(f"{t:8.2f} {text}\n" for t, text in lines)
                       + f"# exit {returncode} after {ran.seconds:.2f} s\n")
        if timeout and ran.seconds >= timeout:
            raise BenchError(f"{' '.join(cmd[:4])}... did not finish within {timeout:.0f} s; see {log}")
        if returncode != 0:
            raise BenchError(f"{' '.join(cmd[:4])}... exited {returncode} after {ran.seconds:.1f} s; "
                             f"see {log}:\n{ran.text[-1500:]}")
        return ran

    def settle(self, scenario: str) -> None:
        """Wait (bounded) until the machine is quiet before a timed sample; note the load it starts at."""
        self.results[scenario].loads.append(settle(self.args.max_load, self.args.load_wait, self.log, scenario))

    def note_window(self, scenario: str, seconds: float) -> None:
        mean = self.monitor.mean_since(time.monotonic() - seconds)
        if mean is not None:
            self.results[scenario].window_loads.append(mean)

    def name(self, scenario: str, index: int) -> str:
        return f"bench-{self.run_id}-{scenario}-{index}"

    def up(self, name: str) -> Sandbox:
        from mlops_provision.sandbox import machines

        assert name.startswith("bench-")
        self.log(f"sandbox up {name} ({self.args.distro})")
        self.live.append(name)
        self.run([str(CLI), "sandbox", "up", "--name", name, "--distro", self.args.distro], f"{name}-up")
        box = machines.load(name)
        if box is None:
            raise BenchError(f"sandbox {name} came up but has no record in the state directory")
        return box

    def down(self, name: str) -> None:
        assert name.startswith("bench-")
        try:
            self.run([str(CLI), "sandbox", "down", "--name", name], f"{name}-down", timeout=120)
        except BenchError as exc:
            self.log(f"warning: could not remove sandbox {name}: {exc}")
        if name in self.live:
            self.live.remove(name)

    def cleanup(self) -> None:
        for name in list(self.live):
            self.log(f"sandbox down {name}")
            self.down(name)

    def deploy_env(self, cache: Path | None = None) -> dict[str, str]:
        """The CLI's environment for a deploy: this machine's cache, or `cache`; PyPI-only pip."""
        env = dict(self.env)
        if cache is not None:
            env["MLOPS_PROVISION_CACHE"] = str(cache)
        if not self.args.host_pip_config:
            # The control node's pip as on a plain machine: PyPI only, empty HTTP cache. This
            # machine's pip config adds local file indexes holding most of MLflow's dependencies,
            # which the manual runbook on the VM cannot use: keeping them would flatter `cold`.
            env["PIP_CONFIG_FILE"] = os.devnull
            env.pop("PIP_FIND_LINKS", None)
            env.pop("PIP_EXTRA_INDEX_URL", None)
            env["PIP_CACHE_DIR"] = str(Path(cache or self.log_dir) / "pip-cache")
            env.setdefault("PIP_CERT", str(CA_BUNDLE))
        return env

    def deploy(self, box: Sandbox, log_name: str, cache: Path | None = None) -> tuple[float, dict[str, Any]]:
        host_before, control_before = sandbox_cpu_seconds(box.name), children_cpu_seconds()
        ran = self.run([str(CLI), "deploy", "--host", box.name], log_name, env=self.deploy_env(cache),
                       timeout=self.args.timeout)
        control_cpu, host_after = children_cpu_seconds() - control_before, sandbox_cpu_seconds(box.name)
        seconds, output = ran.seconds, ran.text
        detail: dict[str, Any] = {"sandbox": box.name, "wall_s": round(seconds, 2), **_cpu(
            control_cpu, [(host_before, host_after)])}
        changed = re.search(rf"^{re.escape(box.name)}: .*changed=(\d+)", output, re.MULTILINE)
        if changed:
            detail["changed"] = int(changed.group(1))
        playbook = re.search(r"^duration ([0-9.]+) s", output, re.MULTILINE)
        if playbook:
            detail["playbook_s"] = float(playbook.group(1))
        detail["nothing_to_do"] = "checked    nothing to do" in output
        detail.update(_task_times(ran))
        return seconds, detail

    # ---- scenarios ------------------------------------------------------------------------

    def manual(self, index: int) -> None:
        box = self.up(self.name("manual", index))
        ssh_opts = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "StrictHostKeyChecking=accept-new",
                    "-o", f"UserKnownHostsFile={box.known_hosts}", "-i", box.key_file]
        target = f"{box.user}@127.0.0.1"
        self.run(["scp", *ssh_opts, "-P", str(box.ssh_port), str(CA_BUNDLE), f"{target}:ca-certificates.crt"],
                 f"{box.name}-scp-ca")
        fixed = self.run(["ssh", *ssh_opts, "-p", str(box.ssh_port), target, "bash", "-s"],
                            f"{box.name}-fix-sources", stdin=FIX_SOURCES_LIST)
        if "fixed" in fixed.text:
            self.log(f"note: repaired the broken /etc/apt/sources.list of {box.name} (not timed)")
        self.settle("manual")
        self.log(f"manual runbook #{index} on {box.name}")
        began = time.monotonic()
        output = self.run(["ssh", *ssh_opts, "-p", str(box.ssh_port), target, "bash", "-s"],
                             f"{box.name}-runbook", stdin=MANUAL_RUNBOOK.format(version=self.mlflow_version),
                             timeout=self.args.timeout)
        url = f"{box.url}/health"
        if not wait_for(lambda: http_ok(url), self.args.timeout, interval=0.25):
            server_log = self.run(["ssh", *ssh_opts, "-p", str(box.ssh_port), target, "tail -50 mlflow.log"],
                                  f"{box.name}-mlflow-log")
            raise BenchError(f"manual runbook: {url} did not answer 200 in {self.args.timeout:.0f} s:\n"
                             f"{server_log.text[-1500:]}")
        ended = time.time()
        seconds = time.monotonic() - began
        marks = [(m.group(1), float(m.group(2))) for m in re.finditer(r"^@phase (\w+) ([0-9.]+)$", output.text, re.M)]
        ends = [at for _, at in marks[1:]] + [ended]
        phases = {name: round(end - at, 2) for (name, at), end in zip(marks, ends, strict=True)}
        self.results["manual"].samples.append(round(seconds, 2))
        self.note_window("manual", seconds)
        self.results["manual"].details.append({"sandbox": box.name, "wall_s": round(seconds, 2), "phases_s": phases,
                                               "sources_list_repaired": "fixed" in fixed.text})
        self.log(f"manual runbook #{index}: {seconds:.1f} s {phases}")
        self.down(box.name)

    def cold(self, index: int) -> None:
        box = self.up(self.name("cold", index))
        cache = Path(tempfile.mkdtemp(prefix="mlops-bench-cache-"))
        try:
            self.settle("cold")
            self.log(f"cold deploy #{index} on {box.name} (empty cache {cache})")
            seconds, detail = self.deploy(box, f"{box.name}-deploy", cache=cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        self.results["cold"].samples.append(round(seconds, 2))
        self.note_window("cold", seconds)
        self.results["cold"].details.append(detail)
        self.log(f"cold deploy #{index}: {seconds:.1f} s")
        self.down(box.name)

    def warm(self, index: int, keep: bool) -> Sandbox:
        """Deploy with the shared wheelhouse; a run that had to build it first is discarded."""
        from mlops_provision import paths

        wheelhouse = paths.cache_dir() / "wheelhouse"
        for attempt in (1, 2):
            box = self.up(self.name("warm", index) + ("" if attempt == 1 else "b"))
            before = set(wheelhouse.glob("mlflow-*.tar"))
            self.settle("warm")
            self.log(f"warm deploy #{index} on {box.name}")
            seconds, detail = self.deploy(box, f"{box.name}-deploy")
            if set(wheelhouse.glob("mlflow-*.tar")) - before and attempt == 1:
                self.log(f"warm deploy #{index}: the shared wheelhouse was missing and got built; "
                         f"discarding this {seconds:.1f} s sample and repeating")
                self.results["warm"].discarded.append(round(seconds, 2))
                self.results["warm"].loads.pop()
                self.down(box.name)
                continue
            self.results["warm"].samples.append(round(seconds, 2))
            self.note_window("warm", seconds)
            self.results["warm"].details.append(detail)
            self.log(f"warm deploy #{index}: {seconds:.1f} s")
            break
        if not keep:
            self.down(box.name)
        return box

    def redeploy(self, box: Sandbox) -> None:
        for index in range(1, self.args.runs + 1):
            self.settle("redeploy")
            self.log(f"no-change re-deploy #{index} on {box.name}")
            seconds, detail = self.deploy(box, f"{box.name}-redeploy-{index}")
            if detail.get("changed"):
                self.log(f"warning: re-deploy #{index} reported changed={detail['changed']} (not idempotent)")
            if not detail.get("nothing_to_do"):
                self.log(f"warning: re-deploy #{index} did not end at the nothing-to-do check")
            self.results["redeploy"].samples.append(round(seconds, 2))
            self.note_window("redeploy", seconds)
            self.results["redeploy"].details.append(detail)
            self.log(f"re-deploy #{index}: {seconds:.1f} s")

    def fleet(self, index: int) -> None:
        """--fleet fresh sandboxes deployed by one command, with the shared wheelhouse."""
        boxes = [self.up(f"{self.name('fleet', index)}{chr(ord('a') + k)}") for k in range(self.args.fleet)]
        self.settle("fleet")
        self.log(f"fleet deploy #{index}: {', '.join(box.name for box in boxes)}")
        cmd = [str(CLI), "deploy"] + [arg for box in boxes for arg in ("--host", box.name)]
        host_before, control_before = [sandbox_cpu_seconds(box.name) for box in boxes], children_cpu_seconds()
        ran = self.run(cmd, f"{self.name('fleet', index)}-deploy", env=self.deploy_env(), timeout=self.args.timeout)
        cpu = _cpu(children_cpu_seconds() - control_before,
                   list(zip(host_before, [sandbox_cpu_seconds(box.name) for box in boxes], strict=True)))
        deployed = [box.name for box in boxes
                    if re.search(rf"^{re.escape(box.name)}: (deployed|up to date)", ran.text, re.MULTILINE)]
        healthy = len(re.findall(r"^  health +OK", ran.text, re.MULTILINE))
        if len(deployed) != len(boxes) or healthy != len(boxes):
            raise BenchError(f"fleet deploy #{index}: {len(deployed)} of {len(boxes)} hosts deployed, "
                             f"{healthy} healthy:\n{ran.text[-2000:]}")
        self.results["fleet"].samples.append(round(ran.seconds, 2))
        self.note_window("fleet", ran.seconds)
        self.results["fleet"].details.append({"sandboxes": [box.name for box in boxes], "wall_s": round(ran.seconds, 2),
                                              **cpu, **_task_times(ran)})
        self.log(f"fleet deploy #{index}: {ran.seconds:.1f} s for {len(boxes)} hosts; CPU {cpu}")
        for box in boxes:
            self.down(box.name)

    def help(self) -> None:
        cmd = [str(CLI), "--help"]
        self.settle("help")
        subprocess.run(cmd, env=self.env, capture_output=True, check=True)  # warm the page cache
        for _ in range(self.args.help_runs):
            began = time.monotonic()
            subprocess.run(cmd, env=self.env, capture_output=True, check=True)
            self.results["help"].samples.append(round(time.monotonic() - began, 4))
        self.log(f"--help: median {self.results['help'].median:.3f} s of {self.args.help_runs}")

    def health(self, box: Sandbox) -> None:
        url = f"{box.url}/health"
        if not http_ok(url):
            raise BenchError(f"{url} does not answer 200 on the deployed sandbox")
        self.settle("health")
        for _ in range(self.args.health_requests):
            began = time.perf_counter()
            if not http_ok(url):
                raise BenchError(f"{url} stopped answering 200 during the latency run")
            self.results["health"].samples.append(round((time.perf_counter() - began) * 1000, 2))
        samples = self.results["health"].samples
        self.results["health"].details.append({"url": url, "p95_ms": percentile(samples, 0.95),
                                               "max_ms": max(samples)})
        self.log(f"/health: median {self.results['health'].median:.1f} ms of {self.args.health_requests}")

    def measure(self) -> None:
        only = self.args.only
        if "help" in only:
            self.help()
        deployed: Sandbox | None = None
        for index in range(1, self.args.runs + 1):
            # Rounds interleave the scenarios, so drifting network speed hits each one alike.
            if "manual" in only:
                self.manual(index)
            if "cold" in only:
                self.cold(index)
            if "warm" in only:
                last = index == self.args.runs
                box = self.warm(index, keep=last and bool({"redeploy", "health"} & only))
                deployed = box if last else deployed
            if "fleet" in only:
                self.fleet(index)
        if {"redeploy", "health"} & only:
            if deployed is None:
                deployed = self.up(self.name("deployed", 1))
                self.log(f"deploy (not measured) on {deployed.name}")
                self.deploy(deployed, f"{deployed.name}-deploy")
            if "redeploy" in only:
                self.redeploy(deployed)
            if "health" in only:
                self.health(deployed)

    # ---- output ---------------------------------------------------------------------------

    def goals(self) -> list[dict[str, Any]]:
        rows = []
        for label, num, den, op, target, unit in GOALS:
            top = self.results[num].median
            bottom = self.results[den].median if den else 1.0
            value = None if top is None or not bottom else top / bottom
            ok = None if value is None else (value <= target if op == "<=" else value < target)
            rows.append({"goal": label, "value": None if value is None else round(value, 3), "unit": unit,
                         "target": f"{op} {target:g}", "met": ok})
        return rows

    def report(self) -> dict[str, Any]:
        return {
            "distro": self.args.distro, "runs": self.args.runs, "mlflow_version": self.mlflow_version,
            "control_pip": "host config" if self.args.host_pip_config else "PyPI only, empty cache",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "cpus": os.cpu_count(),
            "git": self.git, "log_dir": str(self.log_dir),
            "scenarios": {key: s.to_dict() for key, s in self.results.items() if key in self.args.only},
            "goals": self.goals(),
        }

    def table(self) -> str:
        lines = [f"mlops-provision benchmark: {self.args.distro}, mlflow {self.mlflow_version}, "
                 f"medians of {self.args.runs} runs, each on a fresh sandbox "
                 f"({self.args.help_runs} --help runs, {self.args.health_requests} /health requests)", "",
                 f"{'scenario':<42} {'median':>10}  {'load':>9}  samples"]
        for key, s in self.results.items():
            if key not in self.args.only or s.median is None:
                continue
            shown = s.samples if len(s.samples) <= 5 else [min(s.samples), max(s.samples)]
            samples = ", ".join(f"{v:g}" for v in shown) + (" (min, max)" if len(s.samples) > 5 else "")
            load = (f"{max(s.loads):.1f}" if s.loads else "-") + (
                f"/{max(s.window_loads):.1f}" if s.window_loads else "")
            lines.append(f"{s.label:<42} {_fmt(s.median, s.unit):>10}  {load:>9}  [{samples}]")
        manual = self.results["manual"].details
        if manual:
            phases = {k: statistics.median(d["phases_s"].get(k, 0.0) for d in manual) for k in manual[0]["phases_s"]}
            lines.append("  manual phases (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        for key in ("cold", "warm", "redeploy"):
            s = self.results[key]
            if key in self.args.only and s.details and s.median is not None:
                typical = min(s.details, key=lambda d: abs(d["wall_s"] - (s.median or 0.0)))
                slow = list(typical.get("slowest_tasks_s", {}).items())[:3]
                if slow:
                    lines.append(f"  {key} slowest tasks ({typical['sandbox']}): "
                                 + ", ".join(f"{name} {sec:.1f}" for name, sec in slow))
        for key in ("cold", "warm", "fleet"):
            cpu = [d for d in self.results[key].details if "cpu_hosts_s" in d]
            if key in self.args.only and cpu:
                def med(field: str, rows: list[dict[str, Any]] = cpu) -> float:
                    return statistics.median(d[field] for d in rows)
                lines.append(f"  {key} CPU-seconds (median): control node {med('cpu_control_s'):.1f}, "
                             f"sandboxes {med('cpu_hosts_s'):.1f}; on {os.cpu_count()} cores no less than "
                             f"{med('cpu_floor_s'):.1f} s of wall time")
        lines.append("  (load: the highest 1-minute load average at the start of a sample / the highest mean "
                     f"while one ran; {os.cpu_count()} CPUs)")
        lines += ["", f"{'goal':<42} {'value':>10}  {'target':<9} met"]
        for row in self.goals():
            value = "n/a" if row["value"] is None else _fmt(row["value"], row["unit"])
            met = "n/a" if row["met"] is None else ("yes" if row["met"] else "NO")
            lines.append(f"{row['goal']:<42} {value:>10}  {row['target'] + ' ' + row['unit']:<9} {met}")
        lines.append(f"\ntree: {self.git}; logs: {self.log_dir}")
        return "\n".join(lines)


_TASK_LINE = re.compile(r"^\[\s*\d+(?:/\s*\d*\s*)?\] [^:]+: (.+)$")


def _cpu(control: float, hosts: list[tuple[float | None, float | None]]) -> dict[str, Any]:
    """CPU-seconds of a deploy: the control node's (ansible-playbook, ssh, the CLI) and the
    sandboxes' (everything in their containers), and the shortest wall time that much CPU
    allows on this machine's cores, since the sandboxes share them with the control node."""
    used = [after - before for before, after in hosts if before is not None and after is not None]
    out: dict[str, Any] = {"cpu_control_s": round(control, 1)}
    if len(used) == len(hosts):
        out["cpu_hosts_s"] = round(sum(used), 1)
        out["cpu_floor_s"] = round((control + sum(used)) / (os.cpu_count() or 1), 1)
    return out


def _task_times(ran: Ran, top: int = 5) -> dict[str, Any]:
    """From the CLI's one-line-per-task progress (stamped as it arrived): where a deploy spends its time."""
    starts = [(t, m.group(1)) for t, line in ran.lines if (m := _TASK_LINE.match(line))]
    if not starts:
        return {}
    after = next((t for t, line in ran.lines if t > starts[-1][0] and not _TASK_LINE.match(line)), ran.seconds)
    ends = [t for t, _ in starts[1:]] + [after]
    tasks = sorted(((end - t, name) for (t, name), end in zip(starts, ends, strict=True)), reverse=True)
    return {"before_first_task_s": round(starts[0][0], 2), "after_last_task_s": round(ran.seconds - after, 2),
            "slowest_tasks_s": {name: round(sec, 2) for sec, name in tasks[:top]}}


def _git_state() -> str:
    """The commit measured, and whether the working tree differed from it (others edit roles/, cli/)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.3f} s" if value < 1 else f"{value:.1f} s"


def _scenarios(text: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(sorted(unknown))}; "
                                         f"valid: {', '.join(SCENARIOS)}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_args(ap)
    ap.add_argument("--only", type=_scenarios, default=set(SCENARIOS),
                    help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)")
    ap.add_argument("--fleet", type=positive, default=4, help="hosts of the fleet scenario (default 4)")
    ap.add_argument("--help-runs", type=positive, default=10, help="--help samples (default 10)")
    ap.add_argument("--health-requests", type=positive, default=50, help="/health samples (default 50)")
    ap.add_argument("--mlflow-version", help="for the manual runbook (default: the role's mlflow_version)")
    ap.add_argument("--host-pip-config", action="store_true",
                    help="cold deploy: keep this machine's pip config and cache (default: PyPI only, empty cache)")
    add_load_args(ap, float(os.cpu_count() or 1), "the CPU count", load_wait=900)
    ap.add_argument("--timeout", type=float, default=1800, help="per deploy / runbook, seconds (default 1800)")
    add_output_args(ap)
    ap.add_argument("--json-file", help="also write the JSON results to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        import mlops_provision  # noqa: F401
    except ImportError:
        python = VENV_BIN / "python"
        if python.exists() and Path(sys.prefix).resolve() != python.parent.parent.resolve():
            # Re-run under the project's venv (`make bench` puts it first on PATH already).
            os.execv(python, [str(python), __file__, *(sys.argv[1:] if argv is None else argv)])  # noqa: S606
        sys.stderr.write("bench: mlops_provision is not importable; run `make setup` first\n")
        return 1
    args = parse_args(argv)
    if not CLI.exists():
        sys.stderr.write(f"bench: {CLI} is missing; run `make setup` first\n")
        return 1
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    bench = Bench(args)
    bench.log(f"run id {bench.run_id}, logs in {bench.log_dir}")
    failed = measured(bench.measure, bench.cleanup, bench.log)
    if failed:
        return failed
    report = json.dumps(bench.report(), indent=2)
    if args.json_file:
        Path(args.json_file).write_text(report + "\n")
    print(report if args.json else bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
