"""backup (an archive of each host's databases and artifacts, fetched here) and `backup list`
(the scheduled backups kept on the hosts)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_provision.commands._common import exit_code, run_playbook, secret_store, to_stderr, writable_dir
from mlops_provision.errors import UsageError

if TYPE_CHECKING:  # the real imports happen inside functions, keeping --help fast
    from mlops_provision.runner import RunResult


def backup_listing(args: argparse.Namespace) -> RunResult:
    """The scheduled backups on the hosts (also for restore --from @NAME)."""
    from mlops_provision import locks, targets

    resolved = targets.resolve(args.host, args.inventory)
    # Reads only: no lock wait. The names still hold this machine's per-host lock briefly.
    return run_playbook("backup_list", args, resolved, {}, locks.target_names(args.host, resolved.inventories))


def backup(args: argparse.Namespace) -> int:
    from mlops_provision import archives, locks, summary, targets

    locks.parse_wait(args.lock_wait)
    if args.what == "list":
        listed = backup_listing(args)
        print(summary.backup_list_summary(listed), flush=True)
        return exit_code(listed)
    resolved = targets.resolve(args.host, args.inventory)
    output = writable_dir("--output", args.output)
    result = run_playbook("backup", args, resolved, {"mlflow_backup_fetch_dir": str(output.resolve())},
                          locks.target_names(args.host, resolved.inventories))
    with secret_store(args).session() as secrets_dir:
        key = archives.signing_key(secrets_dir)
    for host in result.hosts.values():
        fetched = str(host.backup.get("fetched", ""))
        if fetched and not host.failed:  # the copy here is the one that counts: check it again, signature too
            try:
                archives.check(Path(fetched), "backup", key)
            except UsageError as exc:
                host.failed += 1
                host.failures.append(str(exc) + ("; deploy the host with this release once (its helper scripts "
                                                 "are older), then back up again" if "not signed" in str(exc) else ""))
    print(summary.backup_summary(result), flush=True)
    if result.interrupted:
        to_stderr(summary.interrupted_message(result))
    return exit_code(result)
