#!/usr/bin/env python3
"""What a fleet costs the control node, per host: CPU-seconds and bytes, by operation and size.

For each fleet size (--hosts, e.g. 1,4) fresh sandboxes are started and driven by one command
per operation, as an operator would (`--host A --host B ...`):

  deploy     the first deploy (the wheelhouse cache must be built: run one deploy first)
  no-change  the same deploy again (it ends at the "nothing to do" check)
  status     `status`
  backup     `backup` (each host's archive comes back to this machine)

Per operation it prints the wall time, the control node's CPU-seconds per host (every CPU
tick of this machine during the command minus what the sandboxes' cgroups used: the CLI,
ansible-playbook, its workers, ssh and its connection masters), and per host the bytes the
hosts received (`rx`, from their network counters) and sent back (`tx`). With --mirror the hosts
download the wheelhouse from a plain-HTTP mirror of the cache on the podman network's gateway
(`--wheelhouse-url`); the bytes it served are printed apart and left out of what the control
node sent, and so is the CPU this process spent serving them. Nothing else should run meanwhile:
the CPU figure counts the whole machine.

  python scripts/bench_fleet.py [--hosts 1,4] [--mirror] [--json]

Prints numbers; exit 0 whatever they are, 1 when a command failed. Sandboxes are named
bench-fleet-<id>-<n> and are always removed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    CONTAINER_PREFIX,
    BenchError,
    Log,
    cli,
    counting_copy,
    measured,
    private_state_env,
    run,
    wheelhouse_cache,
)

OPERATIONS = ("deploy", "no-change", "status", "backup")


def busy_ticks() -> int:
    """Busy CPU ticks of the whole machine since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def sandbox_cpu(name: str) -> float:
    """CPU-seconds used so far by sandbox `name` (its container's cgroup, v2 or v1)."""
    path = run(["podman", "inspect", "-f", "{{.State.CgroupPath}}", CONTAINER_PREFIX + name], check=True).stdout.strip()
    v2 = Path("/sys/fs/cgroup" + path) / "cpu.stat"
    if v2.is_file():
        return int(re.search(r"^usage_usec (\d+)$", v2.read_text(), re.M).group(1)) / 1e6  # type: ignore[union-attr]
    v1 = Path("/sys/fs/cgroup/cpuacct" + path) / "cpuacct.usage"
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    raise BenchError(f"no CPU accounting found for sandbox {name} ({path})")


def net_bytes(name: str) -> tuple[int, int]:
    """Bytes received and sent by sandbox `name` on its interfaces other than lo."""
    pid = run(["podman", "inspect", "-f", "{{.State.Pid}}", CONTAINER_PREFIX + name], check=True).stdout.strip()
    rx = tx = 0
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        iface, counters = line.split(":", 1)
        if iface.strip() != "lo":
            values = counters.split()
            rx, tx = rx + int(values[0]), tx + int(values[8])
    return rx, tx


class Mirror:
    """The wheelhouse cache directory over plain HTTP on the podman network's gateway address."""

    def __init__(self, directory: Path, address: str) -> None:
        self.served = 0
        lock = threading.Lock()
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

            def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
                def count(n: int) -> None:
                    with lock:
                        mirror.served += n
                counting_copy(source, outputfile, count)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Row:
    hosts: int
    operation: str
    wall_s: float
    control_cpu_s_per_host: float
    rx_mb_per_host: float  # what the hosts received from this machine (the mirror's bytes left out)
    tx_mb_per_host: float
    mirror_mb_per_host: float


