"""One of tests/servers.py's object stores as a background daemon, for harnesses that outlive a
Python process (Molecule's prepare and cleanup playbooks):

    python -m tests.store_daemon start s3|azure --state FILE
    python -m tests.store_daemon stop --state FILE

`start` runs the SeaweedFS S3 gateway or Azurite (blob) on 127.0.0.1 with free ports, in a
session of its own (an Ansible task or a Ctrl-C does not take it down), creates the bucket or
container `mlflow`, and writes FILE, mode 0600 because it holds the keys, as one JSON object:
kind, port, pid, pgid, workdir and log, then bucket, access_key, secret_key (s3) or container,
account, account_key, connection_string (azure; BlobEndpoint on 127.0.0.1). It is a no-op when
FILE names a store of the same kind that still runs. `stop` terminates the store's process
group (SIGTERM, then SIGKILL after 5 s) and removes its data directory and FILE; without
FILE there is nothing to do.
Run it with the project's venv Python from the project root. Exit codes: 0 ok, 1 failed
(the reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, SeaweedS3, Server

NAME = "mlflow"  # the bucket (s3) or blob container (azure) every store gets


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie.
    Recorded at start so that stop never signals an unrelated process that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on; comm may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _running(state: dict[str, Any]) -> bool:
    started = state.get("started")
    return started is not None and _start_ticks(int(state["pid"])) == started


def _launch(kind: str) -> dict[str, Any]:
    """Start the server, create its bucket or container; stop it again if that fails."""
    server: Server = SeaweedS3() if kind == "s3" else Azurite()
    try:
        if isinstance(server, SeaweedS3):
            server.start()
            server.bucket(NAME)
            extra: dict[str, Any] = {"bucket": NAME, "access_key": server.access_key,
                                     "secret_key": server.secret_key, "log": str(server.workdir / "weed.log")}
            port = server.port
        else:
            assert isinstance(server, Azurite)
            server.start().container(NAME)
            extra = {"container": NAME, "account": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
                     "connection_string": server.connection_string(), "log": str(server.workdir / "azurite.log")}
            port = server.port
    except BaseException:
        server.stop()
        raise
    assert server.proc is not None
    pid = server.proc.pid
    return {"kind": kind, "port": port, "pid": pid, "pgid": os.getpgid(pid), "started": _start_ticks(pid),
            "workdir": str(server.workdir), **extra}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def start(kind: str, state_file: Path) -> int:
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if old.get("kind") == kind and _running(old):
            print(f"{kind} store already running on 127.0.0.1:{old['port']} (pid {old['pid']})")
            return 0
        stop(state_file)  # a stale state: clear its leftovers first
    state_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the server's session leader: starts it, reports, exits and leaves it running
        os.close(read_end)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the caller's pipes must not stay open in the server
            os.dup2(devnull, fd)
        report = "ok"
        try:
            _write_state(state_file, _launch(kind))
        except BaseException as exc:
            report = f"{type(exc).__name__}: {exc}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(child, 0)
    if report != "ok":
        print(f"cannot start the {kind} store: {report or 'the starter died'}", file=sys.stderr)
        return 1
    state = json.loads(state_file.read_text())
    print(f"{kind} store started on 127.0.0.1:{state['port']} (pid {state['pid']}); state in {state_file}")
    return 0


def stop(state_file: Path, timeout: float = 5) -> int:
    if not state_file.exists():
        print(f"no store to stop ({state_file} does not exist)")
        return 0
    state = json.loads(state_file.read_text())
    # SIGTERM first; SeaweedFS may take longer than the grace to exit, and its data goes anyway.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _running(state):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(state["pgid"]), sig)
        deadline = time.monotonic() + timeout
        while _running(state) and time.monotonic() < deadline:
            time.sleep(0.2)
    if _running(state):
        print(f"cannot stop the {state['kind']} store (pid {state['pid']}); {state_file} kept", file=sys.stderr)
        return 1
    shutil.rmtree(state["workdir"], ignore_errors=True)
    state_file.unlink()
    print(f"{state['kind']} store on 127.0.0.1:{state['port']} stopped; {state['workdir']} removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.store_daemon", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    start_parser = sub.add_parser("start", help="start a store in the background and write its state file")
    start_parser.add_argument("kind", choices=["s3", "azure"])
    start_parser.add_argument("--state", type=Path, required=True, help="JSON state file to write (0600)")
    stop_parser = sub.add_parser("stop", help="stop the store of a state file and remove its data")
    stop_parser.add_argument("--state", type=Path, required=True, help="JSON state file written by start")
    args = parser.parse_args(argv)
    if args.action == "start":
        return start(args.kind, args.state.resolve())
    return stop(args.state.resolve())


if __name__ == "__main__":
    sys.exit(main())
