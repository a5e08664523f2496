"""Live progress from ansible-runner events: host, current task, task n of m.

On a terminal one status line is redrawn in place; otherwise (CI, pipes) one line per task.
Failures and warnings are printed as they happen, whatever the mode.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from mlops_provision.failures import classify, task_name
from mlops_provision.redact import Redactor


class Progress:
    def __init__(self, redact: Redactor, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.redact = redact
        self.quiet = quiet
        self.total: int | None = None  # set from `--list-tasks` in the background
        self.done = 0
        self._lock = threading.Lock()
        self._last_len = 0
        # The last task started, for "interrupted during ..." (ansible-runner swallows Ctrl-C).
        self.last_task = ""
        self.last_hosts = ""
        self.last_number = 0

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total

    def _counter(self) -> str:
        total = max(self.total or 0, self.done)
        return f"[{self.done:>3}/{total:<3}]" if self.total else f"[{self.done:>3}]"

    def _status(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            line = text[: 118]
            self.stream.write("\r" + line + " " * max(0, self._last_len - len(line)))
            self._last_len = len(line)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _message(self, text: str) -> None:
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(self.redact(text) + "\n")
        self.stream.flush()

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        with self._lock:
            if kind == "playbook_on_task_start":
                self.done += 1
                task = task_name(data)
                hosts = str(data.get("play_pattern", ""))
                self.last_task, self.last_hosts, self.last_number = task, hosts, self.done
                self._status(f"{self._counter()} {hosts}: {task}")
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                failure = classify(str(data.get("host")), task_name(data), data.get("res") or {})
                label = "UNREACHABLE" if failure.lost_host else "FAILED"
                self._message(f"{label} {data.get('host')}: {failure.message}")
            elif kind == "runner_on_unreachable":
                failure = classify(str(data.get("host")), task_name(data), data.get("res") or {})
                self._message(f"UNREACHABLE {data.get('host')}: {failure.message}")
            elif kind == "playbook_on_stats" and self.tty and self._last_len:
                self.stream.write("\n")
                self._last_len = 0
        return True

    def finish(self) -> None:
        if self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()

