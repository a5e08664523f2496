"""Write, read back and delete a probe object in an artifact store, the way the server will.

Runs on the MLflow host as the service user with the venv's Python and MLflow's own artifact
repository for the URI, so it exercises the same client library, endpoint, TLS settings and
credentials as the server. Credentials arrive as a JSON object on stdin (never argv or the
environment of the calling sudo). Prints one JSON object; always exits 0.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import tempfile
import uuid


def _check_bucket(repo: object, store: str) -> None:
    """Name a missing bucket plainly: some S3-compatible stores answer a write to one with a
    generic InternalError, and a HEAD answer carries no reason worth more than the write's."""
    from botocore.exceptions import ClientError

    bucket = store[len("s3://"):].split("/", 1)[0]
    try:
        repo._get_s3_client().head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise RuntimeError(f"NoSuchBucket: the bucket {bucket!r} does not exist on this endpoint") from None
        # Anything else (403, ...): the write below fails with the store's precise reason.


def main() -> int:
    store = sys.argv[1].rstrip("/")
    os.environ.update(json.loads(sys.stdin.read() or "{}"))
    os.environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir  # ~/.ssh for sftp
    out: dict[str, object] = {"ok": False, "store": store, "error": ""}
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        probe_dir = f".mlops-provision-probe-{uuid.uuid4().hex[:12]}"
        repo = get_artifact_repository(f"{store}/{probe_dir}")
        if store.startswith("s3://"):
            _check_bucket(repo, store)
        payload = f"mlops-provision probe {uuid.uuid4()}\n"
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.txt")
            with open(src, "w") as fh:
                fh.write(payload)
            repo.log_artifact(src)
            os.mkdir(os.path.join(tmp, "down"))
            back = repo.download_artifacts("probe.txt", os.path.join(tmp, "down"))
            with open(back) as fh:
                if fh.read() != payload:
                    raise RuntimeError("the object read back differs from the one written")
        repo.delete_artifacts()
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the store's own reason goes to the operator
        name = type(exc).__name__
        out["error"] = f"{name}: {' '.join(str(exc).split())}"[:500]
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
