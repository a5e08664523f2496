"""Backup archives of an MLflow server: write one on the host, or put one back in place.

    create --dest FILE --host NAME     the databases (consistent copies: db_schema.py's backup, so
                                       the server keeps serving), the local artifacts, the unit and
                                       the environment file with its secrets masked, and
                                       manifest.json (last): MLflow version, revisions, row counts,
                                       sizes and the SHA-256 of every other member
    check and unpack first authenticate the archive (--manifest-sha256 D: the control node
    verified it; --own-host H: signed with this host's key; --unverified: the operator vouches)
    unpack --archive FILE --owner U --marker M --undo-backup DIR [--admin-user NAME, password on stdin]
                                       checks every member against the manifest while unpacking
                                       it beside its destination, then puts the databases and the
                                       artifacts where this host's configuration keeps them; a
                                       failed check changes nothing. First writes the marker M:
                                       what puts the server back (DIR, the replaced artifacts)
    finish --marker M [--keep N]       the restored server is proven: M goes, and all but the newest N
                                       pre-restore backups and replaced artifact directories
    putback --marker M --owner U       undo an unfinished restore (killed, or failed verify)
    check  --archive FILE              the checks alone
    verify --archive FILE              the manifest's signature alone (on the control node)
    An archive is signed (manifest.sig: HMAC-SHA256 of manifest.json) with the key in --key-file
    (default: backup-signing.key beside the environment file),
    which the deploy derives for this host from the control node's backup signing key.
    scheduled --dir D --keep N --host NAME
                                       create D/mlflow-backup-NAME-<UTC time>.tar.gz with a JSON
                                       summary beside it, then remove all but the newest N
                                       (mlflow-backup.timer runs this)
    list   --dir D                     the summaries of the archives in D, newest first
    adopt --sqlite FILE [--artifacts DIR] --dest FILE --host NAME
                                       an archive of a server installed by hand: its database
                                       (artifact URIs under DIR pointed at the managed store)
                                       and DIR; the originals are only read

What the host runs comes from its environment file (the backend URI, with the PostgreSQL password
that libpq reads from PGPASSWORD, set for this process only) and the basic-auth configuration that
file names. Runs with the venv's Python next to db_schema.py. Prints one JSON object; exits 1 with
{"ok": false, "error": ...} on failure.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import grp
import hashlib
import hmac
import json
import os
import pwd
import re
import shutil
import socket
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import db_schema

FORMAT = "mlops-provision-backup"
MASK = "********"
# The signature of manifest.json (which holds the SHA-256 of every other member): HMAC-SHA256
# with this host's key, derived on the control node from its signing key (archive_host_key).
SIGNATURE = "manifest.sig"
KEY_FILE = "/etc/mlflow/backup-signing.key"
KEY_CONTEXT = b"mlops-provision backup signing v1\0"
# What an archive may hold: these tops, regular files below them, names made of plain parts.
TOPS = ("db", "artifacts", "config")
DB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECRET_KEYS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL", "CONNECTION_STRING", "ACCESS_KEY")


def read_env_file(path: str) -> dict[str, str]:
    """KEY="value" lines as templates/mlflow.env.j2 writes them (\\ " $ ` backslash-escaped)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r'^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$', line)
        if match:
            env[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2))
    return env


