"""What the benchmark scripts share: running the CLI, sandboxes, HTTP probes, waiting, timing,
percentiles, common flags and the end of a run. The measurements themselves stay in each script.

Imported as `benchlib` by the scripts (Python puts scripts/ on sys.path when one of them runs)
and as `scripts.benchlib` by tests/e2e (the repository root is on sys.path there, as for
`scripts.hand_install`). Both ways work without sys.path tricks only while this module imports
nothing from beside it, so it uses the standard library alone; hand_install is imported both
ways too and so does not import this module.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
# The CLI under test: what users install (`make bench` sets MLOPS_PROVISION_CLI), else .venv's.
CLI = Path(os.environ.get("MLOPS_PROVISION_CLI") or VENV_BIN / "mlops-provision")
# The mlflow clients of the benchmarks send no usage telemetry anywhere.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
CONTAINERS_CONF = REPO / "cli" / "mlops_provision" / "sandbox" / "containers.conf"
CONTAINER_PREFIX = "mlops-sandbox-"  # mlops_provision.sandbox.machines.CONTAINER_PREFIX
_PUBLISHED = re.compile(r"published at (http://127\.0\.0\.1:\d+)")


class BenchError(RuntimeError):
    """A measurement failed: the numbers would be meaningless."""


class Log:
    """Progress lines on stderr, each stamped with the seconds since the benchmark began."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        sys.stderr.write(f"[{self.prefix} {time.monotonic() - self.started:7.1f}s] {message}\n")
        sys.stderr.flush()


# ---- the CLI and sandboxes ------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """This environment as the Makefile sets it: containers.conf, the venv first on PATH, ansible.cfg."""
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    return env


def private_state_env() -> dict[str, str]:
    """This environment with containers.conf and a new state directory, so an operator's sandboxes stay unseen."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF),
            "MLOPS_PROVISION_HOME": tempfile.mkdtemp(prefix="mlops-bench-state-")}


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = False,
        timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run cmd with its output captured; with check, exit 1 with the tail of its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        shown = " ".join([Path(cmd[0]).name, *("..." if "\n" in arg else arg for arg in cmd[1:])])
        raise SystemExit(f"{shown} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def cli(*args: str, env: dict[str, str] | None = None, check: bool = False,
        timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`mlops-provision ARGS` from the project's venv, through run()."""
    return run([str(CLI), *args], env=env, check=check, timeout=timeout)


