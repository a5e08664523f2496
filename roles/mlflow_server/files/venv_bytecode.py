"""Write the bytecode of what the MLflow server runs into a new venv; run by the venv's python, as root.

uv's --compile-bytecode compiles every module of the venv, about 8,450 (12 s on two idle cores,
22 CPU-seconds), of which the server imports about 2,500. The service user cannot write to the
root-owned venv, so what has no bytecode here is compiled in memory by each worker at each start.
This compiles MLflow's own package in parallel (its Alembic migrations are loaded by file path at
every start) and imports the modules the server and its store clients import, which writes their
bytecode as a side effect: about 9 CPU-seconds. A module missing from this venv (the store client
of a scheme not in use, the auth app with --auth none) is skipped. Modules imported later by a
root-run tool get their bytecode then; the service compiles the rest in memory, once per process.

Prints one JSON line, {"pyc": N, "skipped": [...]}, and with --done PATH also writes it to PATH
(atomically, last): the marker that this venv's bytecode is complete. The role runs this in the
background while the deploy goes on, and waits for it before a restart; a run killed meanwhile
leaves no marker, so the next run does it again (bytecode files are written atomically too).
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import json
import os
import sys
import sysconfig
import warnings

# What `mlflow server` and its uvicorn workers import (MLflow 3), then each store's client.
SERVER_MODULES = (
    "mlflow.cli",
    "mlflow.server.fastapi_app",
    "mlflow.server.handlers",
    "mlflow.server.auth",
    "mlflow.server.auth.sqlalchemy_store",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.artifact.local_artifact_repo",
    "alembic.command",
    "alembic.runtime.migration",
    "sqlalchemy.dialects.sqlite",
    "uvicorn.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.supervisors.multiprocess",
)
STORE_MODULES = (
    "psycopg2",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "boto3",
    "mlflow.store.artifact.s3_artifact_repo",
    "azure.storage.blob",
    "azure.identity",
    "mlflow.store.artifact.azure_blob_artifact_repo",
    "google.cloud.storage",
    "mlflow.store.artifact.gcs_artifact_repo",
    "pysftp",
    "mlflow.store.artifact.sftp_artifact_repo",
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--done", help="write the result here when finished (the completion marker)")
    args = parser.parse_args()
    sys.dont_write_bytecode = False
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    warnings.simplefilter("ignore")
    site = sysconfig.get_paths()["purelib"]
    compileall.compile_dir(os.path.join(site, "mlflow"), quiet=2, workers=0)
    skipped = []
    for name in SERVER_MODULES + STORE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a module that cannot be imported is only not warmed
            skipped.append(f"{name}: {type(error).__name__}")
    pyc = sum(name.endswith(".pyc") for _, _, names in os.walk(site) for name in names)
    result = json.dumps({"pyc": pyc, "skipped": skipped})
    print(result)
    if args.done:
        partial = f"{args.done}.{os.getpid()}.partial"  # two jobs (after a kill) never share it
        with open(partial, "w", encoding="utf-8") as out:
            out.write(result + "\n")
        os.chmod(partial, 0o644)
        os.replace(partial, args.done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
