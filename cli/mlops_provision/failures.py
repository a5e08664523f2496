"""What a failed task means: bad input (exit 2), a host that stopped answering (exit 3), or a
real failure (exit 1), and the message the operator sees for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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


def failure_message(res: dict[str, Any]) -> str:
    msg = str(res.get("msg") or "").strip()
    if res.get("stderr"):
        msg = (msg + "\n" + str(res["stderr"]).strip()).strip()
    if not msg and res.get("censored"):
        msg = str(res["censored"])
    return msg or "failed (run with -v, or read the run log, for details)"


def task_name(data: dict[str, Any]) -> str:
    """The task's own name, without a 'role : ' prefix some event sources add."""
    return str(data.get("task", "")).split(" : ", 1)[-1]


def classify(host: str, task: str, res: dict[str, Any]) -> Failure:
    message = failure_message(res)
    if message.startswith(BAD_INPUT_MARKER):
        return Failure(message[len(BAD_INPUT_MARKER):].lstrip(), validation=True)
    if task.startswith((ARG_SPEC_TASK, *LEGACY_VALIDATION_TASKS)):
        return Failure(message, validation=True)
    if _LOST_SSH.search(message):
        first = message.strip().splitlines()[0]
        return Failure(f'{host} stopped answering (SSH) during "{task}": {first}', lost_host=True)
    return Failure(message)