def measure_size(n: int, args: argparse.Namespace, env: dict[str, str], log: Log, rows: list[Row],
                 names: list[str], mirrors: list[Mirror]) -> None:
    run_id = uuid.uuid4().hex[:6]
    new = [f"bench-fleet-{run_id}-{i}" for i in range(1, n + 1)]
    for name in new:
        names.append(name)
        cli("sandbox", "up", "--name", name, "--distro", args.distro, env=env, check=True)
    if args.mirror and not mirrors:  # the gateway's address exists once a sandbox is on the network
        gateway = run(["podman", "network", "inspect", "podman", "--format",
                       "{{range .Subnets}}{{.Gateway}}{{end}}"], check=True).stdout.strip()
        mirrors.append(Mirror(args.cache / "wheelhouse", gateway))
        log(f"mirror of {args.cache / 'wheelhouse'} at {mirrors[0].url}")
    mirror = mirrors[0] if mirrors else None
    targets = [arg for name in new for arg in ("--host", name)]
    deploy = ["deploy", *targets, "--workers", "1", *(["--wheelhouse-url", mirror.url] if mirror else [])]
    output = Path(tempfile.mkdtemp(prefix="bench-fleet-archives-"))
    # status with the deploy's settings (else it reports the difference and exits 1); the mirror is not one
    commands = {"deploy": deploy, "no-change": deploy, "status": ["status", *targets, "--workers", "1"],
                "backup": ["backup", *targets, "--output", str(output)]}
    for operation in OPERATIONS:
        net0 = [net_bytes(name) for name in new]
        box0 = sum(sandbox_cpu(name) for name in new)
        served0 = mirror.served if mirror else 0
        ticks0, began, own0 = busy_ticks(), time.monotonic(), time.process_time()
        proc = cli(*commands[operation], env=env, timeout=3600)
        wall, ticks1, own1 = time.monotonic() - began, busy_ticks(), time.process_time()
        box1 = sum(sandbox_cpu(name) for name in new)
        net1 = [net_bytes(name) for name in new]
        if proc.returncode != 0:
            raise BenchError(f"{operation} of {n} host(s) exited {proc.returncode}:\n{proc.stdout[-2500:]}"
                             f"{proc.stderr[-1500:]}")
        # This process's own CPU is the mirror's (serving it is the mirror host's cost, not the control node's).
        control = (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") - (box1 - box0) - (own1 - own0)
        served = (mirror.served if mirror else 0) - served0
        rx = sum(b[0] - a[0] for a, b in zip(net0, net1, strict=True)) - served
        tx = sum(b[1] - a[1] for a, b in zip(net0, net1, strict=True))
        mb = 1024 * 1024
        row = Row(n, operation, round(wall, 1), round(control / n, 2), round(rx / n / mb, 2), round(tx / n / mb, 2),
                  round(served / n / mb, 2))
        rows.append(row)
        log(f"{n} host(s) {operation}: {row}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="1,4", help="fleet sizes, comma-separated (default 1,4)")
    ap.add_argument("--distro", default="debian12", choices=("debian12", "debian13"))
    ap.add_argument("--mirror", action="store_true",
                    help="hosts download the wheelhouse from a plain-HTTP mirror (--wheelhouse-url)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args()
    sizes = [int(s) for s in args.hosts.split(",") if s.strip()]
    log = Log("fleet")
    env = private_state_env()
    args.cache = wheelhouse_cache(env).parent
    if not list((args.cache / "wheelhouse").glob("mlflow-*.tar")):
        log(f"no wheelhouse in {args.cache / 'wheelhouse'}: run one deploy first (e.g. make demo)")
        return 1
    rows: list[Row] = []
    names: list[str] = []
    mirrors: list[Mirror] = []

    def measure() -> None:
        for n in sizes:
            measure_size(n, args, env, log, rows, names, mirrors)

    def cleanup() -> None:
        for name in names:
            cli("sandbox", "down", "--name", name, env=env)
        for mirror in mirrors:
            mirror.stop()

    status = measured(measure, cleanup, log)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=1))
    else:
        print(f"{'hosts':>5} {'operation':<10} {'wall s':>7} {'control CPU-s/host':>19} {'rx MB/host':>11} "
              f"{'tx MB/host':>11} {'mirror MB/host':>15}")
        for r in rows:
            print(f"{r.hosts:>5} {r.operation:<10} {r.wall_s:>7.1f} {r.control_cpu_s_per_host:>19.2f} "
                  f"{r.rx_mb_per_host:>11.2f} {r.tx_mb_per_host:>11.2f} {r.mirror_mb_per_host:>15.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
