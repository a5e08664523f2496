#!/usr/bin/python3
"""The MLflow servers of this load balancer, through HAProxy's admin socket (installed by role
mlflow_lb as /usr/local/sbin/mlflow-lb-servers; the server role calls it during a rolling deploy).

  show                       the servers of the backend, as JSON
  drain NAME [--timeout S]   no new requests to NAME; wait until its open requests have ended (or
                             S seconds), then maintenance: HAProxy neither sends it requests nor
                             checks it while it restarts
  ready NAME [--timeout S]   back from maintenance; wait until HAProxy's health check says UP
  ready-all [--timeout S]    every server that a drain left out (a deploy killed mid-roll), back
  save-state FILE            the runtime state (drain/maint) into FILE, read at the next reload

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


def set_state(name: str, state: str, path: str) -> None:
    answer = command(f"set server {BACKEND}/{name} state {state}", path).strip()
    if answer:  # the socket answers nothing on success
        raise RuntimeError(f"HAProxy refused 'set server {BACKEND}/{name} state {state}': {answer}")


def drain(name: str, timeout: float, path: str = SOCKET) -> dict[str, object]:
    known = servers(path)
    if name not in known:
        return {"changed": False, "absent": True, "msg": f"{name} is not a server of this load balancer yet"}
    before = known[name].get("status", "")
    if before.startswith("MAINT"):
        return {"changed": False, "status": before, "waited_s": 0}
    set_state(name, "drain", path)
    started = time.monotonic()
    sessions = int(known[name].get("scur") or 0)
    while sessions > 0 and time.monotonic() - started < timeout:
        time.sleep(0.25)
        sessions = int(servers(path).get(name, {}).get("scur") or 0)
    set_state(name, "maint", path)
    return {"changed": True, "status_before": before, "waited_s": round(time.monotonic() - started, 2),
            "sessions_left": sessions}


def _wait_up(names: list[str], timeout: float, path: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        now = {name: row.get("status", "") for name, row in servers(path).items() if name in names}
        if all(status.startswith("UP") or status == "no check" for status in now.values()):
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.25)


def ready(name: str, timeout: float, path: str = SOCKET) -> dict[str, object]:
    known = servers(path)
    if name not in known:
        return {"changed": False, "absent": True, "msg": f"{name} is not a server of this load balancer yet"}
    before = known[name].get("status", "")
    if in_maintenance(before):
        set_state(name, "ready", path)
    status = _wait_up([name], timeout, path).get(name, "")
    result: dict[str, object] = {"changed": in_maintenance(before), "status_before": before, "status": status}
    if not status.startswith("UP"):
        result["failed"] = True
        result["msg"] = (f"{name} is back from maintenance but the load balancer's health check says "
                         f"{status or 'nothing'} after {timeout:g} s")
    return result


def ready_all(timeout: float, path: str = SOCKET) -> dict[str, object]:
    known = servers(path)
    left_out = [name for name, row in known.items() if in_maintenance(row.get("status", ""))]
    for name in left_out:
        set_state(name, "ready", path)
    status = _wait_up(list(known), timeout, path)
    up = [name for name, state in status.items() if state.startswith("UP")]
    result: dict[str, object] = {"changed": bool(left_out), "readied": left_out, "status": status, "up": up}
    if known and not up:
        result["failed"] = True
        result["msg"] = f"no server is UP behind the load balancer after {timeout:g} s: {status}"
    return result


def save_state(target: str, path: str = SOCKET) -> dict[str, object]:
    state = command("show servers state", path)
    partial = target + ".partial"
    with open(partial, "w") as fh:
        fh.write(state)
    os.replace(partial, target)
    return {"changed": False, "file": target}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mlflow-lb-servers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=SOCKET)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show")
    for name in ("drain", "ready"):
        p = sub.add_parser(name)
        p.add_argument("server")
        p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("ready-all")
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("save-state")
    p.add_argument("file")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "show":
            result: object = summary(args.socket)
        elif args.cmd == "drain":
            result = drain(args.server, args.timeout, args.socket)
        elif args.cmd == "ready":
            result = ready(args.server, args.timeout, args.socket)
        elif args.cmd == "ready-all":
            result = ready_all(args.timeout, args.socket)
        else:
            result = save_state(args.file, args.socket)
    except NoSocket as exc:
        result = {"changed": False, "absent": True, "msg": f"no HAProxy admin socket at {exc}: nothing to do"}
    print(json.dumps(result))
    return 1 if isinstance(result, dict) and result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