def timed_cli(*args: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Seconds `mlops-provision ARGS` took, and its exit code."""
    began = time.monotonic()
    proc = cli(*args, env=env)
    return time.monotonic() - began, proc.returncode


def published_url(out: str) -> str:
    """The MLflow URL that `sandbox up` printed ("... is published at http://127.0.0.1:PORT")."""
    match = _PUBLISHED.search(out)
    if match is None:
        raise BenchError(f"`sandbox up` printed no published URL:\n{out[-1500:]}")
    return match.group(1)


@contextmanager
def sandbox(name: str, *up_args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`sandbox up --name NAME UP_ARGS` (exit 1 if it fails), yield its published URL, always `sandbox down`."""
    try:
        yield published_url(cli("sandbox", "up", "--name", name, *up_args, env=env, check=True).stdout)
    finally:
        cli("sandbox", "down", "--name", name, env=env)


def wheelhouse_cache(env: Mapping[str, str] = os.environ) -> Path:
    """The CLI's wheelhouse cache directory for this environment (mlops_provision.paths.cache_dir)."""
    base = env.get("MLOPS_PROVISION_CACHE") or str(
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-provision")
    return Path(base) / "wheelhouse"


def counting_copy(source: BinaryIO, destination: BinaryIO, count: Callable[[int], None]) -> None:
    """shutil.copyfileobj that reports each chunk as it is written (an aborted copy counts what went)."""
    while chunk := source.read(1 << 20):
        destination.write(chunk)
        count(len(chunk))


def admin_password(name: str, env: dict[str, str] | None = None) -> str:
    """The admin password the deploy to host NAME generated, from this machine's secrets store."""
    return cli("user", "admin-password", "--host", name, env=env, check=True).stdout.strip()


# ---- HTTP, waiting and timing ----------------------------------------------------------------


def http_ok(url: str, timeout: float = 2) -> bool:
    """GET url answers 200 (body read) within timeout; False on any error, refusal or other status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http://127.0.0.1 only
            resp.read()
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll condition every interval seconds until it holds (True) or timeout seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def outage_during(url: str, action: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Seconds url/health was not 200 (polled every 50 ms) while `mlops-provision ACTION` ran; its time, exit code."""
    down = 0.0
    stop = threading.Event()

    def poll() -> None:
        nonlocal down
        last = time.monotonic()
        while not stop.is_set():
            ok = http_ok(f"{url}/health", timeout=1)
            now = time.monotonic()
            if not ok:
                down += now - last
            last = now
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        took, returncode = timed_cli(*action, env=env)
    finally:
        stop.set()
        poller.join()
    return down, took, returncode


def settle(max_load: float, patience: float, log: Callable[[str], None], what: str = "") -> float:
    """Wait up to patience s for the 1-minute load average to fall to max_load (0: no wait); the load at the start."""
    load = os.getloadavg()[0]
    if max_load > 0 and load > max_load:
        log(f"load average {load:.1f} > {max_load:g}: waiting up to {patience:.0f} s")
        wait_for(lambda: os.getloadavg()[0] <= max_load, patience, interval=5)
        load = os.getloadavg()[0]
        if load > max_load:
            log(f"warning: measuring {what + ' ' if what else ''}at load average {load:.1f}")
    return round(load, 2)


# ---- statistics and output --------------------------------------------------------------------


def sandbox_cpu_seconds(name: str) -> float | None:
    """CPU time used so far by everything in sandbox `name` (its container's cgroup), or None."""
    out = run(["podman", "inspect", "-f", "{{.State.CgroupPath}}", f"mlops-sandbox-{name}"])
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        stat = Path(root + out.stdout.strip()) / "cpu.stat"
        if out.returncode == 0 and out.stdout.strip() and stat.is_file():
            usage = re.search(r"^usage_usec (\d+)$", stat.read_text(), re.MULTILINE)
            return int(usage.group(1)) / 1e6 if usage else None
    return None


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (and theirs): the control node's share."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample of rank int(n * fraction) (at least 1) among the n samples in ascending order."""
    ordered = sorted(samples)
    return ordered[max(int(len(ordered) * fraction) - 1, 0)]


def print_medians(results: dict[str, list[float]], as_json: bool) -> None:
    """Print each measure's median to 0.1, as one JSON object or a `medians: ...` line; empty ones left out."""
    medians = {k: round(statistics.median(v), 1) for k, v in results.items() if v}
    print(json.dumps(medians) if as_json else "medians: " + ", ".join(f"{k} {v}" for k, v in medians.items()))


# ---- command line and the run's end ------------------------------------------------------------


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_sample_args(ap: argparse.ArgumentParser) -> None:
    """--runs/-n and --distro."""
    ap.add_argument("--runs", "-n", type=positive, default=3, help="samples per scenario (default 3)")
    ap.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])


def add_load_args(ap: argparse.ArgumentParser, max_load: float, max_load_said: str, load_wait: float) -> None:
    """--max-load (default max_load, described as max_load_said) and --load-wait (default load_wait)."""
    ap.add_argument("--max-load", type=float, default=max_load,
                    help="before each timed sample wait for the 1-minute load average to fall to this "
                         f"(default: {max_load_said}; 0: never wait)")
    ap.add_argument("--load-wait", type=float, default=load_wait,
                    help=f"longest wait for --max-load, seconds (default {load_wait:.0f})")


def add_output_args(ap: argparse.ArgumentParser) -> None:
    """--log-dir and --json."""
    ap.add_argument("--log-dir", help="where command output goes (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that remove the sandboxes


def measured(measure: Callable[[], None], cleanup: Callable[[], None], log: Callable[[str], None]) -> int:
    """Run measure, then cleanup in any case: 0, 1 if a measurement failed, 130 on Ctrl-C, 128+N on SIGTERM/SIGHUP."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        measure()
    except BenchError as exc:
        log(f"measurement failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        cleanup()
    return 0
