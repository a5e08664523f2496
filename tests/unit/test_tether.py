"""`mlops_provision.tether`: what ansible-playbook forks dies with it, however it ends.

A stand-in for ansible-playbook (a console script of this venv, so the tether runs it in its
own process) forks a "worker" the way ansible does (setsid, then an ssh-like child in the
worker's session) and then dies the way a cancelled run does: SIGKILL from outside, no handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import processes_with_env, wait_until_none_with_env

WORKER_SCRIPT = """\
#!{python}
import os, signal, subprocess, sys, time

def term(signum, frame):  # as ansible's WorkerProcess: end the session's children, then itself
    signal.signal(signum, signal.SIG_DFL)
    os.killpg(os.getpid(), signum)

def tqm_handler(signum, frame):  # as ansible's TaskQueueManager (raises in a child)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)

signal.signal(signal.SIGTERM, tqm_handler)
pid = os.fork()
if pid == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, term)
    subprocess.Popen(["sleep", "300"])
    while True:
        time.sleep(1)
print("worker", pid, flush=True)
time.sleep(300)
"""


def _start(tmp_path: Path, run_id: str) -> subprocess.Popen[str]:
    """A stand-in CLI that starts the tethered stand-in playbook and prints its pid."""
    script = tmp_path / "ansible-playbook"
    script.write_text(WORKER_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""\
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-m", "mlops_provision.tether", str(__import__("os").getpid()),
                                      {str(script)!r}], start_new_session=True)
            print(child.pid, flush=True)
            time.sleep(300)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "MLOPS_PROVISION_TEST_RUN": run_id})


def _end(parent: subprocess.Popen[str], run_id: str) -> None:
    """Leave nothing behind, even when the test failed."""
    parent.kill()
    parent.wait()
    for pid in processes_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _worker_started(run_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = processes_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}").values()
        if any(cmd.startswith("sleep 300") for cmd in running):
            return
        time.sleep(0.1)
    raise AssertionError("the stand-in's worker never started its child")


def test_a_killed_playbook_takes_its_workers_and_their_children_with_it(tmp_path: Path) -> None:
    """A cancelled run: ansible-runner SIGKILLs ansible-playbook's process group, which the
    workers left with setsid. Before the fork hook, the worker and its ssh lived on."""
    run_id = f"tether-cancel-{os.getpid()}-{time.time_ns()}"
    parent = _start(tmp_path, run_id)
    try:
        assert parent.stdout is not None
        playbook = int(parent.stdout.readline())
        _worker_started(run_id)
        os.kill(playbook, signal.SIGKILL)
        left = wait_until_none_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}", 5)
        assert set(left) == {parent.pid}, left  # only the stand-in CLI, which nobody killed
    finally:
        _end(parent, run_id)


def test_a_killed_cli_takes_the_playbook_its_workers_and_their_children_with_it(tmp_path: Path) -> None:
    run_id = f"tether-cli-{os.getpid()}-{time.time_ns()}"
    parent = _start(tmp_path, run_id)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()
        _worker_started(run_id)
        parent.kill()
        parent.wait()
        assert not wait_until_none_with_env(f"MLOPS_PROVISION_TEST_RUN={run_id}", 5)
    finally:
        _end(parent, run_id)


def test_a_worker_forked_after_its_parent_died_ends_at_once(tmp_path: Path) -> None:
    """The race of a signal that comes while a worker is being forked: the child's request comes
    too late to fire, so it checks its parent itself and ends. The parent has a SIGTERM handler
    that raises in a child, as ansible-playbook's does: the child must not depend on it."""
    run_id = f"tether-race-{os.getpid()}-{time.time_ns()}"
    code = textwrap.dedent("""\
        import os, signal, sys, time
        from mlops_provision import tether

        def handler(signum, frame):  # ansible's TaskQueueManager: is_alive() raises in a child
            raise AssertionError("can only test a child process")

        signal.signal(signal.SIGTERM, handler)
        tether._tether_forks(tether._prctl())
        real_getppid = os.getppid
        os.getppid = lambda: 1  # as seen by a child whose parent is gone
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        os.getppid = real_getppid
        _, status = os.waitpid(pid, 0)
        print(os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    """)
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "MLOPS_PROVISION_TEST_RUN": run_id})
    assert proc.stdout.strip() == "143", proc.stdout + proc.stderr
    assert time.monotonic() - began < 10


PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.stat:
        path: /
"""


def _tethered_playbook(tmp_path: Path, cache: Path) -> str:
    """Run a one-task playbook through the tether with ansible's debug output; return it."""
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    ansible_playbook = str(Path(sys.executable).with_name("ansible-playbook"))
    proc = subprocess.run([sys.executable, "-m", "mlops_provision.tether", str(os.getpid()), ansible_playbook,
                           "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
                           str(tmp_path / "play.yml")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLOPS_PROVISION_CACHE": str(cache), "ANSIBLE_DEBUG": "1",
                               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_module_payloads_outlive_the_run_and_the_next_run_uses_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _tethered_playbook(tmp_path, cache)
    assert "ANSIBALLZ: Creating module" in first
    kept = list((cache / "ansiballz").glob("*/ansible.modules.stat-*"))
    assert len(kept) == 1, list(cache.rglob("*"))
    second = _tethered_playbook(tmp_path, cache)
    assert "ANSIBALLZ: using cached module" in second and "ANSIBALLZ: Creating module" not in second
    assert not list((tmp_path / "local-tmp").iterdir())  # ansible still removed its run's directory


def test_module_payloads_are_not_taken_from_a_directory_others_can_write(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _tethered_playbook(tmp_path, cache)
    (cache / "ansiballz").chmod(0o777)  # another user could have planted a pickle there
    out = _tethered_playbook(tmp_path, cache)
    assert "ANSIBALLZ: Creating module" in out and "ANSIBALLZ: using cached module" not in out
