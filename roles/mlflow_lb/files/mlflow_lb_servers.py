#!/usr/bin/python3
"""The MLflow servers of this load balancer, through HAProxy's admin socket (installed by role
mlflow_lb as /usr/local/sbin/mlflow-lb-servers; the server role calls it during a rolling deploy).

  show                       the servers of the backend, as JSON
  drain NAME [--timeout S] [--force]
                             no new requests to NAME; wait until its open requests have ended (or
                             S seconds), then maintenance: HAProxy neither sends it requests nor
                             checks it while it restarts. Refused (exit 1) when no other server
                             is UP, which would leave clients nothing: --force (a schema migration
                             that stops every server) takes it out anyway
  ready NAME [--timeout S]   back from maintenance; wait until a health check made after that
                             says UP (not HAProxy's "UP 1/2" of a server back before any check)
  ready-all [--timeout S] [--keep NAME ...]
                             every server a drain left out (a deploy killed mid-roll), back;
                             the --keep servers (mlflow_lb_maintenance) stay out, drained if needed
  status                     HAProxy's service (state, main PID, seconds since it started, its
                             version) and the servers as in show (`mlops-provision status`)

Without the socket (HAProxy not installed or not running yet) or for a server the backend does
not list yet, drain and ready have nothing to do: they say so and exit 0. Each command prints one
JSON object; "changed" says whether it changed HAProxy's state. Plain python3, no dependencies.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
import time

SOCKET = "/run/haproxy/admin.sock"
BACKEND = "mlflow"


class NoSocket(Exception):
    pass


def command(line: str, path: str = SOCKET) -> str:
    """One command on the admin socket (non-interactive mode: the answer, then EOF)."""
    if not os.path.exists(path):
        raise NoSocket(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise NoSocket(path) from exc
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_stat(text: str, backend: str = BACKEND) -> dict[str, dict[str, str]]:
    """`show stat` CSV -> server name -> its columns (status, scur, weight, ...)."""
    if not text.startswith("# pxname,"):
        raise RuntimeError(f"HAProxy answered 'show stat' with: {text.strip()[:200]}")
    header, _, body = text.lstrip("# ").partition("\n")
    reader = csv.DictReader(io.StringIO(header + "\n" + body))
    return {row["svname"]: row for row in reader
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND", None)}


def servers(path: str = SOCKET) -> dict[str, dict[str, str]]:
    return parse_stat(command("show stat", path))


def summary(path: str = SOCKET) -> list[dict[str, object]]:
    return [{"name": name, "status": row.get("status", ""), "weight": row.get("weight", ""),
             "sessions": int(row.get("scur") or 0), "check": row.get("check_status", "")}
            for name, row in servers(path).items()]


def in_maintenance(status: str) -> bool:
    return status.startswith(("MAINT", "DRAIN"))


def proven_up(row: dict[str, str]) -> bool:
    """UP by a health check that passed: not "UP 1/2" (going down, or back before any check)."""
    return row.get("status") == "UP" and row.get("check_status", "").startswith("L7OK")


def set_state(name: str, state: str, path: str) -> None:
    answer = command(f"set server {BACKEND}/{name} state {state}", path).strip()
    if answer:  # the socket answers nothing on success
        raise RuntimeError(f"HAProxy refused 'set server {BACKEND}/{name} state {state}': {answer}")


def drain(name: str, timeout: float, path: str = SOCKET, force: bool = False) -> dict[str, object]:
    known = servers(path)
    if name not in known:
        return {"changed": False, "absent": True, "msg": f"{name} is not a server of this load balancer yet"}
    before = known[name].get("status", "")
    if before.startswith("MAINT"):
        return {"changed": False, "status": before, "waited_s": 0}
    others = {other: row.get("status", "") for other, row in known.items() if other != name}
    if not force and not any(proven_up(row) for other, row in known.items() if other != name):
        return {"changed": False, "failed": True, "status": before,
                "msg": (f"not taking {name} out: no other server of this load balancer is UP ("
                        + (", ".join(f"{other} {state}" for other, state in sorted(others.items())) or "there is none")
                        + "), so clients would get no answer while it restarts. Bring the other servers back first "
                        "(deploy them alone with --host), or deploy this one during a maintenance window with "
                        "`mlflow-lb-servers drain --force`.")}
    set_state(name, "drain", path)
    started = time.monotonic()
    sessions = int(known[name].get("scur") or 0)
    while sessions > 0 and time.monotonic() - started < timeout:
        time.sleep(0.25)
        sessions = int(servers(path).get(name, {}).get("scur") or 0)
    set_state(name, "maint", path)
    return {"changed": True, "status_before": before, "waited_s": round(time.monotonic() - started, 2),
            "sessions_left": sessions}


def _wait_up(names: list[str], timeout: float, path: str, settle: float) -> dict[str, str]:
    """Wait (settle seconds at least: one health check) until every one of names is proven UP."""
    time.sleep(settle)
    deadline = time.monotonic() + timeout
    while True:
        rows = {name: row for name, row in servers(path).items() if name in names}
        if all(proven_up(row) for row in rows.values()) or time.monotonic() > deadline:
            return {name: row.get("status", "") for name, row in rows.items()}
        time.sleep(0.25)


def ready(name: str, timeout: float, path: str = SOCKET, settle: float = 0) -> dict[str, object]:
    known = servers(path)
    if name not in known:
        return {"changed": False, "absent": True, "msg": f"{name} is not a server of this load balancer yet"}
    before = known[name].get("status", "")
    if in_maintenance(before):
        set_state(name, "ready", path)
    status = _wait_up([name], timeout, path, settle if in_maintenance(before) else 0).get(name, "")
    result: dict[str, object] = {"changed": in_maintenance(before), "status_before": before, "status": status}
    if status != "UP":
        result["failed"] = True
        result["msg"] = (f"{name} is back from maintenance but the load balancer's health check says "
                         f"{status or 'nothing'} after {timeout:g} s")
    return result


def ready_all(timeout: float, path: str = SOCKET, settle: float = 0, keep: tuple[str, ...] = (),
              drain_timeout: float = 60) -> dict[str, object]:
    """Every server a drain left out back in, except those kept in maintenance on purpose
    (mlflow_lb_maintenance): those are taken out (drained first) if anything put them back, once
    another server is UP (never the last one serving)."""
    known = servers(path)
    kept = [name for name in known if name in keep]
    left_out = [name for name, row in known.items() if name not in keep and in_maintenance(row.get("status", ""))]
    for name in left_out:
        set_state(name, "ready", path)
    serving = [name for name in known if name not in keep]
    status = _wait_up(serving, timeout, path, settle if left_out else 0)
    up = [name for name in serving if status.get(name) == "UP"]
    taken_out = [name for name in kept if not known[name].get("status", "").startswith("MAINT")]
    result: dict[str, object] = {"changed": bool(left_out), "readied": left_out, "status": status, "up": up}
    if taken_out and up:
        for name in taken_out:
            drain(name, drain_timeout, path, force=True)
        result["changed"] = True
    elif taken_out:
        result["kept_in"] = taken_out
        result["msg"] = (f"left {', '.join(taken_out)} in although it is to stay out (mlflow_lb_maintenance): "
                         "no other server is UP")
    status.update({name: row.get("status", "") for name, row in servers(path).items() if name in keep})
    if kept:
        result["kept_out"] = kept
    if serving and not up:
        result["failed"] = True
        result["msg"] = f"no server is UP behind the load balancer after {timeout:g} s: {status}"
    return result


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def service_status(path: str = SOCKET) -> dict[str, object]:
    """What `mlops-provision status` shows of this load balancer. Reads only."""
    show = _output(["systemctl", "show", "haproxy.service", "-p", "ActiveState", "-p", "MainPID",
                    "-p", "ExecMainStartTimestampMonotonic"])
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    started = int(props.get("ExecMainStartTimestampMonotonic") or 0)
    active = props.get("ActiveState") == "active"
    version = _output(["haproxy", "-v"]).split()
    try:
        listed: object = summary(path)
    except (NoSocket, RuntimeError, OSError) as exc:
        listed = {"absent": True, "msg": str(exc)}
    return {"state": props.get("ActiveState") or "unknown", "pid": int(props.get("MainPID") or 0),
            "uptime_s": round(time.monotonic() - started / 1e6) if active and started else None,
            "version": version[2] if len(version) > 2 else "", "servers": listed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mlflow-lb-servers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=SOCKET)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show")
    sub.add_parser("status")
    for name in ("drain", "ready", "ready-all"):
        p = sub.add_parser(name)
        if name != "ready-all":
            p.add_argument("server")
        p.add_argument("--timeout", type=float, default=60)
        # ready: a health check must have run since (HAProxy's check interval plus its timeout)
        p.add_argument("--settle", type=float, default=0)
    sub.choices["ready-all"].add_argument("--keep", action="append", default=[], metavar="NAME",
                                          help="a server kept in maintenance on purpose (repeatable)")
    sub.choices["ready-all"].add_argument("--drain-timeout", type=float, default=60)
    sub.choices["drain"].add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "show":
            result: object = summary(args.socket)
        elif args.cmd == "status":
            result = service_status(args.socket)
        elif args.cmd == "drain":
            result = drain(args.server, args.timeout, args.socket, force=args.force)
        elif args.cmd == "ready":
            result = ready(args.server, args.timeout, args.socket, settle=args.settle)
        else:
            result = ready_all(args.timeout, args.socket, settle=args.settle, keep=tuple(args.keep),
                               drain_timeout=args.drain_timeout)
    except NoSocket as exc:
        result = {"changed": False, "absent": True, "msg": f"no HAProxy admin socket at {exc}: nothing to do"}
    except (RuntimeError, OSError) as exc:  # HAProxy refused a command, or the socket broke
        result = {"changed": False, "failed": True, "msg": str(exc)}
    print(json.dumps(result))
    return 1 if isinstance(result, dict) and result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
