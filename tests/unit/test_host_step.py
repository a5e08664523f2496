"""host_step.py (roles/mlflow_server/files): a long host-side step of a deploy ends when its deploy
no longer holds the host's deploy lock, with everything it started; else its exit status passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, load_module

SCRIPT = ROOT / "roles" / "mlflow_server" / "files" / "host_step.py"


def _lease(path: Path, run_id: str) -> None:
    path.write_text(json.dumps({"run_id": run_id, "expires": time.time() + 900}) if run_id else "{}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_step_passes_its_exit_status_and_output_while_its_run_holds_the_lock(tmp_path: Path) -> None:
    module = load_module(SCRIPT, "host_step")
    lock = tmp_path / "deploy.lock"
    _lease(lock, "node:1:2")
    out = tmp_path / "out"
    rc = module.run("node:1:2", ["sh", "-c", f"sleep 1.5; echo done > {out}; exit 3"], lock=str(lock), interval=0.2)
    assert rc == 3 and out.read_text() == "done\n"


def test_a_step_whose_run_lost_the_lock_is_killed_with_its_children(tmp_path: Path) -> None:
    lock = tmp_path / "deploy.lock"
    _lease(lock, "node:1:2")
    pidfile = tmp_path / "grandchild.pid"
    code = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import host_step; "
            f"sys.exit(host_step.run('node:1:2', ['sh', '-c', 'sleep 60 & echo $! > {pidfile}; wait'], "
            f"lock={str(lock)!r}, interval=0.2))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    assert _alive(grandchild)
    _lease(lock, "other:9:9")  # another deploy took the lock over
    stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert json.loads(stdout)["error"].startswith("stopped: the deploy that started this step no longer holds")
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_released_lock_ends_the_step_too(tmp_path: Path) -> None:
    module = load_module(SCRIPT, "host_step")
    lock = tmp_path / "deploy.lock"
    _lease(lock, "")
    started = time.monotonic()
    assert module.run("node:1:2", ["sleep", "30"], lock=str(lock), interval=0.2) == 1
    assert time.monotonic() - started < 5