def _without_password(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.password is None:
        return url, ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


def point_db_schema_at(env: dict[str, str]) -> dict[str, str]:
    """Set MLFLOW_DB_URL, MLFLOW_AUTH_DB_URL and PGPASSWORD for db_schema from what the host runs."""
    tracking, password = _without_password(env["MLFLOW_BACKEND_STORE_URI"])
    auth = ""
    auth_config = env.get("MLFLOW_AUTH_CONFIG_PATH", "")
    if auth_config and Path(auth_config).is_file():
        parser = configparser.ConfigParser()  # the way MLflow reads it: %% is a literal %
        parser.read(auth_config)
        auth, auth_password = _without_password(parser.get("mlflow", "database_uri", fallback=""))
        password = password or auth_password
    os.environ["MLFLOW_DB_URL"] = tracking
    os.environ["MLFLOW_AUTH_DB_URL"] = auth
    if password:
        os.environ["PGPASSWORD"] = password
    return {"tracking": tracking, "auth": auth}


def local_artifacts(env: dict[str, str]) -> tuple[str, Path | None]:
    """Where the artifacts are, and the directory when it is on this host."""
    served = env.get("MLFLOW_SERVE_ARTIFACTS", "").lower() == "true"
    location = env.get("MLFLOW_ARTIFACTS_DESTINATION" if served else "MLFLOW_DEFAULT_ARTIFACT_ROOT", "")
    path = location[len("file://"):] if location.startswith("file://") else location
    return location, (Path(path) if path.startswith("/") else None)


def masked_env_text(env: dict[str, str]) -> str:
    lines = []
    for key, value in env.items():
        if any(word in key.upper() for word in SECRET_KEYS):
            value = MASK
        elif "://" in value:
            url, password = _without_password(value)
            value = url.replace("@", f":{MASK}@", 1) if password else value
        lines.append(f"{key}={json.dumps(value)}")
    return "# The server's environment file at backup time, secrets masked: for reference, not restored.\n" + (
        "\n".join(lines) + "\n")


class _Hashing:
    """A reader that hashes what tarfile copies from it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _add(tar: tarfile.TarFile, path: Path, name: str, files: dict[str, dict[str, Any]], mode: int | None) -> None:
    info = tar.gettarinfo(str(path), name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if mode is not None:
        info.mode = mode
    with path.open("rb") as handle:
        reader = _Hashing(handle)
        tar.addfile(info, reader)  # type: ignore[arg-type]
    files[name] = {"size": info.size, "sha256": reader.digest.hexdigest()}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, files: dict[str, dict[str, Any]] | None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.datetime.now().timestamp())
    tar.addfile(info, _Hashing(_BytesReader(data)))  # type: ignore[arg-type]
    if files is not None:
        files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def archive_host_key(signing_key: str, host: str) -> bytes:
    """The key a host signs its archives with: derived from the control node's signing key, so a
    host holds only its own (the same derivation as filter_plugins/mlflow_derive.py's)."""
    return hmac.new(signing_key.strip().encode(), KEY_CONTEXT + host.encode(), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"key id\0" + key).hexdigest()[:16]


def _read_key_file(path: str) -> bytes | None:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    return bytes.fromhex(text)


def _signature(manifest: bytes, key: bytes) -> bytes:
    return (json.dumps({"alg": "HMAC-SHA256", "key_id": key_id(key),
                        "mac": hmac.new(key, manifest, hashlib.sha256).hexdigest()}) + "\n").encode()


def member_parts(name: str) -> list[str]:
    """The parts of an acceptable member name, or RuntimeError: a top of TOPS and at least one
    more part; no empty, '.' or '..' part, no absolute name, no control character or backslash."""
    parts = name.split("/")
    if (not name or re.search(r"[\x00-\x1f\x7f\\]", name) or len(parts) < 2 or parts[0] not in TOPS
            or any(part in ("", ".", "..") for part in parts) or len(name) > 4096):
        raise RuntimeError(f"the archive holds a member named {name[:200]!r}, which is not a path this tool writes")
    return parts


def create(dest: str, host: str, env_file: str, unit: str, env: dict[str, str] | None = None,
           extra: dict[str, Any] | None = None, key_file: str = KEY_FILE) -> dict[str, Any]:
    os.umask(0o077)  # the user database's password hashes: root only
    key = _read_key_file(key_file)  # a host deployed before archives were signed has none yet
    env = env if env is not None else read_env_file(env_file)
    urls = point_db_schema_at(env)
    target = Path(dest)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    location, artifacts_dir = local_artifacts(env)
    files: dict[str, dict[str, Any]] = {}
    artifacts = {"location": location, "copied": artifacts_dir is not None, "files": 0, "bytes": 0}
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".db-") as tmp:
        db = db_schema.backup(str(Path(tmp) / "db"))  # consistent copies while the server serves
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            for name in sorted(os.listdir(db["path"])):
                _add(tar, Path(db["path"], name), f"db/{name}", files, 0o600)
            if artifacts_dir is not None and artifacts_dir.is_dir():
                for root, dirs, names in os.walk(artifacts_dir):
                    dirs.sort()
                    for name in sorted(names):
                        path = Path(root, name)
                        if path.is_symlink() or not path.is_file():
                            continue  # MLflow writes plain files; anything else is not ours to copy
                        arcname = "artifacts/" + path.relative_to(artifacts_dir).as_posix()
                        _add(tar, path, arcname, files, None)
                        artifacts["files"] += 1
                        artifacts["bytes"] += files[arcname]["size"]
            if Path(unit).is_file():
                _add(tar, Path(unit), "config/mlflow.service", files, 0o600)
            _add_bytes(tar, "config/mlflow.env", masked_env_text(env).encode(), files)
            manifest = {
                "format": FORMAT, "version": 1, "created_at": db["created_at"],
                "host": host, "hostname": socket.gethostname(), "mlflow_version": db["mlflow_version"],
                "backend": "postgresql" if db_schema.DUMP in db["files"] else "sqlite",
                "auth": bool(urls["auth"]),
                "databases": db["databases"], "artifacts": artifacts, "files": files, **(extra or {}),
            }
            manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
            _add_bytes(tar, "manifest.json", manifest_bytes, None)
            if key is not None:
                _add_bytes(tar, SIGNATURE, _signature(manifest_bytes, key), None)
        db_schema._fsync(partial)
    os.replace(partial, target)
    size = target.stat().st_size
    return {"ok": True, "path": str(target), "size": size, "signed": key is not None,
            **{k: v for k, v in manifest.items() if k != "files"}}


# Where MLflow keeps artifact URIs; each may name the hand-run server's directory.
ARTIFACT_URI_COLUMNS = [("experiments", "artifact_location", ""), ("runs", "artifact_uri", ""),
                        ("model_versions", "source", ""), ("model_versions", "storage_location", ""),
                        ("logged_models", "artifact_location", ""),
                        ("trace_tags", "value", "key = 'mlflow.artifactLocation'")]


def rewrite_artifact_uris(db: Path, root: str) -> int:
    """Point every artifact URI under root (a plain path or a file: URI, as `mlflow server
    --default-artifact-root DIR` writes them) at the managed server's proxied store instead:
    /old/root/1/RUN/artifacts -> mlflow-artifacts:/1/RUN/artifacts, the same tree the archive
    copies under the server's artifact directory. Returns the number of values changed."""
    root = root.rstrip("/")
    changed = 0
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column, where in ARTIFACT_URI_COLUMNS:
            if table not in tables or column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                continue
            for prefix in (f"file://{root}", f"file:{root}", root):
                like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
                changed += conn.execute(
                    f"UPDATE {table} SET {column} = 'mlflow-artifacts:/' || substr({column}, ?) "  # noqa: S608
                    f"WHERE ({column} = ? OR {column} LIKE ? ESCAPE '\\')" + (f" AND {where}" if where else ""),
                    (len(prefix) + 2, prefix, like)).rowcount
    return changed


def adopt(sqlite_file: str, artifacts: str, dest: str, host: str, key_file: str = KEY_FILE) -> dict[str, Any]:
    """An archive of a server installed by hand (restore --from-sqlite): a consistent copy of its
    SQLite database with its artifact URIs pointed at the managed store, and its artifact
    directory. The originals are only read."""
    source = Path(sqlite_file)
    if not source.is_absolute() or not source.is_file():
        raise RuntimeError(f"--from-sqlite: {sqlite_file} is not a file on {host}")
    if artifacts and (not Path(artifacts).is_absolute() or not Path(artifacts).is_dir()):
        raise RuntimeError(f"--artifacts: {artifacts} is not a directory on {host}")
    target = Path(dest)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".adopt-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        try:  # the online backup API: the hand-run server may still be writing
            with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)
            with sqlite3.connect(copy) as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise RuntimeError(f"--from-sqlite: {sqlite_file} is not an SQLite database ({exc})") from exc
        if "alembic_version" not in tables or "runs" not in tables:
            raise RuntimeError(f"--from-sqlite: {sqlite_file} is not an MLflow tracking database "
                               "(no alembic_version or runs table)")
        rewritten = rewrite_artifact_uris(copy, str(Path(artifacts).resolve())) if artifacts else 0
        env = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{copy}", "MLFLOW_SERVE_ARTIFACTS": "true",
               "MLFLOW_ARTIFACTS_DESTINATION": artifacts}
        os.environ.update(MLFLOW_DB_URL=env["MLFLOW_BACKEND_STORE_URI"], MLFLOW_AUTH_DB_URL="")
        tracking = db_schema.status("")["databases"]["tracking"]
        if tracking["relation"] == "newer":
            raise RuntimeError(f"--from-sqlite: {sqlite_file} is at schema revision {tracking['current']}, which "
                               f"MLflow {db_schema._mlflow_version()} does not know (its head is {tracking['head']}): "
                               "add --mlflow-version with the release that wrote it")
        return create(dest, host, "", "/nonexistent", env=env, key_file=key_file,
                      extra={"adopted": {"sqlite": sqlite_file, "artifacts": artifacts, "rewritten_uris": rewritten,
                                         "schema": tracking["relation"]}})


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


