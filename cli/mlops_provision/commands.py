"""One handler per subcommand: validated input -> playbook run or local action -> output."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_provision import paths
from mlops_provision.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
)
from mlops_provision.options import OPTIONS

if TYPE_CHECKING:  # the real imports happen inside handlers, keeping --help fast
    from mlops_provision.runner import RunResult
    from mlops_provision.spec import DeploySpec
    from mlops_provision.targets import Targets


def dispatch(args: argparse.Namespace) -> int:
    handler = {
        "deploy": deploy, "render": render, "health": health, "destroy": destroy, "sandbox": sandbox,
        "user": user, "backup": backup, "restore": restore,
    }[args.command]
    return handler(args)


def _spec(args: argparse.Namespace) -> DeploySpec:
    from mlops_provision.spec import build_spec

    flags = {opt.key: getattr(args, opt.key, None) for opt in OPTIONS}
    flags["allow_insecure_version"] = getattr(args, "allow_insecure_version", False)
    return build_spec(flags, args.config)


def _exit_code(result: RunResult) -> int:
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


def _run(action: str, args: argparse.Namespace, targets: Targets, extravars: dict[str, Any],
         secrets: list[str], lock_names: list[str], with_secrets: Callable[[Path], dict[str, str]] | None = None,
         on_success: Callable[[Path], None] | None = None,
         after: Callable[[Path, RunResult], None] | None = None) -> RunResult:
    """Run a playbook while holding this machine's lock of every target; with_secrets(secrets_dir)
    adds variables taken from the secrets store, on_success(secrets_dir) may keep new secrets once
    the run succeeded, and after(secrets_dir, result) runs while the secrets are still open (e.g.
    health checks that log in)."""
    from mlops_provision import locks, runner
    from mlops_provision.secrets import SecretStore, read_vault_password, throwaway_copy

    lock_wait = locks.parse_wait(args.lock_wait)
    vault_password = read_vault_password(args.vault_password_file, args.ask_vault_pass)
    store = SecretStore(vault_password)
    with contextlib.ExitStack() as stack:
        stack.enter_context(locks.hold(lock_names, lock_wait, log=_to_stderr))
        secrets_dir = stack.enter_context(store.session())
        if args.check:  # the roles' password lookups would keep passwords of a deploy that never happened
            secrets_dir = stack.enter_context(throwaway_copy(secrets_dir))
        if with_secrets is not None:
            stored = with_secrets(secrets_dir)
            extravars = {**extravars, **stored}
            secrets = [*secrets, *stored.values()]
        request = runner.RunRequest(
            action=action, inventories=targets.inventories, generated_inventory=targets.generated,
            # The role also locks the host itself, waiting as long as we did here.
            extravars={"mlflow_hosts": targets.pattern, "mlflow_lock_wait_sec": lock_wait, **extravars},
            passthrough_extravars=args.extra_vars, limit=args.limit, tags=args.tags,
            check=args.check, diff=args.diff, verbosity=args.verbose, secrets=secrets,
            secrets_dir=secrets_dir, vault_password=vault_password,
        )
        result = runner.run(request)
        if result.interrupted:  # the operator wants out: no follow-up work, nothing kept
            return result
        if on_success is not None and result.rc == 0 and not args.check:
            on_success(secrets_dir)
        if after is not None:
            after(secrets_dir, result)
    if not result.hosts:
        raise UsageError(f"no host matched {targets.pattern!r}"
                         + (f" with --limit {args.limit}" if args.limit else "")
                         + f"; see the run log {result.run_dir / 'ansible.log'}")
    return result


def deploy(args: argparse.Namespace, restore_from: tuple[Path | str, dict[str, Any]] | None = None,
           adopt: tuple[str, str] | None = None) -> int:
    """deploy, or restore (restore_from: the checked archive and its manifest; adopt: the SQLite
    database and artifact directory of a server installed by hand, on the host)."""
    from mlops_provision import credentials, endpoints, locks, summary, targets
    from mlops_provision import health as health_mod

    locks.parse_wait(args.lock_wait)  # bad input stops before anything else
    spec = _spec(args)
    if spec.effective.get("mlflow_s3_ignore_tls"):
        sys.stderr.write("WARNING: --s3-ignore-tls: the server will not verify the S3 endpoint's certificate; "
                         "anyone on the path can read the artifacts and the keys. Prefer --s3-ca-bundle.\n")
    hosts = args.host or list(spec.config.get("host") or [])
    inventories = args.inventory or ([spec.config["inventory"]] if spec.config.get("inventory") else [])
    resolved = targets.resolve(hosts, inventories)

    extravars = dict(spec.explicit)
    for var in ("mlflow_gcs_credentials_file", "mlflow_sftp_private_key_file",  # control-node paths
                "mlflow_tls_cert_file", "mlflow_tls_key_file"):
        if extravars.get(var):
            extravars[var] = str(Path(extravars[var]).resolve())
    extravars["mlflow_wheelhouse_cache_dir"] = str(paths.cache_dir() / "wheelhouse")
    tls_dir = paths.state_dir() / "tls"  # self-signed certificates fetched from the hosts
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    extravars["mlflow_tls_fetch_dir"] = str(tls_dir)
    if args.force:
        extravars["mlflow_force"] = True
    if args.allow_insecure_version or spec.config.get("allow_insecure_version"):
        extravars["mlflow_allow_insecure_version"] = True
    carried: dict[str, str] = {}  # restore onto another host: the source's admin password
    if restore_from is not None:
        extravars["mlflow_restore_archive"] = str(restore_from[0])
        extravars["mlflow_restore_force"] = bool(args.replace_data)
    if adopt is not None:
        extravars["mlflow_adopt_sqlite"], extravars["mlflow_adopt_artifacts"] = adopt
        extravars["mlflow_restore_force"] = bool(args.replace_data)

    def store_credentials(secrets_dir: Path) -> dict[str, str]:
        # With an inventory the credentials may live there (vaulted group_vars): not required here.
        found = credentials.resolve(spec.effective, os.environ, secrets_dir, required=not inventories)
        if restore_from is not None and restore_from[1].get("auth"):
            source = str(restore_from[1].get("host", ""))
            known = endpoints.lookup(source)
            password = known.password(secrets_dir) if known is not None and source not in hosts else None
            if password:  # the restored user database knows the source's admin, not a new one
                carried["password"] = found["mlflow_auth_admin_password"] = password
        return found

    urls: dict[str, str] = {}
    reports: dict[str, health_mod.Report] = {}

    def check_health(secrets_dir: Path, result: RunResult) -> None:
        for name, host in result.hosts.items():
            dep = host.deployment
            if dep is None or host.failed or args.check:  # --check and failures change nothing to record
                continue
            ca = tls_dir / f"{name}.crt"
            # A self-signed certificate is trusted as fetched; a provided one through the system's
            # CAs, or MLflow's own client variable for a private CA.
            ca_file = (str(ca) if dep.tls == "self-signed" and ca.is_file()
                       else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", "") if dep.tls else "")
            endpoint = endpoints.record(name, resolved.url(name, dep.port, dep.scheme),
                                        {"auth_user": dep.auth_user, "auth_realm": dep.auth_realm}, ca_file)
            if carried and dep.restored:
                endpoint.set_password(secrets_dir, carried["password"])
            urls[name] = endpoint.url
            access = health_mod.Access(endpoint.auth_user, endpoint.password(secrets_dir) or "", ca_file)
            reports[name] = health_mod.check(endpoint.url, timeout=5, access=access)

    result = _run("deploy", args, resolved, extravars, spec.secrets(), locks.target_names(hosts, resolved.inventories),
                  store_credentials, lambda secrets_dir: credentials.save(spec.effective, os.environ, secrets_dir),
                  check_health)
    for name, host in result.hosts.items():
        if name in resolved.sandboxes and host.deployment and host.deployment.port not in (5000, 443):
            sys.stderr.write(f"note: sandbox {name} publishes only ports 5000 and 443 of the VM\n")
    print(summary.deploy_summary(result, urls, reports, check_mode=args.check), flush=True)
    if result.interrupted:
        _to_stderr(summary.interrupted_message(result))
    return _exit_code(result)


def restore(args: argparse.Namespace) -> int:
    from mlops_provision import archives

    if bool(args.source) == bool(args.from_sqlite):
        raise UsageError("restore needs exactly one of --from ARCHIVE (a backup) and --from-sqlite FILE "
                         "(a server installed by hand)")
    if args.adopt_artifacts and not args.from_sqlite:
        raise UsageError("--artifacts goes with --from-sqlite; an archive from --from holds its own artifacts")
    if args.from_sqlite:
        return _adopt(args)
    if args.source.startswith("@"):  # a scheduled backup on the host: its summary says what it holds
        if len(args.host) != 1:
            raise UsageError("--from @NAME: name exactly one --host, the one that keeps the backup")
        name = args.source[1:]
        if not re.match(r"^mlflow-backup-[A-Za-z0-9._-]+\.tar\.gz$", name):
            raise UsageError(f"--from: {args.source!r} is not a scheduled backup's name; valid: @NAME with a "
                             "NAME that `backup list` shows (mlflow-backup-HOST-TIME.tar.gz)")
        listed = _backup_listing(args)
        found = [a for host in listed.hosts.values() for a in host.backup.get("archives", []) if a.get("name") == name]
        if not found:
            raise UsageError(f"--from: {args.source} is not among the scheduled backups on {args.host[0]}; "
                             f"see mlops-provision backup list --host {args.host[0]}")
        archive: Path | str = args.source
        manifest = found[0]
    else:
        archive = Path(args.source).expanduser().resolve()
        manifest = archives.check(archive)
    release = str(manifest.get("mlflow_version", ""))
    if args.mlflow_version and args.mlflow_version != release:
        raise UsageError(f"--mlflow-version: the archive was written by MLflow {release}, which restore installs; "
                         f"restore it first, then deploy --mlflow-version {args.mlflow_version} (that backs up "
                         "and migrates the databases)")
    args.mlflow_version = release
    _to_stderr(f"restoring {Path(str(archive)).name}: {archives.describe(manifest)}; taken on "
               f"{manifest.get('host')} at {manifest.get('created_at')}, MLflow {release}")
    return deploy(args, (archive, manifest))


def _adopt(args: argparse.Namespace) -> int:
    """restore --from-sqlite: the host turns the hand-run server's database and artifact
    directory into an archive (restore_prepare.yml), then restores it like any other."""
    if len(args.host) != 1:
        raise UsageError("--from-sqlite: name exactly one --host, the one that holds the database")
    for flag, value in (("--from-sqlite", args.from_sqlite), ("--artifacts", args.adopt_artifacts)):
        if value and (not value.startswith("/") or re.search(r"[\x00-\x1f]|/\.\.?(/|$)", value)):
            raise UsageError(f"{flag}: {value!r} must be an absolute path on the host, without . or .. parts")
    _to_stderr(f"adopting {args.from_sqlite}" + (f" and {args.adopt_artifacts}" if args.adopt_artifacts else "")
               + f" on {args.host[0]} into the managed layout (the originals are only read)")
    return deploy(args, adopt=(args.from_sqlite, args.adopt_artifacts))


def _backup_listing(args: argparse.Namespace) -> RunResult:
    from mlops_provision import locks, targets

    resolved = targets.resolve(args.host, args.inventory)
    # Reads only: no lock wait. The names still hold this machine's per-host lock briefly.
    return _run("backup_list", args, resolved, {}, [], locks.target_names(args.host, resolved.inventories))


def backup(args: argparse.Namespace) -> int:
    from mlops_provision import archives, locks, summary, targets

    locks.parse_wait(args.lock_wait)
    if args.what == "list":
        listed = _backup_listing(args)
        print(summary.backup_list_summary(listed), flush=True)
        return _exit_code(listed)
    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output: {args.output} is not a directory; valid: a directory on this machine "
                         "(created when missing)")
    resolved = targets.resolve(args.host, args.inventory)
    output.mkdir(parents=True, exist_ok=True)
    result = _run("backup", args, resolved, {"mlflow_backup_fetch_dir": str(output.resolve())}, [],
                  locks.target_names(args.host, resolved.inventories))
    for host in result.hosts.values():
        fetched = str(host.backup.get("fetched", ""))
        if fetched and not host.failed:  # the copy here is the one that counts: check it again
            try:
                archives.check(Path(fetched), "backup")
            except UsageError as exc:
                host.failed += 1
                host.failures.append(str(exc))
    print(summary.backup_summary(result), flush=True)
    if result.interrupted:
        _to_stderr(summary.interrupted_message(result))
    return _exit_code(result)


def render(args: argparse.Namespace) -> int:
    from mlops_provision.render import LOCAL_ONLY_HOSTS, render_files, write_files

    spec = _spec(args)
    files = render_files(spec, mask_secrets=True)
    note = ""
    if not spec.effective.get("mlflow_allowed_hosts"):
        note = (f"note: MLFLOW_SERVER_ALLOWED_HOSTS shows {','.join(LOCAL_ONLY_HOSTS)}; on a host it also "
                "lists that host's names and addresses (pin it with --allowed-hosts)\n")
    if args.output_dir:
        for path in write_files(files, Path(args.output_dir)):
            print(path)
    else:
        for name, text in files.items():
            print(f"# ---- {name} ----")
            sys.stdout.write(text)
    sys.stderr.write(note)
    return EXIT_OK


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
        with _secret_store(args).session() as secrets_dir:
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


def _secret_store(args: argparse.Namespace) -> Any:
    from mlops_provision.secrets import SecretStore, read_vault_password

    return SecretStore(read_vault_password(args.vault_password_file, args.ask_vault_pass))


def user(args: argparse.Namespace) -> int:
    from mlops_provision import endpoints, users
    from mlops_provision import health as health_mod

    known = endpoints.lookup(args.host)
    if known is None:
        raise UsageError(f"--host {args.host}: no deploy from this machine recorded it; deploy it first "
                         "(the user commands log in with the admin password kept here)")
    if not known.auth_user:
        raise UsageError(f"--host {args.host}: deployed with --auth none, so it has no users; "
                         "deploy again without --auth none to turn basic auth on")
    username = getattr(args, "username", "")
    if username and not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", username):
        raise UsageError(f"username {username!r}: use 1-64 of A-Z a-z 0-9 _ . @ -")
    new_password = ""
    if args.user_command in ("add", "passwd"):
        if args.password_stdin:
            new_password = sys.stdin.readline().rstrip("\n")
            if len(new_password) < 12 or re.search(r"[\x00-\x1f\x7f]", new_password):
                raise UsageError("--password-stdin: the password needs 12 or more characters on one line")
        else:
            new_password = users.generate_password()
    if args.user_command == "remove" and username == known.auth_user:
        raise UsageError(f"{username} is the admin user this tool logs in with; it cannot be removed here")
    with _secret_store(args).session() as secrets_dir:
        admin_password = known.password(secrets_dir)
        if not admin_password:
            raise UsageError(f"the admin password of {args.host} is not in the secrets store on this machine")
        if args.user_command == "admin-password":
            print(admin_password)
            return EXIT_OK
        try:
            client = health_mod.Client(known.url, 30,
                                       health_mod.Access(known.auth_user, admin_password, known.ca_file))
        except ValueError as exc:
            raise UsageError(f"--host {args.host}: {exc}") from None
        if args.user_command == "list":
            rows = users.list_users(client)
            print(f"{'USER':<32} ADMIN")
            for row in sorted(rows, key=lambda r: str(r.get("username"))):
                print(f"{row.get('username', ''):<32} {'yes' if row.get('is_admin') else 'no'}")
        elif args.user_command == "add":
            users.add(client, username, new_password)
            print(f"user {username} created on {args.host}" + ("" if args.password_stdin else
                  f"; password (shown once, not kept): {new_password}"), flush=True)
            if args.admin:
                users.make_admin(client, username)
                print(f"user {username} is an admin")
        elif args.user_command == "passwd":
            own = username == known.auth_user
            users.set_password(client, username, new_password, admin_password if own else "")
            if own:  # the tool logs in with it: keep the new one
                known.set_password(secrets_dir, new_password)
            print(f"password of {username} changed on {args.host}" + (
                "; kept in the secrets store" if own else
                "" if args.password_stdin else f"; new password (shown once, not kept): {new_password}"))
        elif args.user_command == "remove":
            users.remove(client, username)
            print(f"user {username} removed from {args.host}")
    return EXIT_OK


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
    result = _run("destroy", args, resolved, extravars, [], locks.target_names(args.host, resolved.inventories))
    print(summary.destroy_summary(result, args.purge_data), flush=True)
    if result.interrupted:
        _to_stderr(summary.interrupted_message(result))
    return _exit_code(result)


def _to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def sandbox(args: argparse.Namespace) -> int:
    from mlops_provision.sandbox import image, machines

    if args.sandbox_command == "up":
        box = machines.up(args.name, args.distro, host_loopback=args.host_loopback,
                          log=_to_stderr)
        print(f"sandbox {box.name} ({box.distro}) is up: ssh -p {box.ssh_port} -i {box.key_file} "
              f"{box.user}@127.0.0.1")
        print(f"  MLflow port 5000 of the VM is published at {box.url}")
        print(f"  next: mlops-provision deploy --host {box.name}")
    elif args.sandbox_command == "down":
        _sandbox_down(args)
    elif args.sandbox_command == "list":
        rows = machines.list_all()
        print(f"{'NAME':<14} {'DISTRO':<9} {'STATE':<9} {'SSH':<16} MLFLOW URL")
        for box, state in rows:
            print(f"{box.name:<14} {box.distro:<9} {state:<9} 127.0.0.1:{box.ssh_port:<6} {box.url}")
    elif args.sandbox_command == "image":
        print(image.build_image(args.distro, force=args.rebuild, log=_to_stderr))
    return EXIT_OK


def _sandbox_down(args: argparse.Namespace) -> None:
    """Remove the VM, then what this machine kept for it: its secrets and its endpoint record,
    so a new sandbox of the same name starts with new passwords."""
    from mlops_provision.sandbox import machines

    names = machines.secret_names(args.name)
    store = _secret_store(args)
    if store.vaulted and store.vault_password is not None:
        store.values()  # a wrong vault password stops here, before the VM is gone
    print(f"sandbox {args.name} " + ("removed" if machines.down(args.name) else "did not exist"))
    store.remove(names)
    machines.forget_endpoint(args.name)
    if store.vaulted and store.vault_password is None:
        _to_stderr(f"note: {store.vault_file} is vault-encrypted and no vault password was given, so "
                   f"{', '.join(names)} stay in it (where present); remove them with: mlops-provision sandbox "
                   f"down --name {args.name} --vault-password-file FILE (or --ask-vault-pass)")
