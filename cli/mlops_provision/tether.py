"""Run ansible-playbook so that it, its workers and their ssh die with the CLI:
`python -m mlops_provision.tether PARENT_PID ANSIBLE_PLAYBOOK ARGS...`.

ansible-runner starts ansible-playbook in a new session on a pseudo-terminal with SIGHUP
ignored, and ansible-playbook runs each task in a worker that calls setsid. So a CLI killed
outright (SIGKILL, an OOM kill, a closed laptop's terminal) left ansible-playbook running on its
own, and a cancelled run (ansible-runner SIGKILLs ansible-playbook's process group, not the
workers' sessions) left the task's worker and its ssh running: holding the host's deploy lock,
changing the host with nobody watching, while the operator's next deploy waited.

Two kernel requests close that (PR_SET_PDEATHSIG: a signal when the parent dies):
- this process asks for SIGTERM when the CLI dies; ansible-playbook's SIGTERM handler passes it
  on to the workers it knows of and ends;
- every process it forks (the workers) asks for SIGTERM when *it* dies, and checks right away
  that it has not died already. That covers what the handler cannot: a worker forked just as
  the signal came (seen under load: the migration's worker and its ssh outlived the run), and a
  SIGKILLed ansible-playbook (cancel). A worker's SIGTERM handler ends its own session's ssh.

For that the hook must live inside ansible-playbook, so when the script belongs to this
interpreter's bin directory it runs in this process (`runpy`); another interpreter's script is
exec'd with the first request only. Linux only; elsewhere it just runs the command.

Running in this process also lets the module payloads outlive the run (`_keep_module_payloads`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import os
import runpy
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent: int, prctl: Callable[..., int] | None) -> bool:
    """Ask for SIGTERM when `parent` dies; False when it is gone already (we were reparented)."""
    if prctl is None:
        return True
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return True  # not granted: nothing to wait for, and nothing to end here
    return os.getppid() == parent


def _tether_forks(prctl: Callable[..., int] | None) -> None:
    """Every child this process forks from now on dies with it (set in the child, at fork).

    The child inherits the parent's Python SIGTERM handler (ansible-playbook's, which signals
    the parent's workers and raises in a child), so SIGTERM goes back to its default until the
    child installs its own (an ansible worker does, first thing, to end its session's ssh)."""
    forking_pid = 0

    def before() -> None:
        nonlocal forking_pid
        forking_pid = os.getpid()

    def after_in_child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not _die_with_parent(forking_pid, prctl):
            os._exit(143)  # the parent is gone: this child has nobody to work for

    os.register_at_fork(before=before, after_in_child=after_in_child)


def _same_interpreter(script: str) -> bool:
    """The script is a Python console script of this interpreter's environment (same bin dir)."""
    try:
        with open(script, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return False
    if not first.startswith(b"#!"):
        return False
    interpreter = first[2:].strip().split(b" ")[0].decode(errors="replace")
    return Path(interpreter).parent == Path(sys.executable).parent and "python" in Path(interpreter).name


def _payload_cache() -> Path | None:
    """This user's directory of AnsiballZ payloads for this ansible-core install, or None when
    it is not private to this user (ansible unpickles what it finds there)."""
    import ansible

    from mlops_provision import paths

    install = hashlib.sha256(f"{ansible.__file__}|{sys.version}".encode()).hexdigest()[:12]
    path = paths.cache_dir() / "ansiballz" / f"{ansible.__version__}-{install}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in (path.parent, path):
        st = d.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
    return path


def _keep_module_payloads() -> None:
    """Seed this run's AnsiballZ cache with the payloads earlier runs built, and keep the new
    ones when the run ends.

    ansible-playbook zips each module with the module_utils it imports (found by compiling and
    walking their source) once per run, into a temporary directory it removes at exit: about
    3 CPU-seconds of every deploy on a 2-core control node, the same zip files every time. A
    payload depends only on the module's and ansible-core's source (the arguments are added
    later), so the directory is keyed by the ansible-core install. A run killed before its end
    saves nothing; a payload is saved under a temporary name and renamed, and seeding skips
    temporary names, so no run reads half of one."""
    try:
        import ansible.cli  # noqa: F401 - what ansible-playbook imports first: locale, config, its temp dir
        from ansible import constants

        kept = _payload_cache()
    except (ImportError, OSError):
        return  # the script reports a broken install itself
    if kept is None:
        return
    run = Path(constants.DEFAULT_LOCAL_TMP) / "ansiballz_cache"
    with contextlib.suppress(OSError):
        run.mkdir(parents=True, exist_ok=True)
        for payload in kept.iterdir():
            if not payload.name.endswith((".lock", "-part", ".tmp")):
                shutil.copyfile(payload, run / payload.name)

    def keep() -> None:  # registered after ansible's cleanup of its temp dir, so it runs first
        with contextlib.suppress(OSError):
            for payload in run.iterdir():
                if payload.name.endswith((".lock", "-part")) or (kept / payload.name).exists():
                    continue
                part = kept / f"{payload.name}.{os.getpid()}.tmp"
                shutil.copyfile(payload, part)
                os.replace(part, kept / payload.name)

    atexit.register(keep)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m mlops_provision.tether PARENT_PID COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    prctl = _prctl()
    if not _die_with_parent(parent, prctl):  # the CLI died before the request took effect
        return 143
    if prctl is not None and _same_interpreter(command[0]):
        _tether_forks(prctl)
        sys.argv = command
        sys.path[0] = os.path.dirname(os.path.abspath(command[0]))  # as when the script runs itself
        if Path(command[0]).name.startswith("ansible"):
            _keep_module_payloads()
        runpy.run_path(command[0], run_name="__main__")  # ends by SystemExit with its exit code
        return 0
    os.execvp(command[0], command)  # noqa: S606 - the command line is ours (runner.run)
    return 127  # not reached: execvp returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