STAMP = re.compile(r"(\d{8}T\d{6}Z)\.tar\.gz$")


def _ours(folder: Path, host: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """The scheduled archives of this host, oldest first by the time in their names, and the
    names set aside: not of our exact form, without their summary, or from the future (a file
    put there by hand, or written while the clock was wrong; never counted, never removed)."""
    horizon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    pattern = re.compile(r"^mlflow-backup-" + re.escape(host) + r"-(\d{8}T\d{6}Z)\.tar\.gz$")
    found, ignored = [], []
    for path in sorted(folder.glob("mlflow-backup-*.tar.gz")):
        match = pattern.match(path.name)
        if match is None or match.group(1) > horizon or not path.is_file() or path.is_symlink() \
                or not Path(str(path) + ".json").is_file():
            ignored.append(path.name)
        else:
            found.append((match.group(1), path))
    return sorted(found), ignored


def scheduled(directory: str, keep: int, host: str, env_file: str, unit: str,
              key_file: str = KEY_FILE) -> dict[str, Any]:
    folder = Path(directory)
    result = create(str(folder / f"mlflow-backup-{host}-{_stamp()}.tar.gz"), host, env_file, unit, key_file=key_file)
    Path(result["path"] + ".json").write_text(json.dumps(result, indent=2) + "\n")
    archives, ignored = _ours(folder, host)
    # The archive just written always stays, whatever the names of the others say.
    older = [path for _, path in archives if path != Path(result["path"])]
    removed = []
    for old in older[:max(len(older) - (keep - 1), 0)] if keep > 0 else []:
        old.unlink()
        Path(str(old) + ".json").unlink(missing_ok=True)
        removed.append(old.name)
    return {**result, "removed": removed, "ignored": ignored}


def listing(directory: str) -> dict[str, Any]:
    """The archives in directory, newest first; a name without a readable summary of its own
    (path and release) is listed apart, never offered for a restore."""
    found, ignored = [], []
    for archive in sorted(Path(directory).glob("mlflow-backup-*.tar.gz"), reverse=True):
        try:
            summary = json.loads(Path(str(archive) + ".json").read_text())
        except (OSError, ValueError):
            summary = None
        if (not isinstance(summary, dict) or summary.get("path") != str(archive) or not STAMP.search(archive.name)
                or not re.match(r"^\d+(\.\d+)*$", str(summary.get("mlflow_version", ""))) or archive.is_symlink()):
            ignored.append(archive.name)
            continue
        found.append({**summary, "name": archive.name, "path": str(archive), "size": archive.stat().st_size})
    return {"ok": True, "dir": directory, "archives": found, "ignored": ignored}


def _read_manifest(tar: tarfile.TarFile) -> tuple[dict[str, Any], bytes, bytes | None]:
    """The manifest, its bytes as signed, and the signature (None when the archive has none)."""
    def member_bytes(name: str) -> bytes | None:
        try:
            member = tar.getmember(name)
        except KeyError:
            return None
        handle = tar.extractfile(member) if member.isfile() and member.size <= (1 << 24) else None
        return handle.read() if handle else None

    raw = member_bytes("manifest.json")
    try:
        manifest = json.loads(raw) if raw is not None else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise RuntimeError("not a backup archive of mlops-provision (no readable manifest.json)")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise RuntimeError("not a backup archive of mlops-provision (unknown manifest format)")
    assert raw is not None
    return manifest, raw, member_bytes(SIGNATURE)


def authenticate(manifest: dict[str, Any], raw: bytes, signature: bytes | None, trust: dict[str, Any]) -> str:
    """Check that the manifest (and so, through its SHA-256 values, every member) was written by
    a host of this control node. trust says how: {"signing_key": K} on the control node (the key
    of the host the manifest names is derived from K), {"key_file": F, "host": H} on host H for
    its own archives, {"manifest_sha256": D} on a host for an archive the control node checked,
    {"unverified": True} for an archive the operator vouches for. Returns how it was trusted."""
    if trust.get("unverified"):
        return "unverified (accepted by the operator)"
    if trust.get("manifest_sha256"):
        if not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), str(trust["manifest_sha256"])):
            raise RuntimeError("the archive on the host is not the one the control node verified (manifest differs)")
        return "verified on the control node"
    if signature is None:
        raise RuntimeError("the archive is not signed (written before archives were signed, or edited): restore it "
                           "only if you know where it came from, with --accept-unverified-archive "
                           "(mlflow_restore_unverified=true)")
    try:
        sig = json.loads(signature)
        mac = bytes.fromhex(str(sig["mac"]))
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"the archive's {SIGNATURE} is not a signature this tool writes") from None
    if trust.get("signing_key"):
        key = archive_host_key(str(trust["signing_key"]), str(manifest.get("host", "")))
        where = "this control node's backup signing key"
    else:
        if str(manifest.get("host", "")) != str(trust.get("host", "")):
            raise RuntimeError(f"the archive names host {str(manifest.get('host'))[:100]!r}, not this host: only "
                               "this host's own archives are verified here")
        found = _read_key_file(str(trust.get("key_file", KEY_FILE)))
        if found is None:
            raise RuntimeError("this host has no backup signing key yet: deploy it first")
        key, where = found, "this host's key"
    if not hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).digest(), mac):
        raise RuntimeError(f"the archive's signature does not verify with {where} (key id {key_id(key)}; the "
                           f"archive names key id {str(sig.get('key_id', '?'))[:16]}): it was changed after it was "
                           "written, or signed by another control node. If this control node's key is lost, restore "
                           "an archive you know with --accept-unverified-archive (mlflow_restore_unverified=true)")
    return f"signed (key id {key_id(key)})"


