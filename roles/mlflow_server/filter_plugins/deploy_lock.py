"""Who holds a deploy lock, seen from the control node (filters run there, not on the host).

The holder is the ansible-playbook process: filters are evaluated in a worker forked from it,
so its pid is the worker's parent. A holder recorded by this control node is dead when that
pid is gone or now belongs to a process started at another time (pid reuse).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from pathlib import Path
from typing import Any


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _node_id() -> str:
    """This boot of this machine, in this pid namespace: machine-ids are empty or cloned in many
    images, so the boot id, the pid namespace and the hostname are part of it too."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    parts = [_read("/etc/machine-id") or _read("/var/lib/dbus/machine-id"),
             _read("/proc/sys/kernel/random/boot_id"), pidns, socket.gethostname()]
    return "-".join(p for p in parts if p)


def _start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def lock_holder(_: Any = None) -> dict[str, Any]:
    pid = os.getppid()
    ticks = _start_ticks(pid)
    node = _node_id()
    return {"control_node": socket.gethostname(), "node_id": node, "user": getpass.getuser(), "pid": pid,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "run_id": f"{node}:{pid}:{ticks}"}


def lock_holder_is_dead(holder: Any) -> bool:
    """True only for a holder of this control node whose process no longer runs."""
    if not isinstance(holder, dict) or not holder.get("run_id") or holder.get("node_id") != _node_id():
        return False
    pid = int(holder.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    ticks = _start_ticks(pid)
    # The pid is alive: dead only if it now belongs to a process started at another time.
    return bool(ticks) and f"{holder.get('node_id')}:{pid}:{ticks}" != holder["run_id"]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"mlflow_lock_holder": lock_holder, "mlflow_lock_holder_is_dead": lock_holder_is_dead}
