"""What several subcommands share: the spec from the flags, one playbook run under this
machine's locks with the secrets store open, the exit code of a run, the secrets store."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlops_provision.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
)
from mlops_provision.options import OPTIONS

if TYPE_CHECKING:  # the real imports happen inside functions, keeping --help fast
    from mlops_provision.runner import RunResult
    from mlops_provision.secrets import SecretStore
    from mlops_provision.spec import DeploySpec
    from mlops_provision.targets import Targets


def spec_from_args(args: argparse.Namespace) -> DeploySpec:
    from mlops_provision.spec import build_spec

    flags = {opt.key: getattr(args, opt.key, None) for opt in OPTIONS}
    flags["allow_insecure_version"] = getattr(args, "allow_insecure_version", False)
    return build_spec(flags, args.config)


def exit_code(result: RunResult) -> int:
    if result.interrupted:
        return EXIT_INTERRUPTED
    hosts = result.hosts.values()
    if hosts and all(h.validation_failed for h in hosts if h.failed) and any(h.failed for h in hosts):
        return EXIT_USAGE
    if any(h.failed for h in hosts):
        return EXIT_FAILED
    if result.any_unreachable:
        return EXIT_UNREACHABLE
    return EXIT_FAILED if result.rc != 0 else EXIT_OK


class Playbook:
    """One playbook run, as a sequence the caller spells out in order:

        with Playbook("deploy", args, targets, lock_names) as play:  # this machine's lock of every
            stored = ...(play.secrets_dir)                          # target, then the secrets store
            result = play.run(extravars, secrets)                   # the playbook
            if not result.interrupted:  # the operator wants out: no follow-up work, nothing kept
                ...  # keep new secrets, check health: the store is still open
        require_hosts(result, targets, args)                        # once the locks are free

    Under --check, secrets_dir is a throwaway copy of the store: the roles' password lookups
    would keep passwords of a deploy that never happened."""

    def __init__(self, action: str, args: argparse.Namespace, targets: Targets, lock_names: list[str]) -> None:
        self.action = action
        self.args = args
        self.targets = targets
        self.lock_names = lock_names
        self.lock_wait = 0
        self.vault_password: bytes | None = None
        self.secrets_dir = Path()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Playbook:
        from mlops_provision import locks
        from mlops_provision.secrets import SecretStore, read_vault_password, throwaway_copy

        self.lock_wait = locks.parse_wait(self.args.lock_wait)
        self.vault_password = read_vault_password(self.args.vault_password_file, self.args.ask_vault_pass)
        store = SecretStore(self.vault_password)
        with contextlib.ExitStack() as stack:  # what was entered is left again if a later step fails
            stack.enter_context(locks.hold(self.lock_names, self.lock_wait, log=to_stderr))
            self.secrets_dir = stack.enter_context(store.session())
            if self.args.check:
                self.secrets_dir = stack.enter_context(throwaway_copy(self.secrets_dir))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        return self._stack.__exit__(exc_type, exc, tb)

    def run(self, extravars: dict[str, Any], secrets: list[str]) -> RunResult:
        """The playbook; secrets are the values to redact from its output and logs."""
        from mlops_provision import runner

        args, targets = self.args, self.targets
        request = runner.RunRequest(
            action=self.action, inventories=targets.inventories, generated_inventory=targets.generated,
            # The role also locks the host itself, waiting as long as we did here.
            extravars={"mlflow_hosts": targets.pattern, "mlflow_lock_wait_sec": self.lock_wait, **extravars},
            passthrough_extravars=args.extra_vars, limit=args.limit, tags=args.tags,
            check=args.check, diff=args.diff, verbosity=args.verbose, secrets=secrets,
            secrets_dir=self.secrets_dir, vault_password=self.vault_password,
        )
        return runner.run(request)


def require_hosts(result: RunResult, targets: Targets, args: argparse.Namespace) -> None:
    """A run that matched no host was bad input (an interrupted one is reported as such)."""
    if not result.interrupted and not result.hosts:
        raise UsageError(f"no host matched {targets.pattern!r}"
                         + (f" with --limit {args.limit}" if args.limit else "")
                         + f"; see the run log {result.run_dir / 'ansible.log'}")


def run_playbook(action: str, args: argparse.Namespace, targets: Targets, extravars: dict[str, Any],
                 lock_names: list[str]) -> RunResult:
    """A run with nothing before or after it: the playbook alone, under the locks."""
    with Playbook(action, args, targets, lock_names) as play:
        result = play.run(extravars, [])
    require_hosts(result, targets, args)
    return result


def writable_dir(flag: str, value: str) -> Path:
    """A directory on this machine that a command writes into: made when missing; bad input
    (exit 2, naming the flag and why) when it cannot be, before anything runs on a host."""
    import os

    path = Path(value).expanduser()
    valid = "valid: a directory on this machine that you can write to (created when missing)"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag}: {value} is not a directory; {valid}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot create {value} ({exc.strerror or exc}); {valid}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {value} is not writable; {valid}")
    return path


def secret_store(args: argparse.Namespace) -> SecretStore:
    from mlops_provision.secrets import SecretStore, read_vault_password

    return SecretStore(read_vault_password(args.vault_password_file, args.ask_vault_pass))


def to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