def _open_beneath(root_fd: int, parts: list[str]) -> int:
    """Open parts[-1] for writing, new, in directories parts[:-1] made beneath root_fd: each
    step relative to the directory before it, never following a link (openat, not string joins)."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def _unpack_to(archive: str, staging: dict[str, Path] | None, trust: dict[str, Any]) -> dict[str, Any]:
    """Authenticate the manifest, then read every member once, checking its name and type and its
    SHA-256 against the manifest; with staging (directories this process made, root only), write
    the db/ and artifacts/ members beneath staging["db"] and staging["artifacts"]."""
    roots: dict[str, int] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest, raw, signature = _read_manifest(tar)
            trusted = authenticate(manifest, raw, signature, trust)
            expected = dict(manifest["files"])
            for top, path in (staging or {}).items():
                roots[top] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            for member in tar:
                if member.name in ("manifest.json", SIGNATURE):
                    continue
                parts = member_parts(member.name)
                if member.isdir():
                    continue  # directories come from the files' names
                if not member.isfile():
                    raise RuntimeError(f"the archive holds {member.name[:200]!r}, which is not a regular file")
                if member.name not in expected:
                    raise RuntimeError(f"the archive holds {member.name[:200]!r}, which its manifest does not list")
                part = expected.pop(member.name)
                source = tar.extractfile(member)
                assert source is not None
                digest = hashlib.sha256()
                out: IO[bytes] | None = None
                if parts[0] in roots:
                    out = os.fdopen(_open_beneath(roots[parts[0]], parts[1:]), "wb")
                try:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        if out is not None:
                            out.write(block)
                finally:
                    if out is not None:
                        out.close()
                if not isinstance(part, dict) or digest.hexdigest() != part.get("sha256"):
                    raise RuntimeError(f"{member.name[:200]} in the archive does not match its SHA-256 in the manifest")
            if expected:
                raise RuntimeError(f"the archive lacks {', '.join(sorted(expected))[:400]}, which its manifest lists")
    finally:
        for fd in roots.values():
            os.close(fd)
    return {**manifest, "trusted": trusted, "manifest_sha256": hashlib.sha256(raw).hexdigest()}


def verify(archive: str, trust: dict[str, Any]) -> dict[str, Any]:
    """The manifest's authentication alone (the members are checked against it where the archive
    is unpacked): for the control node, which passes the verified manifest's digest on."""
    with tarfile.open(archive, "r:*") as tar:
        manifest, raw, signature = _read_manifest(tar)
    trusted = authenticate(manifest, raw, signature, trust)
    return {"ok": True, "trusted": trusted, "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "host": manifest.get("host"), "mlflow_version": manifest.get("mlflow_version")}


def check(archive: str, trust: dict[str, Any]) -> dict[str, Any]:
    manifest = _unpack_to(archive, None, trust)
    return {"ok": True, **{k: v for k, v in manifest.items() if k != "files"}}


def _chown_tree(root: Path, owner: str) -> None:
    """Hand what unpack wrote to the service user: contents before their directory, links never
    followed, so nothing outside the tree changes even if the user races it."""
    uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(owner).gr_gid
    for dirpath, _, names in os.walk(root, topdown=False):
        for name in names:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                raise RuntimeError(f"{path} is not a regular file: refusing to hand it over")
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, 0o640)
        os.chown(dirpath, uid, gid, follow_symlinks=False)
        os.chmod(dirpath, 0o750)  # noqa: S103 - the service user's group, as the deploy sets it


