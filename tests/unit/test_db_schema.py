"""`db_schema.py status` (roles/mlflow_server/files): the databases' revisions against the target
release's migration scripts, read without importing MLflow, and row counts through sqlite3."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "roles" / "mlflow_server" / "files" / "db_schema.py"
TRACKING = ("store", "db_migrations", "versions")
AUTH = ("server", "auth", "db", "migrations", "versions")


def _fake_mlflow(root: Path, tracking: dict[str, str | None], auth: dict[str, str | None]) -> Path:
    """A package named mlflow holding only migration scripts, shaped like MLflow's own."""
    for parts, graph in ((TRACKING, tracking), (AUTH, auth)):
        versions = root.joinpath("mlflow", *parts)
        versions.mkdir(parents=True)
        (versions / "__init__.py").write_text("")
        for revision, down in graph.items():
            (versions / f"{revision}_step.py").write_text(
                f'"""step\n\nRevision ID: {revision}\n"""\nimport sqlalchemy as sa\n\n'
                f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
                "def upgrade():\n    revision = 'not this one'\n")
    (root / "mlflow" / "__init__.py").write_text("raise ImportError('status must not import MLflow')\n")
    return root


def _database(path: Path, version_table: str, revision: str | None, counts: dict[str, int]) -> None:
    with sqlite3.connect(path) as conn:
        if revision is not None:
            conn.execute(f"CREATE TABLE {version_table} (version_num VARCHAR(32))")
            conn.execute(f"INSERT INTO {version_table} VALUES (?)", (revision,))
        for table, rows in counts.items():
            conn.execute(f"CREATE TABLE {table} (id INTEGER)")
            conn.executemany(f"INSERT INTO {table} VALUES (?)", [(i,) for i in range(rows)])


def _status(tmp_path: Path, fake: Path, auth: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(fake), "MLFLOW_DB_URL": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_AUTH_DB_URL": f"sqlite:///{tmp_path}/auth.db" if auth else ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "status", "--backup-dir", str(tmp_path / "backups")],
                          capture_output=True, text=True, env=env, check=True)
    return dict(json.loads(proc.stdout))


CHAIN = {"aaa111": None, "bbb222": "aaa111", "ccc333": "bbb222"}
AUTH_CHAIN = {"auth01": None, "auth02": "auth01"}


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return _fake_mlflow(tmp_path / "site", CHAIN, AUTH_CHAIN)


def test_no_database_yet_is_empty_and_needs_no_migration(tmp_path: Path, fake: Path) -> None:
    out = _status(tmp_path, fake)
    assert out["ok"], out
    assert out["databases"]["tracking"] == {"url": f"sqlite:///{tmp_path}/mlflow.db", "current": None,
                                            "counts": {}, "head": "ccc333", "relation": "empty", "size": 0}
    assert out["databases"]["auth"]["head"] == "auth02"
    assert (out["migration"], out["schema"]) == ("none", "empty")
    assert out["backup_need"] == 64 * 1024 * 1024 and out["backup_free"] > 0


def test_databases_at_the_head_are_current_with_their_counts(tmp_path: Path, fake: Path) -> None:
    _database(tmp_path / "mlflow.db", "alembic_version", "ccc333", {"experiments": 2, "runs": 5, "metrics": 50})
    _database(tmp_path / "auth.db", "alembic_version_auth", "auth02", {"users": 3})
    out = _status(tmp_path, fake)
    tracking = out["databases"]["tracking"]
    assert (tracking["current"], tracking["relation"]) == ("ccc333", "current")
    assert tracking["counts"] == {"experiments": 2, "runs": 5, "metrics": 50}
    assert tracking["size"] == (tmp_path / "mlflow.db").stat().st_size
    assert out["databases"]["auth"]["counts"] == {"users": 3}
    assert out["migration"] == "none"


def test_an_older_known_revision_with_data_needs_a_migration(tmp_path: Path, fake: Path) -> None:
    _database(tmp_path / "mlflow.db", "alembic_version", "aaa111", {"runs": 1})
    out = _status(tmp_path, fake, auth=False)
    assert out["databases"]["tracking"]["relation"] == "outdated"
    assert (out["migration"], out["schema"]) == ("needed", "outdated")
    assert "auth" not in out["databases"]


def test_an_unknown_revision_was_written_by_a_newer_mlflow(tmp_path: Path, fake: Path) -> None:
    _database(tmp_path / "mlflow.db", "alembic_version", "fff999", {"runs": 1})
    out = _status(tmp_path, fake, auth=False)
    assert out["databases"]["tracking"]["relation"] == "newer"
    assert out["migration"] == "newer"


def test_an_auth_database_from_before_its_version_table_is_outdated(tmp_path: Path, fake: Path) -> None:
    _database(tmp_path / "mlflow.db", "alembic_version", "ccc333", {"runs": 1})
    _database(tmp_path / "auth.db", "alembic_version_auth", None, {"users": 1})
    out = _status(tmp_path, fake)
    assert out["databases"]["auth"]["current"] == "legacy"
    assert out["databases"]["auth"]["relation"] == "outdated"
    assert out["migration"] == "needed"


def test_a_merge_revision_has_one_head(tmp_path: Path) -> None:
    fake = _fake_mlflow(tmp_path / "site", {"a1": None, "b1": "a1", "b2": "a1"}, AUTH_CHAIN)
    merge = tmp_path.joinpath("site", "mlflow", *TRACKING, "m1_merge.py")
    merge.write_text('revision = "m1"\ndown_revision = ("b1", "b2")\n')
    _database(tmp_path / "mlflow.db", "alembic_version", "b2", {})
    out = _status(tmp_path, fake, auth=False)
    assert out["databases"]["tracking"]["head"] == "m1"
    assert out["databases"]["tracking"]["relation"] == "outdated"


def test_a_read_failure_is_reported_not_raised(tmp_path: Path, fake: Path) -> None:
    (tmp_path / "mlflow.db").write_text("not a database")
    out = _status(tmp_path, fake, auth=False)
    assert out["ok"] is False
    assert "not a database" in out["error"]


# Read off the host by MLflow 3.17.2's own Alembic (`mlflow db upgrade`, then alembic_version).
HEADS_3_17_2 = {"tracking": "dc11669786a5", "auth": "f1a2b3c4d5e6"}


def test_the_installed_mlflows_migrations_form_one_chain_to_its_known_head() -> None:
    """The test venv's MLflow (the version the role installs by default) read by the script."""
    from importlib.metadata import version

    assert version("mlflow-skinny") == "3.17.2", "update HEADS_3_17_2 with the pinned client"
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import db_schema
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for kind, parts in (("tracking", TRACKING), ("auth", AUTH)):
        graph = db_schema._migrations(kind)
        scripts = list(Path(db_schema.importlib.util.find_spec("mlflow").submodule_search_locations[0],
                            *parts).glob("*.py"))
        assert len(graph) == len(scripts) - 1, kind  # every script but __init__.py has a revision
        downs = {part for down in graph.values() if down for part in down.split(",")}
        assert downs <= set(graph), kind  # no step points at a revision that is not there
        assert [rev for rev, down in graph.items() if down is None] != [], kind
        assert db_schema._head(graph) == HEADS_3_17_2[kind], kind
