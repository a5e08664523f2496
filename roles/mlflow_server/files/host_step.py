#!/usr/bin/env python3
"""Run one long host-side step of a deploy (a restore's unpack, a database backup, a schema
migration, an archive) so that it cannot outlive the deploy that started it.

    systemd-run --scope --unit mlflow-step-... -- python3 host_step.py --run-id ID -- COMMAND...

The deploy starts it in a transient scope named mlflow-step-*, so every process of the step
(pg_restore, psql, ...) is in one cgroup. Two things end it:
  * the step watches the host's deploy lock (files/deploy_lock.py) every second and kills the
    command the moment the lease is no longer its run's (released, or taken over by another
    deploy): a CLI killed mid-step leaves no step working on after it;
  * deploy_lock.py acquire kills every mlflow-step-* scope and waits until they are gone before
    the new holder does anything, so no recovery ever starts while a step could still be alive.
The command's stdin, stdout, stderr and exit status pass through; when it is killed, one JSON
line {"ok": false, "error": ...} on stdout says why, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

LOCK = "/run/mlops-provision/deploy.lock"


def lease_holder(path: str = LOCK) -> str | None:
    """The run id holding the lease ("" when free); None when it cannot be read just now (a
    write in progress): the caller looks again."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return ""
    try:
        return str((json.loads(text) if text.strip() else {}).get("run_id", ""))
    except ValueError:
        return None


def run(run_id: str, command: list[str], lock: str = LOCK, interval: float = 1.0, handle_signals: bool = False) -> int:
    child = subprocess.Popen(command, start_new_session=True)

    def stop(signum: int, _frame: object) -> None:  # the scope is stopped: the step goes with it
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        sys.exit(128 + signum)

    if handle_signals:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
    while True:
        try:
            return child.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            pass
        holder = lease_holder(lock)
        if holder is not None and holder != run_id:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            json.dump({"ok": False, "error": "stopped: the deploy that started this step no longer holds the host's "
                                             "deploy lock (it ended, or another deploy took the lock over)"},
                      sys.stdout)
            return 1


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--run-id" or args[2] != "--":
        sys.stderr.write("usage: host_step.py --run-id ID -- COMMAND...\n")
        return 2
    return run(args[1], args[3:], handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
