"""What a failed task means: bad input (exit 2), a host that stopped answering (exit 3), or a
real failure (exit 1), and the message the operator sees for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlops_provision.redact import Redactor

# The roles start the fail_msg of every input check with this marker: task names change,
# the marker is the contract.
BAD_INPUT_MARKER = "[bad input]"
# ansible-core's own check of meta/argument_specs.yml, which carries no marker.
ARG_SPEC_TASK = "Validating arguments against arg spec"
# Task-name prefixes of the roles' checks from before the marker; kept while roles migrate.
LEGACY_VALIDATION_TASKS = ("Preflight | Validate", "PostgreSQL | Validate", "Proxy preflight | Validate")

# SSH (or sudo over it) losing a host mid-run: a dead or blackholed host, not a broken deploy.
_LOST_SSH = re.compile(
    r"Timeout.*privilege escalation prompt"
    r"|Connection timed out during banner exchange"
    # Ansible's words when an established connection dies (a first contact fails differently)
    r"|Data could not be sent to remote host"
    # ssh's own words only: a journal or pip error quoting "Broken pipe" is not a lost host
    r"|client_loop: send disconnect: Broken pipe|mux_client_\w+: [^\n]*Broken pipe"
    r"|Timeout, server \S+ not responding",
)


@dataclass(frozen=True)
class Failure:
    message: str
    validation: bool = False  # bad input: exit 2
    lost_host: bool = False  # the host stopped answering: count it unreachable, exit 3


_MASK_URI_PASSWORDS = Redactor()
GENERIC_FAILURE = "failed (run with -v, or read the run log, for details)"
# What a no_log result shows: ansible-core's own words when it censored the result.
HIDDEN = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"

# Ansible's words that name no cause: what the command or module printed does.
_UNSPECIFIC = ("non-zero return code", "MODULE FAILURE", "One or more items failed", "All items completed")
_SEE_OUTPUT = "See stdout/stderr for the exact error"
_TAIL_LINES = 3  # of stderr (or stdout): a cause, not pages
_LINE_MAX = 400
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Lines that say nothing: pip's release notices, rules and box drawing, blank lines.
_NOISE = re.compile(r"^(?:\[notice\].*|[\s\-=*~_.#|+│─╭╮╰╯]*)$")
# pip (and the project's helpers) start an error line with this; the last one is the cause.
_ERROR_LINE = re.compile(r"^ERROR: \S")


def _hidden(res: dict[str, Any]) -> bool:
    return bool(res.get("censored") or res.get("_ansible_no_log"))


def _lines(value: Any) -> list[str]:
    """The meaningful lines of a command's output, colour codes and progress redraws removed."""
    if not value:
        return []
    text = "\n".join(map(str, value)) if isinstance(value, list) else str(value)
    out = []
    for line in _ANSI.sub("", text).splitlines():
        line = line.rsplit("\r", 1)[-1].strip()  # a progress bar's last state
        if line and not _NOISE.match(line):
            out.append(line if len(line) <= _LINE_MAX else line[:_LINE_MAX] + " ...")
    return out


def _failed_items(res: dict[str, Any]) -> list[dict[str, Any]]:
    results = res.get("results")
    if not isinstance(results, list):
        return []
    return [item for item in results if isinstance(item, dict) and item.get("failed")]


def _item_label(item: dict[str, Any]) -> str:
    """A short item's label; none of a no_log item (the item may be the secret)."""
    if _hidden(item):
        return ""
    label = item.get("_ansible_item_label", item.get("item"))
    return str(label) if isinstance(label, (str, int, float)) and len(str(label)) <= 80 else ""


def _describe(res: dict[str, Any]) -> list[str]:
    """The failure as lines: the first carries the cause, the rest support it. Empty when the
    result says nothing at all."""
    if _hidden(res):  # whatever else it holds stays unread
        return [str(res.get("censored") or HIDDEN)]
    msg = str(res.get("msg") or "").strip()
    reason = str(res.get("reason") or "").strip()
    stderr = _lines(res.get("stderr")) or _lines(res.get("module_stderr"))
    stdout = _lines(res.get("stdout")) or _lines(res.get("module_stdout"))
    base = msg or reason
    unspecific = not base or base.splitlines()[0].strip().startswith(_UNSPECIFIC)
    # Command output counts where Ansible names no cause: stderr, else stdout.
    output = stderr or (stdout if unspecific else [])
    tail = output[-_TAIL_LINES:]
    errors = [line for line in output if _ERROR_LINE.match(line)]
    candidates = [*errors[-1:], *([reason] if msg and reason else []), *output[-1:]]
    items = _failed_items(res)
    extra: list[str] = []
    if items:
        inner = _describe(items[0])
        if inner:
            label = _item_label(items[0])
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            candidates.append((f"item {label}: " if label else "") + inner[0] + more)
            extra = inner[1:]
    key = next((c.splitlines()[0] for c in candidates if c and c.splitlines()[0] not in base), "")
    if not base and not key:
        return []
    # ansible-core's pointer for a module failure says nothing once the output is here.
    lines = [line for line in base.splitlines() if not (tail and line.strip() == _SEE_OUTPUT)] or [""]
    head = lines[0].strip()
    lines[0] = f"{head}: {key}" if head and key else head or key
    if msg and reason and reason not in msg:  # both said something: neither is dropped
        lines += reason.splitlines()[1:] if key == reason.splitlines()[0] else reason.splitlines()
    return lines + [line for line in tail if line != key and line not in base] + extra


def failure_message(res: dict[str, Any]) -> str:
    """What the operator reads of a failed task: its first line carries the cause (Ansible's msg
    or reason, the last pip error, the tail of stderr; stdout when stderr is empty and Ansible
    names no cause; a loop's first failed item), the next lines a few more of the output. A
    no_log result shows ansible-core's censored notice, nothing of the result. Passwords in URIs
    are masked."""
    return _MASK_URI_PASSWORDS("\n".join(_describe(res)).strip()) or GENERIC_FAILURE


def _connection_text(res: dict[str, Any]) -> str:
    """Where ssh's own words about a lost connection appear: Ansible's msg and the stderr."""
    if _hidden(res):
        return ""
    return str(res.get("msg") or "") + "\n" + str(res.get("stderr") or "")


def task_name(data: dict[str, Any]) -> str:
    """The task's own name, without a 'role : ' prefix some event sources add."""
    return str(data.get("task", "")).split(" : ", 1)[-1]


def classify(host: str, task: str, res: dict[str, Any]) -> Failure:
    message = failure_message(res)
    if message.startswith(BAD_INPUT_MARKER):
        return Failure(message[len(BAD_INPUT_MARKER):].lstrip(), validation=True)
    if task.startswith((ARG_SPEC_TASK, *LEGACY_VALIDATION_TASKS)):
        return Failure(message, validation=True)
    if _LOST_SSH.search(_connection_text(res)):
        first = message.strip().splitlines()[0]
        return Failure(f'{host} stopped answering (SSH) during "{task}": {first}', lost_host=True)
    return Failure(message)
