"""MLflow's databases on the host: status, backup, migrate and restore, for SQLite and PostgreSQL.

Runs on the MLflow host with a venv's Python (the target release's for `status` and `migrate`:
its migration scripts decide what "current", "outdated" and "newer" mean). The tracking URL
comes from MLFLOW_DB_URL and the basic-auth user database's from MLFLOW_AUTH_DB_URL (empty when
auth is off), both without a password: libpq, pg_dump and psql read PGPASSWORD, which the role
sets from stdin for this process only, so no secret is in argv or in sudo's command line.

    status   [--backup-dir DIR]   connection, schema revisions against the target's heads,
                                  row counts, database sizes and the backup directory's free space
    backup   --dest DIR           a consistent copy: SQLite's online backup API (never `cp` of a
                                  live file), `pg_dump -Fc` for PostgreSQL; manifest.json with
                                  revisions, counts, sizes and SHA-256 of every file
    migrate                       upgrade each outdated database to the target's head, once
    restore  --from DIR --owner U put a backup back in place (SQLite: atomic rename; PostgreSQL:
                                  every object of the database user dropped and the dump
                                  restored in one transaction)
    compare                       row counts now against MLFLOW_COUNTS_BEFORE (JSON of status's
                                  "databases"): a table with fewer rows than before lost data

Prints one JSON object. `status` always exits 0 (the role decides what a failure means); the
others exit 1 with {"ok": false, "error": ...} when they fail.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COUNTED = {
    "tracking": ["experiments", "runs", "metrics", "params", "registered_models", "model_versions",
                 "trace_info", "logged_models"],
    "auth": ["users"],
}
VERSION_TABLES = {"tracking": "alembic_version", "auth": "alembic_version_auth"}
DUMP = "mlflow.pgdump"


def _urls() -> dict[str, str]:
    urls = {"tracking": os.environ["MLFLOW_DB_URL"], "auth": os.environ.get("MLFLOW_AUTH_DB_URL", "")}
    return {name: url for name, url in urls.items() if url}


def _sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql") else url


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _engine(url: str) -> Any:
    import sqlalchemy

    args = {} if _sqlite_path(url) else {"connect_args": {"connect_timeout": 5}}
    return sqlalchemy.create_engine(_sqlalchemy_url(url), poolclass=sqlalchemy.pool.NullPool, **args)


# Where each database's migration scripts live in the MLflow package, found without importing
# MLflow (2.5 s of CPU on every deploy): their `revision`/`down_revision` are all status needs.
MIGRATIONS = {"tracking": ("store", "db_migrations", "versions"),
              "auth": ("server", "auth", "db", "migrations", "versions")}


def _migrations(kind: str) -> dict[str, str | None]:
    """revision -> down_revision of the venv's MLflow migration scripts for `kind`."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MLflow is not installed in this venv")
    graph: dict[str, str | None] = {}
    for script in Path(spec.submodule_search_locations[0], *MIGRATIONS[kind]).glob("*.py"):
        values = {}
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in ("revision", "down_revision"):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            graph[values["revision"]] = down if isinstance(down, str) or down is None else ",".join(down)
    if not graph:
        raise RuntimeError(f"no migration scripts for the {kind} database in {spec.submodule_search_locations[0]}")
    return graph


def _head(graph: dict[str, str | None]) -> str:
    downs = {part for down in graph.values() if down for part in down.split(",")}
    return ",".join(sorted(set(graph) - downs))


def _relation(kind: str, current: str | None) -> tuple[str, str]:
    """The database's revision against the target release's migrations: (head, relation)."""
    graph = _migrations(kind)
    head = _head(graph)
    if current is None:
        return head, "empty"
    if current == head:
        return head, "current"
    # Unknown to the target's scripts: written by a newer MLflow. MLflow does not migrate down.
    return head, "outdated" if current in graph else "newer"


def _connect(url: str) -> Any:
    """A DB-API connection: sqlite3 (read-only) or psycopg2, both far lighter than SQLAlchemy."""
    path = _sqlite_path(url)
    if path is not None:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    import psycopg2  # in the venv of every PostgreSQL deploy

    return psycopg2.connect(re.sub(r"^postgresql(\+\w+)?://", "postgresql://", url), connect_timeout=5)


