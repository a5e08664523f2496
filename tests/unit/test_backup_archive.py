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
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.test_db_schema import AUTH_CHAIN, CHAIN, _database, _fake_mlflow

SCRIPT = ROOT / "roles" / "mlflow_server" / "files" / "backup_archive.py"
SECRET = "Sup3r$ecret-key-value"


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


def _run(site: Path, server: Path, *args: str, check: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--env-file", str(server / "config" / "mlflow.env"), *args],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == (0 if check else 1), proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = _fake_mlflow(tmp_path / "site", CHAIN, AUTH_CHAIN)
    dist = site / "mlflow-3.17.2.dist-info"  # what importlib.metadata reads for the version
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow\nVersion: 3.17.2\n")
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
    assert names[-1] == "manifest.json"
    assert set(names) - {"manifest.json"} == set(manifest["files"]) == {
        "db/mlflow.db", "db/auth.db", "db/manifest.json", "config/mlflow.env",
        "artifacts/1/abc/artifacts/model.bin", "artifacts/1/abc/artifacts/notes.txt"}
    raw = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    assert SECRET.encode() not in raw
    assert 'MLFLOW_FLASK_SERVER_SECRET_KEY="********"' in env_text
    assert 'AWS_SECRET_ACCESS_KEY="********"' in env_text


def test_check_passes_a_good_archive(archive: Path, site: Path, tmp_path: Path) -> None:
    out = _run(site, tmp_path / "source", "check", "--archive", str(archive))
    assert out["ok"] and out["databases"]["auth"]["counts"] == {"users": 2}


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
    ({}, {"../../etc/cron.d/x": b"boom"}, "the archive holds '../../etc/cron.d/x', which its manifest does not list"),
    ({"manifest.json": None}, None, "not a backup archive of mlops-provision (no readable manifest.json)"),
])
def test_check_refuses_a_damaged_archive(archive: Path, site: Path, tmp_path: Path, change: dict,
                                         extra: dict | None, reason: str) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, change, extra)
    out = _run(site, tmp_path / "source", "check", "--archive", str(bad), check=False)
    assert out == {"ok": False, "error": reason}


def test_unpack_puts_everything_where_another_configuration_keeps_it(archive: Path, site: Path,
                                                                        tmp_path: Path) -> None:
    target = _server(tmp_path, "target")
    data = target / "data"
    (data / "artifacts" / "old").mkdir(parents=True)
    (data / "artifacts" / "old" / "x.txt").write_text("replaced")
    out = _run(site, target, "unpack", "--archive", str(archive), "--owner", getpass.getuser(),
               "--backup-dir", str(tmp_path / "target-backups"))
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
    out = _run(site, target, "unpack", "--archive", str(bad), "--owner", getpass.getuser(),
               "--backup-dir", str(tmp_path / "target-backups"), check=False)
    assert "does not match its SHA-256" in out["error"]
    assert (sorted(str(p) for p in data.rglob("*")), (data / "mlflow.db").read_bytes()) == before


def test_unpack_refuses_another_backend(archive: Path, site: Path, tmp_path: Path) -> None:
    target = _server(tmp_path, "target")
    env = target / "config" / "mlflow.env"
    env.write_text(env.read_text().replace(f"sqlite:///{target}/data/mlflow.db",
                                           "postgresql+psycopg2://mlflow:pw@127.0.0.1:9/mlflow"))
    out = _run(site, target, "unpack", "--archive", str(archive), "--owner", getpass.getuser(),
               "--backup-dir", str(tmp_path / "target-backups"), check=False)
    assert out["error"] == ("the archive holds a sqlite database; this server uses postgresql: "
                            "restore onto a server with the same backend")
    assert not (target / "data" / "artifacts").exists()


def test_scheduled_backups_keep_the_newest_and_list_them(tmp_path: Path, site: Path) -> None:
    source = _server(tmp_path, "source")
    _database(source / "data" / "mlflow.db", "alembic_version", "ccc333", {"runs": 3})
    folder = tmp_path / "scheduled"
    folder.mkdir()
    for stamp in ("20260101T000000Z", "20260102T000000Z"):  # two older ones, written earlier
        (folder / f"mlflow-backup-vm-a-{stamp}.tar.gz").write_bytes(b"old")
        (folder / f"mlflow-backup-vm-a-{stamp}.tar.gz.json").write_text("{}")
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
    assert _run(site, source, "check", "--archive", out["path"])["ok"]