def _db_manifest_for_this_host(staged: Path, urls: dict[str, str]) -> dict[str, Any]:
    """The staged databases and where this host keeps them. The archive's own db/manifest.json
    names files and kinds only: destinations come from this host's configuration, never from it."""
    inner = json.loads((staged / "manifest.json").read_text())
    files: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for name, part in dict(inner.get("files") or {}).items():
        kind = part.get("kind") if isinstance(part, dict) else None
        if kind not in ("tracking", "auth") or kind in seen or not DB_NAME.match(str(name)):
            raise RuntimeError(f"the archive's db/manifest.json lists {str(name)[:100]!r}, "
                               "which is not a database file")
        if not (staged / name).is_file() or (staged / name).is_symlink():
            raise RuntimeError(f"the archive's db/manifest.json lists {name}, which the archive does not hold")
        seen.add(kind)
        if not urls.get(kind):
            continue  # the user database, on a server without basic auth
        path = db_schema._sqlite_path(urls[kind])
        if (path is None) != (name == db_schema.DUMP):
            raise RuntimeError(f"the archive's {name} does not fit this server's {kind} database")
        files[name] = {"kind": kind, "source": str(path) if path is not None else "postgresql",
                       "size": part.get("size"), "sha256": str(part.get("sha256", ""))}
    return {"format": inner.get("format"), "databases": inner.get("databases", {}), "files": files}


