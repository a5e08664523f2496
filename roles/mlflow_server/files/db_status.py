"""Report whether MLflow's PostgreSQL answers, its max_connections and its schema state.

Runs on the MLflow host with the venv's Python. The URL comes from MLFLOW_DB_URL without a
password; libpq reads PGPASSWORD, which the role sets from stdin for this process only, so no
secret is in argv or in sudo's command line. Prints one
JSON object and always exits 0: the role decides what a failure means.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import urlsplit


def main() -> int:
    url = os.environ["MLFLOW_DB_URL"]
    parts = urlsplit(url)
    out: dict[str, object] = {
        "ok": False, "endpoint": f"{parts.hostname}:{parts.port or 5432}", "user": parts.username or "",
        "error": "", "max_connections": 0, "schema": "unknown",
    }
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    try:
        import sqlalchemy
        from mlflow.store.db.utils import _get_latest_schema_revision

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            out["max_connections"] = int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar())
            has_table = conn.execute(sqlalchemy.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar()
            current = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar() \
                if has_table else None
        head = _get_latest_schema_revision()
        out["schema"] = "empty" if current is None else ("current" if current == head else "outdated")
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the reason goes to the operator verbatim
        reason = getattr(exc, "orig", None) or exc
        # libpq repeats the same failure for each attempt (SSL, then plain): say it once.
        lines = [" ".join(line.split()) for line in str(reason).splitlines() if line.strip()]
        out["error"] = " ".join(dict.fromkeys(lines))[:400]
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
