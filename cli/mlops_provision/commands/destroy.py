"""destroy: remove the MLflow service from the hosts (and its data with --purge-data)."""

from __future__ import annotations

import argparse
from typing import Any

from mlops_provision.commands._common import exit_code, run_playbook, to_stderr
from mlops_provision.errors import UsageError


def destroy(args: argparse.Namespace) -> int:
    from mlops_provision import locks, summary, targets
    from mlops_provision.options import check_port

    locks.parse_wait(args.lock_wait)
    if not args.yes:
        raise UsageError("destroy removes the MLflow service from the hosts: add --yes to confirm")
    extravars: dict[str, Any] = {"mlflow_purge_data": bool(args.purge_data)}
    if args.port is not None:
        try:
            port = int(args.port)
        except ValueError:
            raise UsageError(f"--port: {args.port!r} is not a number; valid: 1-65535") from None
        check_port("--port", port, {})
        extravars["mlflow_port"] = port
    resolved = targets.resolve(args.host, args.inventory)
    result = run_playbook("destroy", args, resolved, extravars, locks.target_names(args.host, resolved.inventories))
    print(summary.destroy_summary(result, args.purge_data), flush=True)
    if result.interrupted:
        to_stderr(summary.interrupted_message(result))
    return exit_code(result)
