"""One deploy or destroy per host from this machine: an exclusive flock per target.

The lock is `state_dir/locks/<host>.lock`, held for the whole run and freed by the kernel
when the CLI dies, so a killed run never leaves a stale lock behind. The file names the
holder, for the message of whoever has to wait. (The role also locks on the host itself,
which covers other control nodes.)
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from mlops_provision import paths
from mlops_provision.errors import ProvisionError, UsageError

POLL_S = 0.5
MAX_WAIT_S = 3600
DEFAULT_WAIT_S = 60


def parse_wait(value: object, flag: str = "--lock-wait") -> int:
    """Seconds to wait for a held lock: a whole number 0-3600."""
    text = str(value).strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise UsageError(f"{flag}: {value!r} is not a whole number of seconds; valid: 0-{MAX_WAIT_S}")
    if int(text) > MAX_WAIT_S:
        raise UsageError(f"{flag}: {text} seconds is out of range; valid: 0-{MAX_WAIT_S}")
    return int(text)


def target_names(hosts: Sequence[str], inventories: Sequence[Path]) -> list[str]:
    """The names to lock: each --host, else each inventory file (its hosts are known to Ansible only)."""
    if hosts:
        return sorted(set(hosts))
    return sorted({str(Path(p).resolve()) for p in inventories})


def lock_file(name: str) -> Path:
    """A file name safe for any host name or inventory path; a hash keeps altered names distinct."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    if safe != name or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    directory = paths.state_dir() / "locks"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory / f"{safe}.lock"


def _holder_text(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    return f"pid {info.get('pid', '?')}, user {info.get('user', '?')}, started {info.get('started', '?')}"


def _take(name: str, deadline: float, log: Callable[[str], None] | None) -> int:
    fd = os.open(lock_file(name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProvisionError(f"another deploy to {name} is running from this machine: "
                                         f"{_holder_text(fd)}; wait for it, or pass --lock-wait SECONDS") from None
                if log is not None and not told:
                    log(f"waiting up to {left:.0f} s for another deploy to {name} ({_holder_text(fd)})")
                    told = True
                time.sleep(min(POLL_S, left))
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        info = {"host": socket.gethostname(), "user": user, "pid": os.getpid(), "target": name,
                "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def hold(names: Sequence[str], wait: float, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold every name's lock for the body, waiting up to `wait` seconds in all for them;
    log(message) hears once per name that it has to wait."""
    deadline = time.monotonic() + wait
    fds: list[int] = []
    try:
        for name in sorted(set(names)):  # one order everywhere: two runs never hold one each
            fds.append(_take(name, deadline, log))
        yield
    finally:
        for fd in fds:
            os.close(fd)  # the holder info stays: only a held lock's info is ever read