def generate_password_hash(password: str) -> str:
    """The hash MLflow's user store writes (werkzeug's, in the server's venv; the same scrypt
    format from the standard library where werkzeug is absent)."""
    try:
        from werkzeug.security import generate_password_hash as werkzeug_hash
    except ImportError:
        import secrets
        import string

        salt = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))
        n, r, p = 2**15, 8, 1
        digest = hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p)
        return f"scrypt:{n}:{r}:{p}${salt}${digest.hex()}"
    return str(werkzeug_hash(password))


def _set_admin_password(auth_url: str, user: str, password: str) -> bool:
    """The restored user database's admin logs in with this host's admin password (the one the
    control node keeps for this host), whatever it was where the archive was taken. False when
    the archive has no such user: MLflow creates it at the start from basic_auth.ini."""
    query = "UPDATE users SET password_hash = :h, is_admin = :a WHERE username = :u"
    values = {"h": generate_password_hash(password), "a": True, "u": user}
    path = db_schema._sqlite_path(auth_url)
    if path is not None:
        if not path.exists():
            return False
        with sqlite3.connect(f"file:{path}?mode=rw", uri=True) as conn:  # never creates a database
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'").fetchone():
                return False
            return conn.execute(query, values).rowcount > 0
    import sqlalchemy

    engine = db_schema._engine(auth_url)
    try:
        with engine.begin() as conn:
            if not sqlalchemy.inspect(conn).has_table("users"):
                return False
            return bool(conn.execute(sqlalchemy.text(query), values).rowcount)
    finally:
        engine.dispose()


def _fits_this_server(manifest: dict[str, Any], urls: dict[str, str], artifacts_dir: Path | None,
                      env: dict[str, str]) -> None:
    kind = "postgresql" if urls["tracking"].startswith("postgresql") else "sqlite"
    if manifest["backend"] != kind:
        raise RuntimeError(f"the archive holds a {manifest['backend']} database; this server uses {kind}: "
                           "restore onto a server with the same backend")
    if manifest["artifacts"]["copied"] and artifacts_dir is None:
        raise RuntimeError("the archive holds local artifacts; this server keeps them in "
                           f"{local_artifacts(env)[0]}: restore onto a server with local artifacts")


def _artifact_paths(artifacts_dir: Path, stamp: str) -> tuple[Path, Path]:
    """Where unpack stages the archive's artifacts, and where it moves the replaced ones."""
    return (artifacts_dir.with_name(f".{artifacts_dir.name}.restoring-{stamp}"),
            artifacts_dir.with_name(f"{artifacts_dir.name}.replaced-{stamp}"))


def _write_marker(path: Path, data: dict[str, Any]) -> None:
    staged = path.with_name(path.name + ".partial")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staged, path)


