"""What `mlops-provision status` shows: one row per server and load balancer, read from the
facts of playbooks/status.yml, and what in each row differs from what is asked (its problems).
A host is in order when it runs what the configuration asks for, as the last deploy left it,
answers, reads its database, and (a load balancer) sees every server UP."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_provision.runner import HostResult, RunResult

COLUMNS = ("HOST", "ROLE", "VERSION", "SERVICE", "UPTIME", "HEALTH", "READY", "BACKEND", "LAST DEPLOY", "DRIFT")


def problems(status: dict[str, Any]) -> list[str]:
    """Why this host is not in order ([] when it is)."""
    if status.get("kind") == "lb":
        found = [] if status.get("state") == "active" else [f"haproxy.service is {status.get('state') or 'unknown'}"]
        servers = status.get("servers")
        if not isinstance(servers, list):
            return [*found, "no view of the servers (HAProxy's admin socket did not answer)"]
        kept = set(status.get("kept_out") or [])  # mlflow_lb_maintenance: out on purpose
        found += [f"server {s.get('name')} is {s.get('status')} ({s.get('check') or 'no check yet'})"
                  for s in servers if s.get("status") != "UP" and s.get("name") not in kept]
        found += [f"server {s.get('name')} is {s.get('status')}, not in maintenance as mlflow_lb_maintenance asks"
                  for s in servers if s.get("name") in kept and not str(s.get("status", "")).startswith("MAINT")]
        return found
    if "drift" not in status:  # the status script failed on the host
        return [f"could not be read: {status.get('reason', 'no answer')}"]
    found = list(status.get("drift") or [])
    if status.get("deploying"):
        found.append("a deploy holds the host's lock now")
    return found


def _uptime(seconds: Any) -> str:
    if seconds in (None, ""):
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _when(epoch: Any) -> str:
    if not epoch:
        return "never"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def row(name: str, host: HostResult) -> tuple[str, ...]:
    st = host.status
    if not st:
        state = "unreachable" if host.unreachable else "failed" if host.failed else "no answer"
        return (name, "?", "-", state, "-", "-", "-", "-", "-", "-")
    found = problems(st)
    drift = "none" if not found else f"{len(found)} (below)"
    if st.get("kind") == "lb":
        servers: list[dict[str, Any]] = st["servers"] if isinstance(st.get("servers"), list) else []
        up = len([s for s in servers if s.get("status") == "UP"])
        kept = len([s for s in servers if s.get("name") in (st.get("kept_out") or [])])
        health = f"{up}/{len(servers)} UP" + (f", {kept} in maintenance" if kept else "")
        return (name, "lb", f"haproxy {st.get('version') or '?'}", str(st.get("state", "?")),
                _uptime(st.get("uptime_s")), health, "-", "-", "-", drift)
    service = st.get("service") or {}
    last = st.get("last_deploy") or {}
    deployed = _when(last.get("at")) + (f" ({last['version']})" if last.get("version") else "")
    return (name, "server", st.get("version") or "-", str(service.get("state", "?")),
            _uptime(service.get("uptime_s")), str(st.get("health", "?")), str(st.get("ready", "?")),
            last.get("backend") or "-", deployed, drift)


def table(result: RunResult) -> str:
    rows = [COLUMNS] + [row(name, h) for name, h in sorted(result.hosts.items(), key=_order)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    for name, h in sorted(result.hosts.items(), key=_order):
        for problem in problems(h.status) if h.status else h.failures:
            lines.append(f"{name}: {problem}")
    return "\n".join(lines)


def _order(item: tuple[str, HostResult]) -> tuple[int, str]:
    return (1 if item[1].status.get("kind") == "lb" else 0, item[0])


def as_json(result: RunResult) -> str:
    out: dict[str, Any] = {"servers": {}, "load_balancers": {}}
    for name, h in sorted(result.hosts.items()):
        entry = {k: v for k, v in h.status.items() if k != "kind"}
        entry["problems"] = problems(h.status) if h.status else h.failures or ["no answer"]
        entry["reachable"] = not h.unreachable
        out["load_balancers" if h.status.get("kind") == "lb" else "servers"][name] = entry
    return json.dumps(out, indent=2, sort_keys=True)


def in_order(result: RunResult) -> bool:
    return bool(result.hosts) and all(h.status and not problems(h.status) for h in result.hosts.values())
