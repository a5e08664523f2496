"""The host's deploy lock: one deploy at a time changes this MLflow server.

A lease in /run/mlops-provision (root only, gone at reboot) holding who has it: control node, user, pid and start
of the ansible-playbook process, and when the lease expires. Each change of the file happens
under flock, so two deploys never both take it. A lease is taken over when it has expired, when
it is this run's own, or when the control node that holds it says its holder is dead (the role
checks that on the control node, where the pid lives, and passes --stale RUN_ID).

  acquire --holder JSON --wait S --ttl S [--stale RUN_ID]
  renew   --holder JSON --ttl S
  release --holder JSON
  peek

Prints one JSON object and exits 0 (the role decides); acquire says {"ok": false, "holder": ...}
when the wait ran out.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# Root-only: /run/lock is world-writable, where any user could pre-create or hold the file.
LOCK_DIR = "/run/mlops-provision"
LOCK = LOCK_DIR + "/deploy.lock"


def _locked(change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
    """Read the lease under flock; write what change() returns (None: keep, {}: release)."""
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            current = json.loads(fh.read() or "{}")
        except ValueError:
            current = {}
        new = change(current)
        if new is not None:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(new))
            fh.flush()
            os.fsync(fh.fileno())
        return current if new is None else new


def end_leftover_steps(timeout: float = 60) -> list[str]:
    """Kill every long step an earlier run left (files/host_step.py runs them in transient
    mlflow-step-* scopes) and wait until they are gone: whoever holds the lock now is the only
    deploy, so any such step belongs to a run that died, and must not go on under what this run
    recovers. Returns the scopes that were found."""
    if not shutil.which("systemctl"):
        return []

    def running() -> list[str]:
        proc = subprocess.run(["systemctl", "list-units", "--plain", "--no-legend", "--type=scope",
                               "mlflow-step-*"], capture_output=True, text=True, check=False)
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    found = running()
    if found:
        subprocess.run(["systemctl", "kill", "--signal=SIGKILL", *found], capture_output=True, check=False)
        deadline = time.monotonic() + timeout
        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = running()
        if left:
            raise RuntimeError(f"steps of an earlier deploy would not end: {', '.join(left)}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["acquire", "renew", "release", "peek"])
    parser.add_argument("--holder", default="{}")
    parser.add_argument("--wait", type=float, default=0)
    parser.add_argument("--ttl", type=float, default=900)
    parser.add_argument("--stale", default="")
    args = parser.parse_args()
    me = json.loads(args.holder)
    out: dict[str, Any] = {"ok": True}

    def free_for_me(cur: dict[str, Any]) -> bool:
        return (not cur or cur.get("run_id") == me.get("run_id") or float(cur.get("expires", 0)) < time.time()
                or (bool(args.stale) and cur.get("run_id") == args.stale))

    if args.command == "peek":
        out["holder"] = _locked(lambda cur: None) or None
    elif args.command == "acquire":
        deadline = time.monotonic() + args.wait
        while True:
            got: dict[str, Any] = {}

            def take(cur: dict[str, Any]) -> dict[str, Any] | None:
                if free_for_me(cur):
                    got["previous"] = cur
                    return {**me, "expires": time.time() + args.ttl}
                got["holder"] = cur
                return None

            _locked(take)
            if "previous" in got:
                prev = got["previous"]
                out["taken_over"] = prev if prev and prev.get("run_id") != me.get("run_id") else None
                out["steps_ended"] = end_leftover_steps()
                break
            if time.monotonic() >= deadline:
                out = {"ok": False, "holder": got["holder"]}
                break
            time.sleep(1)
    elif args.command == "renew":  # ok: false when another deploy has taken the lease meanwhile
        seen: dict[str, Any] = {}

        def extend(cur: dict[str, Any]) -> dict[str, Any] | None:
            if free_for_me(cur):
                return {**me, "expires": time.time() + args.ttl}
            seen["holder"] = cur
            return None

        _locked(extend)
        if seen:
            out = {"ok": False, "holder": seen["holder"]}
    else:  # release, only our own lease
        def release(cur: dict[str, Any]) -> dict[str, Any] | None:
            if cur and cur.get("run_id") != me.get("run_id"):
                return None
            # Who released last, for files/deploy_record.py: a run records the host only when no
            # other deploy took and released the lease after it.
            with open(os.path.join(LOCK_DIR, "last-release"), "w", encoding="utf-8") as fh:
                fh.write(str(me.get("run_id", "")))
            return {}

        _locked(release)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