def _read_database(kind: str, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url, "current": None, "counts": {}}
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        out["head"], out["relation"] = _relation(kind, None)
        out["size"] = 0
        return out
    conn = _connect(url)
    try:
        cur = conn.cursor()

        def scalar(query: str) -> Any:
            cur.execute(query)
            return cur.fetchone()[0]

        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'" if path is not None
                    else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        tables = {row[0] for row in cur.fetchall()}
        if VERSION_TABLES[kind] in tables:
            out["current"] = scalar(f"SELECT version_num FROM {VERSION_TABLES[kind]}")  # noqa: S608 - a constant
        elif kind == "auth" and "users" in tables:
            out["current"] = "legacy"  # before MLflow 3.6: tables without a version table
        for table in COUNTED[kind]:
            if table in tables:
                out["counts"][table] = int(scalar(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608 - names from COUNTED
        if path is None:
            out["size"] = int(scalar("SELECT pg_database_size(current_database())"))
            out["max_connections"] = int(scalar("SHOW max_connections"))
        else:
            out["size"] = path.stat().st_size
    finally:
        conn.close()
    if out["current"] == "legacy":
        out["head"], out["relation"] = _head(_migrations(kind)), "outdated"
    else:
        out["head"], out["relation"] = _relation(kind, out["current"])
    return out


def _error_text(exc: BaseException) -> str:
    reason = getattr(exc, "orig", None) or exc
    # libpq repeats the same failure for each attempt (SSL, then plain): say it once.
    lines = [" ".join(line.split()) for line in str(reason).splitlines() if line.strip()]
    return " ".join(dict.fromkeys(lines))[:400] or type(reason).__name__


def status(backup_dir: str) -> dict[str, Any]:
    urls = _urls()
    parts = urlsplit(urls["tracking"])
    out: dict[str, Any] = {
        "ok": False, "error": "", "endpoint": f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else "",
        "user": unquote(parts.username or ""), "max_connections": 0, "databases": {},
    }
    try:
        for kind, url in urls.items():
            out["databases"][kind] = _read_database(kind, url)
        out["max_connections"] = out["databases"]["tracking"].pop("max_connections", 0)
        out["databases"].get("auth", {}).pop("max_connections", None)
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the reason goes to the operator verbatim
        out["error"] = _error_text(exc)
        return out
    databases = out["databases"].values()
    relations = {db["relation"] for db in databases}
    out["migration"] = ("newer" if "newer" in relations
                        else "needed" if "outdated" in relations and any(db["counts"] for db in databases)
                        else "none")
    # The shape db_status.py had, for the connection and budget checks.
    out["schema"] = {"empty": "empty", "current": "current", "outdated": "outdated", "newer": "newer"}[
        out["databases"]["tracking"]["relation"]]
    if backup_dir:
        probe = Path(backup_dir)
        while not probe.exists():
            probe = probe.parent
        out["backup_free"] = shutil.disk_usage(probe).free
        # The SQLite files are copied whole; a custom-format dump is smaller than the database.
        sizes = {db["url"]: db["size"] for db in databases}
        out["backup_need"] = int(sum(sizes.values()) * 1.1) + 64 * 1024 * 1024
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pg_args(url: str) -> list[str]:
    parts = urlsplit(url)
    return ["--host", parts.hostname or "localhost", "--port", str(parts.port or 5432),
            "--username", unquote(parts.username or ""), "--dbname", unquote(parts.path.lstrip("/"))]


def backup(dest: str) -> dict[str, Any]:
    os.umask(0o077)  # copies of the user database: root only
    final = Path(dest)
    if final.exists():
        raise RuntimeError(f"{final} exists already")
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written under a .partial name and renamed when complete: a backup killed halfway never
    # looks like a backup. Partial ones of killed runs go (deploys hold the host's lock).
    for stale in final.parent.glob("*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    target = final.with_name(final.name + ".partial")
    target.mkdir(mode=0o700)
    before = status("")
    if not before["ok"]:
        raise RuntimeError(before["error"])
    files: dict[str, dict[str, Any]] = {}
    absent: dict[str, str] = {}  # SQLite databases that did not exist yet
    for kind, url in _urls().items():
        path = _sqlite_path(url)
        if path is None:
            if DUMP in files:
                continue  # the user tables live in the same PostgreSQL database: one dump holds both
            out = target / DUMP
            proc = subprocess.run(["pg_dump", "--format", "custom", "--no-owner", "--no-privileges",
                                   "--file", str(out), *_pg_args(url)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"pg_dump failed: {proc.stderr.strip()[-400:]}")
            name = DUMP
        elif not path.exists():
            # Recorded, so that putting this backup back removes what was created since.
            absent[kind] = str(path)
            continue
        else:
            name, out = path.name, target / path.name
            # The online backup API copies a consistent snapshot even while a server writes.
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as src, sqlite3.connect(out) as dst:
                src.backup(dst)
            with sqlite3.connect(out) as check:
                verdict = check.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise RuntimeError(f"the copy of {path} fails PRAGMA integrity_check: {verdict}")
            # Counted in the copy: the server may have written rows since `before`.
            before["databases"][kind] = _read_database(kind, f"sqlite:///{out}")
        _fsync(out)
        files[name] = {"kind": kind, "source": str(path) if path else "postgresql",
                       "size": out.stat().st_size, "sha256": _sha256(out)}
    manifest = {
        "format": 1,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mlflow_version": _mlflow_version(),
        "databases": {kind: {"revision": db["current"], "counts": db["counts"]}
                      for kind, db in before["databases"].items()},
        "files": files,
        "absent": absent,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync(target / "manifest.json")
    os.replace(target, final)
    return {"ok": True, "path": str(final), **manifest}


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def migrate() -> dict[str, Any]:
    before = status("")
    if not before["ok"]:
        raise RuntimeError(before["error"])
    done: dict[str, list[str | None]] = {}
    for kind, db in before["databases"].items():
        if db["relation"] == "newer":
            raise RuntimeError(f"the {kind} database is at {db['current']}, newer than this release's {db['head']}")
        if db["relation"] != "outdated":
            continue
        engine = _engine(db["url"])
        if kind == "tracking":
            from mlflow.store.db.utils import _upgrade_db

            _upgrade_db(engine)
        else:
            from mlflow.server.auth.db.utils import migrate as migrate_auth

            migrate_auth(engine, "head")
        done[kind] = [db["current"], db["head"]]
    after = status("")
    if not after["ok"]:
        raise RuntimeError(after["error"])
    behind = [kind for kind, db in after["databases"].items() if db["relation"] not in ("current", "empty")]
    if behind:
        raise RuntimeError(f"still not at the head after the migration: {', '.join(behind)}")
    return {"ok": True, "migrated": done}


def restore(source: str, owner: str) -> dict[str, Any]:
    origin = Path(source)
    manifest = json.loads((origin / "manifest.json").read_text())
    for name, part in manifest["files"].items():
        if _sha256(origin / name) != part["sha256"]:
            raise RuntimeError(f"{origin / name} does not match its SHA-256 in the manifest")
    restored = []
    for name, part in manifest["files"].items():
        if name == DUMP:
            url = _urls()["tracking"]
            # One transaction: every object of the database user (the migrated schema, tables a
            # newer release added) goes, and the dump comes back, or nothing changes.
            script = subprocess.run(["pg_restore", "--no-owner", "--no-privileges", "--file", "-",
                                     str(origin / name)], capture_output=True, text=True)
            if script.returncode != 0:
                raise RuntimeError(f"pg_restore failed: {script.stderr.strip()[-400:]}")
            proc = subprocess.run(["psql", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1",
                                   "--single-transaction", *_pg_args(url)],
                                  input="DROP OWNED BY CURRENT_USER;\n" + script.stdout,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"psql failed to restore the dump: {proc.stderr.strip()[-400:]}")
        else:
            dest = Path(part["source"])
            staged = dest.with_name(dest.name + ".restoring")
            shutil.copyfile(origin / name, staged)
            if dest.exists():  # the file's own owner and mode, else the service user's
                info = dest.stat()
                os.chown(staged, info.st_uid, info.st_gid)
                os.chmod(staged, info.st_mode & 0o777)
            else:
                shutil.chown(staged, owner, owner)
                os.chmod(staged, 0o640)
            _fsync(staged)
            # A write-ahead log of the replaced database would be replayed into the restored one.
            for suffix in ("-wal", "-shm", "-journal"):
                Path(str(dest) + suffix).unlink(missing_ok=True)
            os.replace(staged, dest)
        restored.append(name)
    for kind, path in manifest.get("absent", {}).items():  # created after the backup: removed
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(path + suffix).unlink(missing_ok=True)
        restored.append(f"{kind} (absent)")
    return {"ok": True, "restored": restored, "databases": manifest["databases"]}


def compare() -> dict[str, Any]:
    before = json.loads(os.environ["MLFLOW_COUNTS_BEFORE"])
    now = status("")
    if not now["ok"]:
        raise RuntimeError(now["error"])
    # At least as many rows: clients may write as soon as the server answers; fewer is a loss.
    lost = [f"{table} {count} -> {now['databases'].get(kind, {}).get('counts', {}).get(table, 0)}"
            for kind, db in before.items() for table, count in db.get("counts", {}).items()
            if now["databases"].get(kind, {}).get("counts", {}).get(table, 0) < count]
    counts = {kind: db["counts"] for kind, db in now["databases"].items()}
    return {"ok": not lost, "lost": lost, "counts": counts,
            "revisions": {kind: db["current"] for kind, db in now["databases"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status").add_argument("--backup-dir", default="")
    sub.add_parser("backup").add_argument("--dest", required=True)
    sub.add_parser("migrate")
    sub.add_parser("compare")
    restore_parser = sub.add_parser("restore")
    restore_parser.add_argument("--from", dest="source", required=True)
    restore_parser.add_argument("--owner", required=True)
    args = parser.parse_args()
    try:
        if args.command == "status":
            result = status(args.backup_dir)
        elif args.command == "backup":
            result = backup(args.dest)
        elif args.command == "migrate":
            result = migrate()
        elif args.command == "compare":
            result = compare()
        else:
            result = restore(args.source, args.owner)
    except Exception as exc:  # noqa: BLE001 - reported to the operator verbatim
        json.dump({"ok": False, "error": _error_text(exc)}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
