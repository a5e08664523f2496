"""backup_archive.py (roles/mlflow_server/files): an archive of a server's databases, artifacts and
configuration, checked member by member, and put back where another configuration keeps them."""

from __future__ import annotations

import getpass
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.test_db_schema import AUTH_CHAIN, CHAIN, _database, _fake_mlflow

SCRIPT = ROOT / "roles" / "mlflow_server" / "files" / "backup_archive.py"
SECRET = "Sup3r$ecret-key-value"
CONTROL_KEY = "0123456789abcdef" * 4  # a control node's backup signing key


def _host_key(signing_key: str, host: str) -> bytes:
    from tests.conftest import load_module

    return bytes(load_module(ROOT / "roles/mlflow_server/filter_plugins/archive_signing.py", "signing")
                 .archive_host_key(signing_key, host))


def _server(root: Path, name: str) -> Path:
    """A host's layout under root: data dir, config dir with env file and basic_auth.ini."""
    data, config = root / name / "data", root / name / "config"
    data.mkdir(parents=True)
    config.mkdir()
    (config / "basic_auth.ini").write_text(f"[mlflow]\ndatabase_uri = sqlite:///{data}/auth.db\n"
                                           f"admin_password = {SECRET}\n")
    (config / "mlflow.env").write_text(
        f'MLFLOW_BACKEND_STORE_URI="sqlite:///{data}/mlflow.db"\n'
        'MLFLOW_SERVE_ARTIFACTS="true"\n'
        f'MLFLOW_ARTIFACTS_DESTINATION="{data}/artifacts"\n'
        f'MLFLOW_AUTH_CONFIG_PATH="{config}/basic_auth.ini"\n'
        f'MLFLOW_FLASK_SERVER_SECRET_KEY="{SECRET}"\n'
        f'AWS_SECRET_ACCESS_KEY="{SECRET}"\n')
    return root / name


def _run(site: Path, server: Path, *args: str, check: bool = True, stdin: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--env-file", str(server / "config" / "mlflow.env"),
                           "--key-file", str(site / "signing.key"), *args],
                          capture_output=True, text=True, env=env, check=False, input=stdin)
    assert proc.returncode == (0 if check else 1), proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


def _unpack(site: Path, target: Path, archive: Path, tmp_path: Path, check: bool = True,
            undo_backup: str = "", trust: tuple[str, ...] = ("--own-host", "vm-a")) -> dict:
    return _run(site, target, "unpack", "--archive", str(archive), "--owner", getpass.getuser(),
                "--backup-dir", str(tmp_path / "target-backups"), "--marker", str(tmp_path / "marker.json"),
                "--undo-backup", undo_backup, *trust, check=check)


def _db_backup(site: Path, server: Path, dest: Path) -> dict:
    """db_schema.py backup of server's databases, as restore.yml takes it before unpacking."""
    data = server / "data"
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_DB_URL": f"sqlite:///{data}/mlflow.db",
           "MLFLOW_AUTH_DB_URL": f"sqlite:///{data}/auth.db"}
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("db_schema.py")), "backup", "--dest", str(dest)],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = _fake_mlflow(tmp_path / "site", CHAIN, AUTH_CHAIN)
    dist = site / "mlflow-3.17.2.dist-info"  # what importlib.metadata reads for the version
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow\nVersion: 3.17.2\n")
    # vm-a's key, as the deploy derives it from the control node's signing key
    (site / "signing.key").write_text(_host_key(CONTROL_KEY, "vm-a").hex() + "\n")
    return site


