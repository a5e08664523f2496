"""restore: a deploy that first puts back a backup (--from ARCHIVE or @NAME) or adopts the
SQLite database and artifacts of a server installed by hand (--from-sqlite)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mlops_provision.commands._common import secret_store, to_stderr
from mlops_provision.commands.backup import backup_listing
from mlops_provision.commands.deploy import deploy
from mlops_provision.errors import UsageError


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
        listed = backup_listing(args)
        found = [a for host in listed.hosts.values() for a in host.backup.get("archives", []) if a.get("name") == name]
        if not found:
            raise UsageError(f"--from: {args.source} is not among the scheduled backups on {args.host[0]}; "
                             f"see mlops-provision backup list --host {args.host[0]}")
        archive: Path | str = args.source
        manifest = found[0]
    else:
        archive = Path(args.source).expanduser().resolve()
        # Before any host is touched: the signature (with this machine's key), then every member.
        with secret_store(args).session() as secrets_dir:
            key = archives.signing_key(secrets_dir)
        manifest = archives.check(archive, key=None if args.accept_unverified else key)
        if args.accept_unverified:
            to_stderr(f"WARNING: --accept-unverified-archive: {archive.name} is restored without checking who wrote "
                      "it; its members and checksums were checked")
    release = str(manifest.get("mlflow_version", ""))
    if args.mlflow_version and args.mlflow_version != release:
        raise UsageError(f"--mlflow-version: the archive was written by MLflow {release}, which restore installs; "
                         f"restore it first, then deploy --mlflow-version {args.mlflow_version} (that backs up "
                         "and migrates the databases)")
    args.mlflow_version = release
    to_stderr(f"restoring {Path(str(archive)).name}: {archives.describe(manifest)}; taken on "
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
    to_stderr(f"adopting {args.from_sqlite}" + (f" and {args.adopt_artifacts}" if args.adopt_artifacts else "")
              + f" on {args.host[0]} into the managed layout (the originals are only read)")
    return deploy(args, adopt=(args.from_sqlite, args.adopt_artifacts))
