"""Start a command that dies with the CLI: `python -m mlops_provision.tether PARENT_PID CMD ARGS...`.

ansible-runner starts ansible-playbook in a new session on a pseudo-terminal with SIGHUP
ignored, so a CLI killed outright (SIGKILL, an OOM kill, a closed laptop's terminal) left it
running on its own: holding the host's deploy lock, changing the host with nobody watching,
while the operator's next deploy waited for it. Here the kernel is asked to send SIGTERM when
the parent dies (PR_SET_PDEATHSIG survives exec). SIGTERM, not SIGHUP: ansible-playbook's
SIGTERM handler passes it on to its workers, which run in sessions of their own and would
otherwise finish their task (and its ssh) unwatched. Linux only; elsewhere it just execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m mlops_provision.tether PARENT_PID COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the CLI died before the request took effect
            return 143
    os.execvp(command[0], command)  # noqa: S606 - the command line is ours (runner.run)
    return 127  # not reached: execvp returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