@pytest.fixture
def archive(tmp_path: Path, site: Path) -> Path:
    source = _server(tmp_path, "source")
    data = source / "data"
    _database(data / "mlflow.db", "alembic_version", "ccc333", {"experiments": 2, "runs": 5, "metrics": 50})
    _database(data / "auth.db", "alembic_version_auth", "auth02", {"users": 2})
    (data / "artifacts" / "1" / "abc" / "artifacts").mkdir(parents=True)
    (data / "artifacts" / "1" / "abc" / "artifacts" / "model.bin").write_bytes(os.urandom(300_000))
    (data / "artifacts" / "1" / "abc" / "artifacts" / "notes.txt").write_text("hello")
    dest = tmp_path / "backups" / "one.tar.gz"
    out = _run(site, source, "create", "--dest", str(dest), "--host", "vm-a", "--unit", "/nonexistent")
    assert out["ok"] and out["path"] == str(dest) and out["size"] == dest.stat().st_size
    assert out["databases"]["tracking"] == {"revision": "ccc333",
                                            "counts": {"experiments": 2, "runs": 5, "metrics": 50}}
    assert out["artifacts"] == {"location": f"{data}/artifacts", "copied": True, "files": 2, "bytes": 300_005}
    assert (out["host"], out["mlflow_version"], out["backend"], out["auth"]) == ("vm-a", "3.17.2", "sqlite", True)
    return dest


def test_an_archive_holds_every_part_with_checksums_and_no_secret(archive: Path) -> None:
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        env_text = tar.extractfile("config/mlflow.env").read().decode()  # type: ignore[union-attr]
    assert names[-2:] == ["manifest.json", "manifest.sig"]
    assert set(names) - {"manifest.json", "manifest.sig"} == set(manifest["files"]) == {
        "db/mlflow.db", "db/auth.db", "db/manifest.json", "config/mlflow.env",
        "artifacts/1/abc/artifacts/model.bin", "artifacts/1/abc/artifacts/notes.txt"}
    raw = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    assert SECRET.encode() not in raw
    assert 'MLFLOW_FLASK_SERVER_SECRET_KEY="********"' in env_text
    assert 'AWS_SECRET_ACCESS_KEY="********"' in env_text


def test_check_passes_a_good_archive(archive: Path, site: Path, tmp_path: Path) -> None:
    out = _run(site, tmp_path / "source", "check", "--archive", str(archive), "--own-host", "vm-a")
    assert out["ok"] and out["databases"]["auth"]["counts"] == {"users": 2}
    assert out["trusted"].startswith("signed (key id ")


def _rewrite(archive: Path, target: Path, change: dict[str, bytes | None],
             extra: dict[str, bytes] | None = None) -> None:
    """A copy of archive with some members' content changed (None: left out) or added."""
    with tarfile.open(archive) as src, tarfile.open(target, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                if change[member.name] is None:
                    continue
                data = change[member.name]  # type: ignore[assignment]
            if member.name == "manifest.json" and extra:
                for name, content in extra.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(content)
                    dst.addfile(info, io.BytesIO(content))
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize(("change", "extra", "reason"), [
    ({"artifacts/1/abc/artifacts/notes.txt": b"HELLO"}, None,
     "artifacts/1/abc/artifacts/notes.txt in the archive does not match its SHA-256 in the manifest"),
    ({"db/auth.db": None}, None, "the archive lacks db/auth.db, which its manifest lists"),
    ({}, {"../../etc/cron.d/x": b"boom"},
     "the archive holds a member named '../../etc/cron.d/x', which is not a path this tool writes"),
    ({}, {"artifacts/x": b"boom"}, "the archive holds 'artifacts/x', which its manifest does not list"),
    ({"manifest.json": None}, None, "not a backup archive of mlops-provision (no readable manifest.json)"),
])
def test_check_refuses_a_damaged_archive(archive: Path, site: Path, tmp_path: Path, change: dict,
                                         extra: dict | None, reason: str) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, change, extra)
    out = _run(site, tmp_path / "source", "check", "--archive", str(bad), "--unverified", check=False)
    assert out == {"ok": False, "error": reason}