def unpack(archive: str, owner: str, env_file: str, backup_dir: str, marker: str, undo_backup: str,
           trust: dict[str, Any], admin_user: str = "", admin_password: str = "") -> dict[str, Any]:
    """Put the archive's databases and local artifacts in place of this server's. Before the
    first change, the marker names what puts the server back as it was (undo_backup, taken by
    db_schema.py backup with the server stopped, and the replaced artifact directory): a restore
    killed at any point is undone by the next deploy (putback), until `finish` removes it."""
    env = read_env_file(env_file)
    urls = point_db_schema_at(env)
    _, artifacts_dir = local_artifacts(env)
    stamp = _stamp()
    Path(backup_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=backup_dir, prefix=".restore-") as tmp:
        staging = {"db": Path(tmp) / "db"}
        os.mkdir(staging["db"], 0o700)
        if artifacts_dir is not None:  # beside its destination: one rename puts it in place
            artifacts_dir.parent.mkdir(parents=True, exist_ok=True)
            staging["artifacts"] = _artifact_paths(artifacts_dir, stamp)[0]
            os.mkdir(staging["artifacts"], 0o700)  # ours alone: fails if anything is there already
        try:
            with tarfile.open(archive, "r:*") as tar:
                manifest, raw, signature = _read_manifest(tar)
            authenticate(manifest, raw, signature, trust)  # before anything changes
            _fits_this_server(manifest, urls, artifacts_dir, env)
            _write_marker(Path(marker), {
                "kind": "restore", "archive": Path(archive).name.removeprefix("incoming-"),
                "taken_on": manifest["host"], "created_at": manifest["created_at"], "backup": undo_backup,
                "artifacts_dir": str(artifacts_dir) if artifacts_dir is not None else "", "stamp": stamp,
                # pushed by restore_prepare.yml, removed when the restore ends; putback removes it too
                "pushed": archive if Path(archive).name.startswith("incoming-") else ""})
            manifest = _unpack_to(archive, staging, trust)
            # The databases go where this host's configuration keeps them (the user database
            # only when this server has basic auth on).
            db_manifest = _db_manifest_for_this_host(staging["db"], urls)
            (staging["db"] / "manifest.json").write_text(json.dumps(db_manifest))
            restored = db_schema.restore(str(staging["db"]), owner)
            # Only a user database that came from the archive: without one, MLflow makes the user
            # database and its admin from basic_auth.ini at the first start.
            auth_in_dump = bool(urls["auth"]) and db_schema._sqlite_path(urls["auth"]) is None  # one PostgreSQL
            restored_auth = any(part["kind"] == "auth" for part in db_manifest["files"].values()) or (
                db_schema.DUMP in db_manifest["files"] and auth_in_dump)
            admin_set = bool(restored_auth and admin_user and admin_password
                             and _set_admin_password(urls["auth"], admin_user, admin_password))
            replaced = ""
            if artifacts_dir is not None:
                incoming, aside = _artifact_paths(artifacts_dir, stamp)
                _chown_tree(incoming, owner)
                # Moved aside even when empty: putback tells a swap that began by its presence
                # (finish removes an empty one).
                if artifacts_dir.exists():
                    replaced = str(aside) if any(artifacts_dir.iterdir()) else ""
                    os.replace(artifacts_dir, aside)
                os.replace(incoming, artifacts_dir)
        finally:
            if "artifacts" in staging and staging["artifacts"].exists():
                shutil.rmtree(staging["artifacts"])
    return {"ok": True, "restored": restored["restored"], "databases": manifest["databases"],
            "artifacts": manifest["artifacts"], "replaced_artifacts": replaced,
            "mlflow_version": manifest["mlflow_version"], "created_at": manifest["created_at"],
            "host": manifest["host"], "adopted": manifest.get("adopted", {}), "trusted": manifest["trusted"],
            "admin_password": "this host's" if admin_set else ""}


def _prune(folder: Path, prefix: str, keep: int, current: Path | None) -> list[str]:
    """Remove all but the newest `keep` of folder/<prefix><UTC time> (this restore's own, current,
    always stays; names of another form, or dated in the future, are never counted nor removed)."""
    horizon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    pattern = re.compile(re.escape(prefix) + r"(\d{8}T\d{6}Z)$")
    found = sorted((m.group(1), path) for path in folder.glob(prefix + "*")
                   if (m := pattern.match(path.name)) and m.group(1) <= horizon and path.is_dir()
                   and not path.is_symlink())
    older = [path for _, path in found if path != current]
    removed = []
    for path in older[:max(len(older) - max(keep - 1, 0), 0)]:
        shutil.rmtree(path)
        removed.append(str(path))
    return removed


def finish(marker: str, keep: int = 2) -> dict[str, Any]:
    """The restored server is proven: the marker goes, then an empty replaced directory, and all
    but the newest `keep` pre-restore backups and replaced artifact directories (each as large
    as what it holds)."""
    path = Path(marker)
    if not path.exists():
        return {"ok": True, "finished": False}
    info = json.loads(path.read_text())
    path.unlink()
    kept, pruned = "", []
    if info.get("backup"):
        backup = Path(info["backup"])
        pruned += _prune(backup.parent, "pre-restore-", keep, backup)
    if info.get("artifacts_dir"):
        artifacts_dir = Path(info["artifacts_dir"])
        aside = _artifact_paths(artifacts_dir, info["stamp"])[1]
        if aside.is_dir() and not any(aside.iterdir()):
            aside.rmdir()
        elif aside.exists():
            kept = str(aside)
        pruned += _prune(artifacts_dir.parent, artifacts_dir.name + ".replaced-", keep, aside)
    return {"ok": True, "finished": True, "replaced_artifacts": kept, "pruned": pruned}


