"""Ctrl-C and SIGTERM: one flag for the whole CLI.

ansible-runner ends a run on a signal only through its cancel callback (it would otherwise
install handlers of its own and swallow the signal). So while a playbook runs, a signal just
sets the flag and the runner stops the play at its next poll; outside a run it raises
KeyboardInterrupt, so `finally` blocks (vault repacking, locks, temporary files) still run,
which the default SIGTERM action would skip.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = threading.Event()
_deferred = threading.Event()  # a playbook is running: cancel it instead of raising


def _handler(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    if not _deferred.is_set():
        raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM through the flag (main thread only, as signal.signal requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)


def requested() -> bool:
    """True once SIGINT or SIGTERM arrived: the cancel callback handed to ansible-runner."""
    return _requested.is_set()


@contextmanager
def deferred() -> Iterator[None]:
    """While the body runs, a signal only sets the flag (the runner polls it)."""
    install()
    _deferred.set()
    try:
        yield
    finally:
        _deferred.clear()


def reset() -> None:
    """Forget an earlier signal (tests)."""
    _requested.clear()