def test_unpack_puts_everything_where_another_configuration_keeps_it(archive: Path, site: Path,
                                                                        tmp_path: Path) -> None:
    target = _server(tmp_path, "target")
    data = target / "data"
    (data / "artifacts" / "old").mkdir(parents=True)
    (data / "artifacts" / "old" / "x.txt").write_text("replaced")
    out = _unpack(site, target, archive, tmp_path)
    assert out["ok"] and sorted(out["restored"]) == ["auth.db", "mlflow.db"]
    with sqlite3.connect(data / "mlflow.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 5
    with sqlite3.connect(data / "auth.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 2
    source = tmp_path / "source" / "data" / "artifacts" / "1" / "abc" / "artifacts" / "model.bin"
    assert (data / "artifacts" / "1" / "abc" / "artifacts" / "model.bin").read_bytes() == source.read_bytes()
    assert Path(out["replaced_artifacts"], "old", "x.txt").read_text() == "replaced"
    assert not (data / "artifacts" / "old").exists()
    assert [p.name for p in data.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_unpack_of_a_damaged_archive_changes_nothing(archive: Path, site: Path, tmp_path: Path) -> None:
    target = _server(tmp_path, "target")
    data = target / "data"
    _database(data / "mlflow.db", "alembic_version", "ccc333", {"runs": 1})
    (data / "artifacts").mkdir()
    (data / "artifacts" / "keep.txt").write_text("mine")
    before = sorted(str(p) for p in data.rglob("*")), (data / "mlflow.db").read_bytes()
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"artifacts/1/abc/artifacts/notes.txt": b"HELLO"})
    out = _unpack(site, target, bad, tmp_path, check=False)
    assert "does not match its SHA-256" in out["error"]
    assert (sorted(str(p) for p in data.rglob("*")), (data / "mlflow.db").read_bytes()) == before


def test_unpack_refuses_another_backend(archive: Path, site: Path, tmp_path: Path) -> None:
    target = _server(tmp_path, "target")
    env = target / "config" / "mlflow.env"
    env.write_text(env.read_text().replace(f"sqlite:///{target}/data/mlflow.db",
                                           "postgresql+psycopg2://mlflow:pw@127.0.0.1:9/mlflow"))
    out = _unpack(site, target, archive, tmp_path, check=False)
    assert out["error"] == ("the archive holds a sqlite database; this server uses postgresql: "
                            "restore onto a server with the same backend")
    assert not (target / "data" / "artifacts").exists()


def test_scheduled_backups_keep_the_newest_and_list_them(tmp_path: Path, site: Path) -> None:
    source = _server(tmp_path, "source")
    _database(source / "data" / "mlflow.db", "alembic_version", "ccc333", {"runs": 3})
    folder = tmp_path / "scheduled"
    folder.mkdir()
    for stamp in ("20260101T000000Z", "20260102T000000Z"):  # two older ones, written earlier
        old = folder / f"mlflow-backup-vm-a-{stamp}.tar.gz"
        old.write_bytes(b"old")
        Path(f"{old}.json").write_text(json.dumps({"path": str(old), "mlflow_version": "3.17.2"}))
    (folder / "unrelated.tar.gz").write_bytes(b"not ours")
    out = _run(site, source, "scheduled", "--dir", str(folder), "--keep", "2", "--host", "vm-a",
               "--unit", "/nonexistent")
    assert out["removed"] == ["mlflow-backup-vm-a-20260101T000000Z.tar.gz"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([
        "mlflow-backup-vm-a-20260102T000000Z.tar.gz", "mlflow-backup-vm-a-20260102T000000Z.tar.gz.json",
        Path(out["path"]).name, Path(out["path"]).name + ".json", "unrelated.tar.gz"])
    listed = _run(site, source, "list", "--dir", str(folder))["archives"]
    assert [a["name"] for a in listed] == [Path(out["path"]).name, "mlflow-backup-vm-a-20260102T000000Z.tar.gz"]
    assert listed[0]["databases"]["tracking"]["counts"] == {"runs": 3}
    assert listed[0]["size"] == Path(out["path"]).stat().st_size
    assert _run(site, source, "check", "--archive", out["path"], "--own-host", "vm-a")["ok"]


def _tree(root: Path) -> dict[str, object]:
    """Every file's content; a database's rows (a backup copy differs in its header bytes)."""
    def content(path: Path) -> object:
        if path.suffix == ".db":
            with sqlite3.connect(path) as conn:
                return list(conn.iterdump())
        return path.read_bytes()
    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _target_with_data(tmp_path: Path) -> Path:
    target = _server(tmp_path, "target")
    data = target / "data"
    _database(data / "mlflow.db", "alembic_version", "ccc333", {"experiments": 1, "runs": 1})
    (data / "artifacts" / "0" / "r1").mkdir(parents=True)
    (data / "artifacts" / "0" / "r1" / "mine.txt").write_text("mine")
    return target


def _putback(site: Path, target: Path, tmp_path: Path) -> dict:
    return _run(site, target, "putback", "--marker", str(tmp_path / "marker.json"), "--owner", getpass.getuser())


def test_putback_undoes_a_whole_restore_and_finish_is_then_a_no_op(archive: Path, site: Path,
                                                                    tmp_path: Path) -> None:
    target = _target_with_data(tmp_path)
    data = target / "data"
    before = _tree(data)
    undo = _db_backup(site, target, tmp_path / "target-backups" / "pre-restore-x")
    assert undo["absent"] == {"auth": str(data / "auth.db")}  # basic auth was not on yet
    out = _unpack(site, target, archive, tmp_path, undo_backup=undo["path"])
    marker = json.loads((tmp_path / "marker.json").read_text())
    assert (marker["kind"], marker["archive"], marker["backup"]) == ("restore", "one.tar.gz", undo["path"])
    assert Path(out["replaced_artifacts"]).name == f"artifacts.replaced-{marker['stamp']}"
    assert (data / "auth.db").exists() and _tree(data) != before
    back = _putback(site, target, tmp_path)
    assert back["ok"] and back["artifacts"] == str(data / "artifacts")
    assert sorted(back["databases"]) == ["auth (absent)", "mlflow.db"]
    assert _tree(data) == before  # the databases, the artifacts, and no user database
    assert sorted(p.name for p in data.iterdir()) == ["artifacts", "mlflow.db"]
    assert not (tmp_path / "marker.json").exists()


def test_putback_after_a_swap_killed_halfway_brings_the_old_artifacts_back(archive: Path, site: Path,
                                                                           tmp_path: Path) -> None:
    target = _target_with_data(tmp_path)
    data = target / "data"
    before = _tree(data)
    undo = _db_backup(site, target, tmp_path / "target-backups" / "pre-restore-x")
    # As the host looks when a restore dies between its two renames: the databases restored,
    # the old artifacts moved aside, the archive's still staged.
    _unpack(site, target, archive, tmp_path, undo_backup=undo["path"])
    stamp = json.loads((tmp_path / "marker.json").read_text())["stamp"]
    (data / "artifacts").rename(data / f".artifacts.restoring-{stamp}")
    back = _putback(site, target, tmp_path)
    assert back["artifacts"] == str(data / "artifacts")
    assert _tree(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["artifacts", "mlflow.db"]


def test_finish_keeps_replaced_artifacts_and_removes_an_empty_replaced_dir(archive: Path, site: Path,
                                                                          tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    with_data = _target_with_data(tmp_path)
    out = _unpack(site, with_data, archive, tmp_path)
    assert _run(site, with_data, "finish", "--marker", str(marker)) == {
        "ok": True, "finished": True, "replaced_artifacts": out["replaced_artifacts"], "pruned": []}
    assert not marker.exists() and Path(out["replaced_artifacts"], "0", "r1", "mine.txt").exists()
    empty = _server(tmp_path, "empty")
    (empty / "data" / "artifacts").mkdir()
    out = _unpack(site, empty, archive, tmp_path)
    assert _run(site, empty, "finish", "--marker", str(marker))["replaced_artifacts"] == ""
    assert sorted(p.name for p in (empty / "data").iterdir()) == ["artifacts", "auth.db", "mlflow.db"]
    assert _run(site, empty, "finish", "--marker", str(marker)) == {"ok": True, "finished": False}


def _hand_run_server(tmp_path: Path) -> tuple[Path, Path]:
    """A database and an artifact directory as `mlflow server --default-artifact-root DIR` left them."""
    home = tmp_path / "home" / "op"
    root = home / "mlruns"
    (root / "1" / "r1" / "artifacts").mkdir(parents=True)
    (root / "1" / "r1" / "artifacts" / "model.pkl").write_bytes(b"weights")
    db = home / "mlflow.db"
    _database(db, "alembic_version", "ccc333", {"experiments": 2, "runs": 1})
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE experiments ADD COLUMN artifact_location TEXT")
        conn.execute("ALTER TABLE runs ADD COLUMN artifact_uri TEXT")
        conn.execute("CREATE TABLE model_versions (source TEXT, storage_location TEXT)")
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE rowid = 1", (f"{root}/0",))
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE rowid = 2", (f"file://{root}/1",))
        conn.execute("UPDATE runs SET artifact_uri = ?", (f"{root}/1/r1/artifacts",))
        conn.execute("INSERT INTO model_versions VALUES (?, ?)", (f"{root}/1/r1/artifacts/model", "runs:/r1/model"))
        conn.execute("INSERT INTO model_versions VALUES (?, ?)", (f"{root}_other/x", "s3://bucket/x"))
    return db, root


def test_adopt_archives_a_hand_run_server_with_its_uris_pointed_at_the_managed_store(site: Path,
                                                                                      tmp_path: Path) -> None:
    db, root = _hand_run_server(tmp_path)
    original = db.read_bytes()
    dest = tmp_path / "backups" / "incoming-adopt.tar.gz"
    out = _run(site, tmp_path, "adopt", "--sqlite", str(db), "--artifacts", str(root), "--dest", str(dest),
               "--host", "vm-a")
    assert out["adopted"] == {"sqlite": str(db), "artifacts": str(root), "rewritten_uris": 4, "schema": "current"}
    assert out["artifacts"]["files"] == 1 and db.read_bytes() == original  # the original is only read
    target = _server(tmp_path, "target")
    assert _unpack(site, target, dest, tmp_path)["adopted"] == out["adopted"]  # for the summary
    data = target / "data"
    with sqlite3.connect(data / "mlflow.db") as conn:
        assert [r[0] for r in conn.execute("SELECT artifact_location FROM experiments ORDER BY rowid")] == [
            "mlflow-artifacts:/0", "mlflow-artifacts:/1"]
        assert conn.execute("SELECT artifact_uri FROM runs").fetchone()[0] == "mlflow-artifacts:/1/r1/artifacts"
        assert conn.execute("SELECT source, storage_location FROM model_versions").fetchall() == [
            ("mlflow-artifacts:/1/r1/artifacts/model", "runs:/r1/model"), (f"{root}_other/x", "s3://bucket/x")]
    assert (data / "artifacts" / "1" / "r1" / "artifacts" / "model.pkl").read_bytes() == b"weights"


@pytest.mark.parametrize(("make", "reason"), [
    ("missing", "--from-sqlite: {db} is not a file on vm-a"),
    ("text", "--from-sqlite: {db} is not an SQLite database (file is not a database)"),
    ("other", "--from-sqlite: {db} is not an MLflow tracking database (no alembic_version or runs table)"),
    ("newer", "--from-sqlite: {db} is at schema revision zzz999, which MLflow 3.17.2 does not know "
              "(its head is ccc333): add --mlflow-version with the release that wrote it"),
])
def test_adopt_refuses_what_is_not_an_mlflow_database_it_can_serve(site: Path, tmp_path: Path, make: str,
                                                                    reason: str) -> None:
    db = tmp_path / "mlflow.db"
    if make == "text":
        db.write_text("hello " * 200)
    elif make == "other":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE notes (x TEXT)")
    elif make == "newer":
        _database(db, "alembic_version", "zzz999", {"runs": 1})
    out = _run(site, tmp_path, "adopt", "--sqlite", str(db), "--dest", str(tmp_path / "a.tar.gz"), "--host", "vm-a",
               check=False)
    assert out == {"ok": False, "error": reason.format(db=db)}
    assert not (tmp_path / "a.tar.gz").exists()


def test_retention_never_removes_the_new_archive_for_names_from_the_future_or_foreign_names(
        tmp_path: Path, site: Path) -> None:
    """Two files named for 2099 (a clock that was wrong, or files put there by hand) once made the
    timer delete the archive it had just written and the last real one, and offered the bogus ones."""
    source = _server(tmp_path, "source")
    _database(source / "data" / "mlflow.db", "alembic_version", "ccc333", {"runs": 3})
    folder = tmp_path / "scheduled"
    folder.mkdir()
    real = folder / "mlflow-backup-vm-a-20260101T000000Z.tar.gz"
    real.write_bytes(b"old")
    Path(f"{real}.json").write_text(json.dumps({"path": str(real), "mlflow_version": "3.17.2"}))
    for name in ("mlflow-backup-vm-a-20990101T000000Z.tar.gz", "mlflow-backup-vm-a-20990102T000000Z.tar.gz",
                 "mlflow-backup-vm-a-evil.tar.gz", "mlflow-backup-vm-ab-20260101T000000Z.tar.gz"):
        (folder / name).write_bytes(b"bogus")
        (folder / f"{name}.json").write_text("{}")
    out = _run(site, source, "scheduled", "--dir", str(folder), "--keep", "2", "--host", "vm-a",
               "--unit", "/nonexistent")
    assert out["removed"] == [] and Path(out["path"]).exists() and real.exists()
    assert sorted(out["ignored"]) == ["mlflow-backup-vm-a-20990101T000000Z.tar.gz",
                                      "mlflow-backup-vm-a-20990102T000000Z.tar.gz",
                                      "mlflow-backup-vm-a-evil.tar.gz",
                                      "mlflow-backup-vm-ab-20260101T000000Z.tar.gz"]  # another host's
    time.sleep(1.1)  # archives are named to the second
    out2 = _run(site, source, "scheduled", "--dir", str(folder), "--keep", "1", "--host", "vm-a",
                "--unit", "/nonexistent")
    assert sorted(out2["removed"]) == sorted([real.name, Path(out["path"]).name])
    listed = _run(site, source, "list", "--dir", str(folder))
    assert [a["name"] for a in listed["archives"]] == [Path(out2["path"]).name]
    assert len(listed["ignored"]) == 4  # listed apart, never offered for a restore


HOSTILE_NAMES = ["artifacts//root/x", "db//etc/cron.d/x", "/etc/cron.d/x", "artifacts/../../x", "artifacts/./x",
                 "artifacts/a\x00b", "artifacts/a\nb", "artifacts/", "artifacts", "etc/x", "", "artifacts/a\\b",
                 "artifacts/" + "a/" * 3000 + "b"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_member_names_are_checked_as_paths(name: str) -> None:
    from tests.conftest import load_module

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        module = load_module(SCRIPT, "backup_archive_names")
    finally:
        sys.path.remove(str(SCRIPT.parent))
    with pytest.raises(RuntimeError, match="which is not a path this tool writes"):
        module.member_parts(name)
    assert module.member_parts("artifacts/1/r/artifacts/model.pkl") == ["artifacts", "1", "r", "artifacts",
                                                                         "model.pkl"]


def _forge(archive: Path, target: Path, members: list[tarfile.TarInfo], key: bytes | None) -> None:
    """What an attacker who can write the archive (not the key) makes of it: members added to
    the manifest with their true SHA-256, and the signature recomputed with the key given."""
    import hashlib
    import hmac

    with tarfile.open(archive) as src:
        manifest = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
        kept = [(m, src.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in src if m.name not in ("manifest.json", "manifest.sig")]
    payload = b"* * * * * root touch /tmp/owned\n"
    for member in members:
        if member.isfile():
            manifest["files"][member.name] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    raw = json.dumps(manifest).encode()
    with tarfile.open(target, "w:gz") as dst:
        for member, data in kept:
            dst.addfile(member, io.BytesIO(data))
        for member in members:
            member.size = len(payload) if member.isfile() else 0
            dst.addfile(member, io.BytesIO(payload) if member.isfile() else None)
        for name, data in (("manifest.json", raw),) + ((("manifest.sig", json.dumps(
                {"mac": hmac.new(key, raw, hashlib.sha256).hexdigest()}).encode()),) if key else ()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, to: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, to
    return info


@pytest.mark.parametrize("member", [
    _file("artifacts//tmp/OWNED"), _file("db//tmp/OWNED"), _file("artifacts/../../../../tmp/OWNED"),
    _link("artifacts/l", "/tmp", tarfile.SYMTYPE), _link("artifacts/h", "/etc/passwd", tarfile.LNKTYPE),
    _link("artifacts/dev", "", tarfile.CHRTYPE), _link("artifacts/fifo", "", tarfile.FIFOTYPE),
])
def test_a_tampered_archive_writes_nothing_even_with_a_valid_signature(archive: Path, site: Path, tmp_path: Path,
                                                                       member: tarfile.TarInfo) -> None:
    """Signed with the host's own key (the worst case: the key leaked) and still refused, with
    nothing written outside the staging directories and nothing replaced."""
    target = _target_with_data(tmp_path)
    before = _tree(target / "data")
    bad = tmp_path / "bad.tar.gz"
    _forge(archive, bad, [member], _host_key(CONTROL_KEY, "vm-a"))
    out = _unpack(site, target, bad, tmp_path, check=False)
    assert not out["ok"]
    assert "not a path this tool writes" in out["error"] or "not a regular file" in out["error"]
    assert _tree(target / "data") == before
    assert not Path("/tmp/OWNED").exists()


def test_an_archive_changed_without_the_key_is_refused_before_anything_is_read(archive: Path, site: Path,
                                                                              tmp_path: Path) -> None:
    target = _target_with_data(tmp_path)
    before = _tree(target / "data")
    bad = tmp_path / "bad.tar.gz"
    _forge(archive, bad, [_file("artifacts/0/r1/extra.txt")], b"not the key")
    out = _unpack(site, target, bad, tmp_path, check=False)
    assert out["error"].startswith("the archive's signature does not verify with this host's key (key id ")
    unsigned = tmp_path / "unsigned.tar.gz"
    _forge(archive, unsigned, [_file("artifacts/0/r1/extra.txt")], None)
    out = _run(site, target, "check", "--archive", str(unsigned), "--own-host", "vm-a", check=False)
    assert out["error"].startswith("the archive is not signed")
    assert "--accept-unverified-archive" in out["error"]
    assert _run(site, target, "check", "--archive", str(unsigned), "--unverified")["trusted"].startswith("unverified")
    assert _tree(target / "data") == before


def test_own_host_archives_only_and_the_control_nodes_digest(archive: Path, site: Path, tmp_path: Path) -> None:
    import hashlib

    source = tmp_path / "source"
    out = _run(site, source, "check", "--archive", str(archive), "--own-host", "vm-b", check=False)
    assert out["error"].startswith("the archive names host 'vm-a', not this host")
    with tarfile.open(archive) as tar:
        digest = hashlib.sha256(tar.extractfile("manifest.json").read()).hexdigest()  # type: ignore[union-attr]
    assert _run(site, source, "check", "--archive", str(archive), "--manifest-sha256", digest)["ok"]
    out = _run(site, source, "check", "--archive", str(archive), "--manifest-sha256", "0" * 64, check=False)
    assert out["error"] == "the archive on the host is not the one the control node verified (manifest differs)"


def test_the_db_manifest_of_an_archive_never_chooses_a_destination(archive: Path, site: Path,
                                                                   tmp_path: Path) -> None:
    """A PostgreSQL server once took the archive's own db/manifest.json "source" as where to write."""
    import hashlib
    import hmac

    with tarfile.open(archive) as src:
        members = [(m, src.extractfile(m).read()) for m in src]  # type: ignore[union-attr]
    manifest = json.loads(dict((m.name, d) for m, d in members)["manifest.json"])
    inner = json.loads(dict((m.name, d) for m, d in members)["db/manifest.json"])
    inner["files"]["../../x"] = dict(inner["files"]["mlflow.db"])
    data = json.dumps(inner).encode()
    manifest["files"]["db/manifest.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    raw = json.dumps(manifest).encode()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as dst:
        for member, content in members:
            content = {"db/manifest.json": data, "manifest.json": raw}.get(member.name, content)
            if member.name == "manifest.sig":
                content = json.dumps({"mac": hmac.new(_host_key(CONTROL_KEY, "vm-a"), raw,
                                                      hashlib.sha256).hexdigest()}).encode()
            member.size = len(content)
            dst.addfile(member, io.BytesIO(content))
    target = _target_with_data(tmp_path)
    before = _tree(target / "data")
    out = _unpack(site, target, bad, tmp_path, check=False)
    assert out["error"] == "the archive's db/manifest.json lists '../../x', which is not a database file"
    assert _tree(target / "data") == before


def test_the_restored_admin_logs_in_with_this_hosts_password_not_the_archives(site: Path, tmp_path: Path) -> None:
    """Which admin password a host gets is never chosen by the archive: the restored user
    database's admin is given the password the control node keeps for the target host."""
    import hashlib

    source = _server(tmp_path, "source")
    data = source / "data"
    _database(data / "mlflow.db", "alembic_version", "ccc333", {"runs": 1})
    with sqlite3.connect(data / "auth.db") as conn:
        conn.execute("CREATE TABLE alembic_version_auth (version_num VARCHAR(32))")
        conn.execute("INSERT INTO alembic_version_auth VALUES ('auth02')")
        conn.execute("CREATE TABLE users (id INTEGER, username TEXT, password_hash TEXT, is_admin BOOLEAN)")
        conn.execute("INSERT INTO users VALUES (1, 'admin', 'scrypt:32768:8:1$old$00', 1), "
                     "(2, 'alice', 'scrypt:32768:8:1$alice$11', 0)")
    archive = tmp_path / "a.tar.gz"
    _run(site, source, "create", "--dest", str(archive), "--host", "vm-a", "--unit", "/nonexistent")
    target = _server(tmp_path, "target")
    out = _run(site, target, "unpack", "--archive", str(archive), "--owner", getpass.getuser(),
               "--backup-dir", str(tmp_path / "tb"), "--marker", str(tmp_path / "m.json"), "--undo-backup", "",
               "--own-host", "vm-a", "--admin-user", "admin", stdin="the-target-password\n")
    assert out["admin_password"] == "this host's"
    with sqlite3.connect(target / "data" / "auth.db") as conn:
        rows = dict(conn.execute("SELECT username, password_hash FROM users").fetchall())
    assert rows["alice"] == "scrypt:32768:8:1$alice$11"  # other users keep their passwords
    method, salt, digest = rows["admin"].split("$")
    n, r, p = (int(x) for x in method.split(":")[1:])
    assert hashlib.scrypt(b"the-target-password", salt=salt.encode(), n=n, r=r, p=p,
                          maxmem=132 * n * r * p).hex() == digest
    assert "the-target-password" not in json.dumps(out)


def test_finish_keeps_the_newest_pre_restore_backups_and_replaced_artifacts(site: Path, tmp_path: Path) -> None:
    """Each is as large as the store it replaced: they were never pruned."""
    backups, data = tmp_path / "backups", tmp_path / "data"
    for stamp in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z", "20990101T000000Z"):
        (backups / f"pre-restore-{stamp}").mkdir(parents=True)
        (data / f"artifacts.replaced-{stamp}").mkdir(parents=True)
        (data / f"artifacts.replaced-{stamp}" / "x").write_text("old")
    (backups / "pre-restore-mine").mkdir()
    (data / "artifacts").mkdir()
    marker = tmp_path / "marker.json"
    marker.write_text(json.dumps({"backup": str(backups / "pre-restore-20260103T000000Z"),
                                  "artifacts_dir": str(data / "artifacts"), "stamp": "20260103T000000Z"}))
    out = _run(site, tmp_path, "finish", "--marker", str(marker), "--keep", "2")
    assert sorted(Path(p).name for p in out["pruned"]) == ["artifacts.replaced-20260101T000000Z",
                                                            "pre-restore-20260101T000000Z"]
    assert sorted(p.name for p in backups.iterdir()) == ["pre-restore-20260102T000000Z", "pre-restore-20260103T000000Z",
                                                         "pre-restore-20990101T000000Z", "pre-restore-mine"]
    assert out["replaced_artifacts"] == str(data / "artifacts.replaced-20260103T000000Z")


def test_the_host_key_derivation_is_the_same_in_the_role_and_on_the_control_node() -> None:
    """The role derives each host's key with its filter (signing_key.yml); restore verifies on the
    control node with backup_archive.py's own copy of the derivation: the two must agree."""
    from tests.conftest import load_module

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        script = load_module(SCRIPT, "backup_archive_keys")
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for host in ("vm-a", "db1.example.internal", "ünïcode"):
        assert script.archive_host_key(CONTROL_KEY, host) == _host_key(CONTROL_KEY, host)
        assert script.archive_host_key(CONTROL_KEY + "\n", host) == _host_key(CONTROL_KEY, host)
    assert _host_key(CONTROL_KEY, "vm-a") != _host_key(CONTROL_KEY, "vm-b")
