"""One module per subcommand (pipx's commands/ is the model): validated input -> playbook run or
local action -> output. What several of them share is in _common. The CLI imports this package
only after parsing, and each handler imports what it needs when it runs, so --help stays fast."""

from __future__ import annotations

import argparse

from mlops_provision.commands import (
    alert_rules,
    backup,
    deploy,
    destroy,
    health,
    render,
    restore,
    sandbox,
    status,
    user,
)


def dispatch(args: argparse.Namespace) -> int:
    handler = {
        "deploy": deploy.deploy, "render": render.render, "health": health.health, "destroy": destroy.destroy,
        "sandbox": sandbox.sandbox, "user": user.user, "backup": backup.backup, "restore": restore.restore,
        "status": status.status, "alert-rules": alert_rules.alert_rules,
    }[args.command]
    return handler(args)
