"""status: every server and load balancer of the targets in one table (or --json): what runs,
since when, whether it answers and reads its database, and what differs from the configuration
and from the last finished deploy. Reads only: the playbook runs in check mode, takes no lock,
and the secrets it needs come from a throwaway copy of the store."""

from __future__ import annotations

import argparse
import os

from mlops_provision.commands._common import Playbook, exit_code, require_hosts, spec_from_args
from mlops_provision.errors import EXIT_FAILED, EXIT_OK


def status(args: argparse.Namespace) -> int:
    from mlops_provision import credentials, status, targets
    from mlops_provision.commands.deploy import server_extravars

    spec = spec_from_args(args)
    hosts = args.host or list(spec.config.get("host") or [])
    inventories = args.inventory or ([spec.config["inventory"]] if spec.config.get("inventory") else [])
    resolved = targets.resolve(hosts, inventories)
    # A dry run that waits for nobody: the table says when a deploy holds a host's lock.
    args.check, args.tags, args.diff, args.lock_wait = True, None, False, "0"
    with Playbook("status", args, resolved, []) as play:
        stored = credentials.resolve(spec.effective, os.environ, play.secrets_dir, required=False)
        result = play.run({**server_extravars(spec, args), **stored}, [*spec.secrets(), *stored.values()])
    require_hosts(result, resolved, args)
    print(status.as_json(result) if args.json else status.table(result), flush=True)
    code = exit_code(result)
    if code == EXIT_OK and not status.in_order(result):
        return EXIT_FAILED
    return code