def putback(marker: str, owner: str) -> dict[str, Any]:
    """Undo a restore that did not finish (killed, or its server failed verify): the databases
    from the backup taken before it, the artifact directory it replaced; then the marker goes."""
    path = Path(marker)
    if not path.exists():  # unpack never began: nothing was changed
        return {"ok": True, "kind": "", "databases": [], "artifacts": ""}
    info = json.loads(path.read_text())
    result: dict[str, Any] = {"ok": True, **info, "databases": [], "artifacts": ""}
    if info.get("backup"):
        result["databases"] = db_schema.restore(info["backup"], owner)["restored"]
    if info.get("artifacts_dir"):
        artifacts_dir = Path(info["artifacts_dir"])
        incoming, aside = _artifact_paths(artifacts_dir, info["stamp"])
        shutil.rmtree(incoming, ignore_errors=True)
        if aside.exists():  # the swap began: what is at artifacts_dir now came from the archive
            if artifacts_dir.exists():
                shutil.rmtree(artifacts_dir)
            os.replace(aside, artifacts_dir)
            result["artifacts"] = str(artifacts_dir)
    if info.get("pushed"):
        Path(info["pushed"]).unlink(missing_ok=True)
    path.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", default="/etc/mlflow/mlflow.env")
    parser.add_argument("--key-file", default="", help="this host's archive signing key (default: "
                                                       "backup-signing.key beside the environment file)")
    sub = parser.add_subparsers(dest="command", required=True)
    create_parser = sub.add_parser("create")
    create_parser.add_argument("--dest", required=True)
    create_parser.add_argument("--host", required=True)
    create_parser.add_argument("--unit", default="/etc/systemd/system/mlflow.service")
    unpack_parser = sub.add_parser("unpack")
    unpack_parser.add_argument("--archive", required=True)
    unpack_parser.add_argument("--owner", required=True)
    unpack_parser.add_argument("--backup-dir", required=True)
    unpack_parser.add_argument("--marker", required=True)
    unpack_parser.add_argument("--undo-backup", required=True)
    unpack_parser.add_argument("--admin-user", default="", help="its password on stdin")
    finish_parser = sub.add_parser("finish")
    finish_parser.add_argument("--marker", required=True)
    finish_parser.add_argument("--keep", type=int, default=2, help="pre-restore backups and replaced artifacts kept")
    putback_parser = sub.add_parser("putback")
    putback_parser.add_argument("--marker", required=True)
    putback_parser.add_argument("--owner", required=True)
    check_parser = sub.add_parser("check")
    check_parser.add_argument("--archive", required=True)
    verify_parser = sub.add_parser("verify")
    verify_parser.add_argument("--archive", required=True)
    for trusting in (unpack_parser, check_parser, verify_parser):  # how the archive is authenticated: exactly one
        how = trusting.add_mutually_exclusive_group(required=True)
        how.add_argument("--manifest-sha256", help="the control node verified the archive with this manifest")
        how.add_argument("--own-host", help="this host's own archive: its signature, with this host's key")
        how.add_argument("--unverified", action="store_true", help="the operator vouches for the archive")
        how.add_argument("--signing-key-stdin", action="store_true",
                         help="on the control node: its backup signing key on stdin")
    scheduled_parser = sub.add_parser("scheduled")
    scheduled_parser.add_argument("--dir", required=True)
    scheduled_parser.add_argument("--keep", type=int, required=True)
    scheduled_parser.add_argument("--host", required=True)
    scheduled_parser.add_argument("--unit", default="/etc/systemd/system/mlflow.service")
    sub.add_parser("list").add_argument("--dir", required=True)
    adopt_parser = sub.add_parser("adopt")
    adopt_parser.add_argument("--sqlite", required=True)
    adopt_parser.add_argument("--artifacts", default="")
    adopt_parser.add_argument("--dest", required=True)
    adopt_parser.add_argument("--host", required=True)
    args = parser.parse_args()
    args.key_file = args.key_file or str(Path(args.env_file).with_name("backup-signing.key"))
    trust = {"manifest_sha256": getattr(args, "manifest_sha256", None), "host": getattr(args, "own_host", None),
             "unverified": getattr(args, "unverified", False), "key_file": args.key_file,
             "signing_key": sys.stdin.readline().strip() if getattr(args, "signing_key_stdin", False) else None}
    try:
        if args.command == "create":
            result = create(args.dest, args.host, args.env_file, args.unit, key_file=args.key_file)
        elif args.command == "unpack":
            result = unpack(args.archive, args.owner, args.env_file, args.backup_dir, args.marker, args.undo_backup,
                            trust, args.admin_user, sys.stdin.readline().rstrip("\n") if args.admin_user else "")
        elif args.command == "adopt":
            result = adopt(args.sqlite, args.artifacts, args.dest, args.host, args.key_file)
        elif args.command == "finish":
            result = finish(args.marker, args.keep)
        elif args.command == "putback":
            result = putback(args.marker, args.owner)
        elif args.command == "scheduled":
            result = scheduled(args.dir, args.keep, args.host, args.env_file, args.unit, args.key_file)
        elif args.command == "list":
            result = listing(args.dir)
        elif args.command == "verify":
            result = verify(args.archive, trust)
        else:
            result = check(args.archive, trust)
    except Exception as exc:  # noqa: BLE001 - reported to the operator verbatim
        json.dump({"ok": False, "error": db_schema._error_text(exc)}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
