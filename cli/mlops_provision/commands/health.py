"""health: check deployed servers (--host, -i) or any MLflow URL (--url) from here."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mlops_provision.commands._common import secret_store
from mlops_provision.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, UsageError


def health(args: argparse.Namespace) -> int:
    from mlops_provision import endpoints, targets
    from mlops_provision import health as health_mod

    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port: {args.port} is not a TCP port; valid: 1-65535")
    # --url: credentials, if any, from MLflow's own client variables.
    env_access = health_mod.Access(os.environ.get("MLFLOW_TRACKING_USERNAME", ""),
                                   os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
                                   os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", ""))
    checks: dict[str, tuple[str, endpoints.Endpoint | None]] = {}
    for url in args.url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url {url!r}: must start with http:// or https://")
        checks[url] = (url, None)
    if args.host or args.inventory:
        resolved = targets.resolve(args.host, args.inventory)
        for name in args.host or list(resolved.addresses):
            known = endpoints.lookup(name)
            if known is not None and args.port is None:
                checks[name] = (known.url, known)
            else:
                checks[name] = (resolved.url(name, args.port or 5000), None)
    if not checks:
        raise UsageError("give --host NAME, -i INVENTORY or --url URL")

    def run(secrets_dir: Path | None) -> dict[str, health_mod.Report]:
        out = {}
        for name, (url, known) in checks.items():
            access = env_access
            if known is not None:
                password = known.password(secrets_dir) if secrets_dir else None
                access = health_mod.Access(known.auth_user, password or "", known.ca_file)
            out[name] = health_mod.check(url, deep=args.deep, timeout=args.timeout, access=access)
        return out

    if any(known is not None and known.auth_user for _, known in checks.values()):
        with secret_store(args).session() as secrets_dir:
            reports = run(secrets_dir)
    else:
        reports = run(None)
    if args.json:
        print(json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=2))
    else:
        print(health_mod.format_table(reports))
    if any(not r.healthy and not r.unreachable for r in reports.values()):
        return EXIT_FAILED
    if any(r.unreachable for r in reports.values()):
        return EXIT_UNREACHABLE
    return EXIT_OK
