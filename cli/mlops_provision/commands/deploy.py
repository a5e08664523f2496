"""deploy (and the deploy that restore and restore --from-sqlite run): the playbook, then the
credentials it used are kept and each deployed host's health is checked."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_provision import paths
from mlops_provision.commands._common import Playbook, exit_code, require_hosts, spec_from_args, to_stderr

if TYPE_CHECKING:  # the real imports happen inside functions, keeping --help fast
    from mlops_provision.health import Report
    from mlops_provision.runner import RunResult
    from mlops_provision.spec import DeploySpec
    from mlops_provision.targets import Targets


def server_extravars(spec: DeploySpec, args: argparse.Namespace) -> dict[str, Any]:
    """The variables a deploy passes for its flags (status passes the same: the "nothing to do"
    digest compares them)."""
    extravars = dict(spec.explicit)
    if args.allow_insecure_version or spec.config.get("allow_insecure_version"):
        extravars["mlflow_allow_insecure_version"] = True
    for var in ("mlflow_gcs_credentials_file", "mlflow_sftp_private_key_file",  # control-node paths
                "mlflow_tls_cert_file", "mlflow_tls_key_file"):
        if extravars.get(var):
            extravars[var] = str(Path(extravars[var]).resolve())
    extravars["mlflow_wheelhouse_cache_dir"] = str(paths.cache_dir() / "wheelhouse")
    tls_dir = paths.state_dir() / "tls"  # self-signed certificates fetched from the hosts
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    extravars["mlflow_tls_fetch_dir"] = str(tls_dir)
    return extravars


def deploy(args: argparse.Namespace, restore_from: tuple[Path | str, dict[str, Any]] | None = None,
           adopt: tuple[str, str] | None = None) -> int:
    """deploy, or restore (restore_from: the checked archive and its manifest; adopt: the SQLite
    database and artifact directory of a server installed by hand, on the host)."""
    from mlops_provision import credentials, locks, summary, targets

    locks.parse_wait(args.lock_wait)  # bad input stops before anything else
    spec = spec_from_args(args)
    if spec.effective.get("mlflow_s3_ignore_tls"):
        sys.stderr.write("WARNING: --s3-ignore-tls: the server will not verify the S3 endpoint's certificate; "
                         "anyone on the path can read the artifacts and the keys. Prefer --s3-ca-bundle.\n")
    hosts = args.host or list(spec.config.get("host") or [])
    inventories = args.inventory or ([spec.config["inventory"]] if spec.config.get("inventory") else [])
    resolved = targets.resolve(hosts, inventories)

    extravars = server_extravars(spec, args)
    tls_dir = Path(extravars["mlflow_tls_fetch_dir"])
    if args.force:
        extravars["mlflow_force"] = True
    if getattr(args, "full", False):  # restore shares this function and has no --full
        extravars["mlflow_full_deploy"] = True
    if restore_from is not None:
        extravars["mlflow_restore_archive"] = str(restore_from[0])
        extravars["mlflow_restore_force"] = bool(args.replace_data)
        extravars["mlflow_restore_unverified"] = bool(getattr(args, "accept_unverified", False))
    if adopt is not None:
        extravars["mlflow_adopt_sqlite"], extravars["mlflow_adopt_artifacts"] = adopt
        extravars["mlflow_restore_force"] = bool(args.replace_data)

    urls: dict[str, str] = {}
    reports: dict[str, Report] = {}
    with Playbook("deploy", args, resolved, locks.target_names(hosts, resolved.inventories)) as play:
        # With an inventory the credentials may live there (vaulted group_vars): not required here.
        stored = credentials.resolve(spec.effective, os.environ, play.secrets_dir, required=not inventories)
        result = play.run({**extravars, **stored}, [*spec.secrets(), *stored.values()])
        if not result.interrupted:  # the operator wants out: no follow-up work, nothing kept
            if result.rc == 0 and not args.check:
                credentials.save(spec.effective, os.environ, play.secrets_dir)
            urls, reports = _check_health(args, result, resolved, tls_dir, play.secrets_dir)
    require_hosts(result, resolved, args)

    for name, host in result.hosts.items():
        if name in resolved.sandboxes and host.deployment and host.deployment.port not in (5000, 443):
            sys.stderr.write(f"note: sandbox {name} publishes only ports 5000 and 443 of the VM\n")
    print(summary.deploy_summary(result, urls, reports, check_mode=args.check), flush=True)
    if result.interrupted:
        to_stderr(summary.interrupted_message(result))
    return exit_code(result)


def _trusted_ca(tls_dir: Path, name: str, tls: str) -> str:
    """The CA file a client of NAME needs: a self-signed certificate as fetched from the host;
    for a provided one the system's CAs (""), or MLflow's own client variable for a private CA."""
    ca = tls_dir / f"{name}.crt"
    if tls == "self-signed" and ca.is_file():
        return str(ca)
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", "") if tls else ""


def _check_health(args: argparse.Namespace, result: RunResult, resolved: Targets, tls_dir: Path,
                  secrets_dir: Path) -> tuple[dict[str, str], dict[str, Report]]:
    """Record where each deployed host answers and check its health, logging in with the
    password in the (still open) secrets store; returns the URLs and the reports by host."""
    from mlops_provision import endpoints
    from mlops_provision import health as health_mod

    urls: dict[str, str] = {}
    reports: dict[str, Report] = {}
    for name, host in result.hosts.items():
        dep = host.deployment
        if dep is None or host.failed or args.check:  # --check and failures change nothing to record
            continue
        ca_file = _trusted_ca(tls_dir, name, dep.tls)
        endpoint = endpoints.record(name, resolved.url(name, dep.port, dep.scheme),
                                    {"auth_user": dep.auth_user, "auth_realm": dep.auth_realm,
                                     "auth_cache_ttl": dep.auth_cache_ttl}, ca_file)
        urls[name] = endpoint.url
        access = health_mod.Access(endpoint.auth_user, endpoint.password(secrets_dir) or "", ca_file)
        reports[name] = health_mod.check(endpoint.url, timeout=5, access=access)
    # A load balancer answers for the servers behind it: the same login (their realm's admin).
    realm = next((h.deployment for h in result.hosts.values() if h.deployment is not None and not h.failed), None)
    for name, host in result.hosts.items():
        if not host.load_balancer or host.failed or args.check:
            continue
        port = int(host.load_balancer.get("port") or 5000)
        auth = {"auth_user": realm.auth_user, "auth_realm": realm.auth_realm,
                "auth_cache_ttl": realm.auth_cache_ttl} if realm is not None else {}
        ca_file = _trusted_ca(tls_dir, name, str(host.load_balancer.get("tls") or ""))
        endpoint = endpoints.record(name, resolved.url(name, port, str(host.load_balancer.get("scheme") or "http")),
                                    auth, ca_file)
        urls[name] = endpoint.url
        access = health_mod.Access(endpoint.auth_user, endpoint.password(secrets_dir) or "", ca_file)
        reports[name] = health_mod.check(endpoint.url, timeout=5, access=access)
    return urls, reports
