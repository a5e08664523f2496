"""Remote artifact stores end to end, against real servers the tests start on loopback:
SeaweedFS's S3 gateway (proxied and direct modes) and Azurite (Azure Blob). A 50 MB artifact
goes through the real mlflow client, is found in the store with the store's own client, and
comes back with the same checksum. Bad keys, a missing bucket and a wrong endpoint stop at the
preflight probe while the old server keeps serving; keys never leak.

The tests run in order against one sandbox and build on each other.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.conftest import LEAN, VM, admin_env, cli, mlflow_client, places_where_secrets_must_not_be
from tests.servers import HOST_FROM_SANDBOX, Azurite, SeaweedS3

pytestmark = pytest.mark.e2e
OUTPUTS: list[str] = []
BIG = 50 * 1024 * 1024
PROXY_ONLY = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    server = SeaweedS3().start()
    server.bucket("mlflow-proxied")
    server.bucket("mlflow-direct")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    server = Azurite().start()
    server.container("mlflow")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-art", "debian12", "--host-loopback")


def deploy(vm: VM, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_", "MLFLOW_"))}
    proc = subprocess.run([CLI, "deploy", "--host", vm.name, *LEAN, *args], capture_output=True, text=True,
                          env={**clean, **env}, timeout=900)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def s3_env(s3: SeaweedS3, secret: str | None = None) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": secret or s3.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1"}


def log_big_artifact(vm: VM, env: dict[str, str] | None = None, experiment: str = "Default") -> dict[str, object]:
    url = vm.url
    """Log a 50 MB artifact with the real client, download it back; report checksums."""
    code = f"""
import hashlib, json, os, tempfile, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({url!r})
mlflow.set_experiment({experiment!r})
blob = os.urandom({BIG})
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "weights.bin")
    open(path, "wb").write(blob)
    with mlflow.start_run() as run:
        mlflow.log_artifact(path, artifact_path="model")
    back = MlflowClient().download_artifacts(run.info.run_id, "model/weights.bin", d + "/out")
    print(json.dumps({{"sha": hashlib.sha256(blob).hexdigest(),
                      "back": hashlib.sha256(open(back, "rb").read()).hexdigest(),
                      "artifact_uri": run.info.artifact_uri, "run_id": run.info.run_id,
                      "exp": run.info.experiment_id}}))
"""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return mlflow_client(code, admin_env(vm))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def s3_object_sha(s3: SeaweedS3, bucket: str, suffix: str) -> str:
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if o["Key"].endswith(suffix)]
    assert len(keys) == 1, keys
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read()).hexdigest()


def test_s3_proxied_deploy_and_a_50mb_round_trip(vm: VM, s3: SeaweedS3) -> None:
    proc = deploy(vm, s3_env(s3), "--artifacts-destination", "s3://mlflow-proxied/artifacts",
                  "--s3-endpoint-url", s3.endpoint_for_sandbox)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "artifacts  s3://mlflow-proxied/artifacts (served by the server)" in proc.stdout
    # The store's endpoint (10.0.2.2) is reachable from the VM only, as on many sites: the client
    # must not take MLflow's presigned-URL shortcut for large downloads.
    assert "export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false" in proc.stdout
    result = log_big_artifact(vm, PROXY_ONLY)
    assert result["back"] == result["sha"]
    assert str(result["artifact_uri"]).startswith("mlflow-artifacts:/")
    # The object really sits in the bucket, byte for byte.
    assert s3_object_sha(s3, "mlflow-proxied", f"{result['run_id']}/artifacts/model/weights.bin") == result["sha"]
    assert cli("health", "--host", vm.name, "--deep").returncode == 0


def test_redeploy_without_keys_in_the_environment_uses_the_stored_ones(vm: VM, s3: SeaweedS3) -> None:
    pid = vm.main_pid()
    proc = deploy(vm, {}, "--artifacts-destination", "s3://mlflow-proxied/artifacts",
                  "--s3-endpoint-url", s3.endpoint_for_sandbox)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed=0" in proc.stdout
    assert vm.main_pid() == pid


@pytest.mark.parametrize(("args", "secret", "reason"), [
    (["--artifacts-destination", "s3://mlflow-proxied/artifacts"], "wrong-secret", "SignatureDoesNotMatch"),
    (["--artifacts-destination", "s3://no-such-bucket/artifacts", "--force"], None, "NoSuchBucket"),
    (["--artifacts-destination", "s3://mlflow-proxied/artifacts"], None, "Could not connect to the endpoint URL"),
])
def test_bad_store_settings_stop_at_the_probe(vm: VM, s3: SeaweedS3, args: list[str], secret: str | None,
                                              reason: str) -> None:
    pid, env = vm.main_pid(), vm.digest("/etc/mlflow/mlflow.env")
    endpoint = f"http://{HOST_FROM_SANDBOX}:9" if "Could not connect" in reason else s3.endpoint_for_sandbox
    proc = deploy(vm, s3_env(s3, secret), *args, "--s3-endpoint-url", endpoint)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot use the artifact store s3://" in proc.stdout
    assert reason in proc.stdout + proc.stderr
    assert vm.main_pid() == pid and vm.digest("/etc/mlflow/mlflow.env") == env
    assert cli("health", "--host", vm.name).returncode == 0


def test_switching_the_artifact_location_needs_force(vm: VM, s3: SeaweedS3) -> None:
    proc = deploy(vm, s3_env(s3), "--artifacts-destination", "s3://mlflow-proxied/elsewhere",
                  "--s3-endpoint-url", s3.endpoint_for_sandbox)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("stores artifacts in s3://mlflow-proxied/artifacts; this deploy would switch to "
            "s3://mlflow-proxied/elsewhere. Existing experiments keep their artifact location") in proc.stdout


def test_s3_direct_mode(vm: VM, s3: SeaweedS3) -> None:
    proc = deploy(vm, s3_env(s3), "--no-serve-artifacts", "--default-artifact-root", "s3://mlflow-direct/root",
                  "--s3-endpoint-url", s3.endpoint_for_sandbox, "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "artifacts  s3://mlflow-direct/root\n" in proc.stdout
    client_env = {**s3_env(s3), "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3.port}"}
    # A new experiment: existing ones keep their proxied location (MLflow's rule, see the switch test).
    result = log_big_artifact(vm, client_env, experiment="direct-mode")  # the client talks to the store
    assert result["back"] == result["sha"]
    assert str(result["artifact_uri"]).startswith("s3://mlflow-direct/root/")
    assert s3_object_sha(s3, "mlflow-direct", f"{result['run_id']}/artifacts/model/weights.bin") == result["sha"]


def test_azure_blob_proxied_round_trip(vm: VM, azurite: Azurite) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(HOST_FROM_SANDBOX)}
    proc = deploy(vm, env, "--artifacts-destination",
                  "wasbs://mlflow@devstoreaccount1.blob.core.windows.net/artifacts", "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = log_big_artifact(vm, PROXY_ONLY, experiment="azure")
    assert result["back"] == result["sha"]
    container = azurite.service().get_container_client("mlflow")
    suffix = f"{result['run_id']}/artifacts/model/weights.bin"
    names = [b.name for b in container.list_blobs() if b.name.endswith(suffix)]
    assert len(names) == 1, names
    blob = container.download_blob(names[0]).readall()
    assert hashlib.sha256(blob).hexdigest() == result["sha"]


def test_store_credentials_never_leak(vm: VM, s3: SeaweedS3, azurite: Azurite) -> None:
    from tests.servers import AZURITE_KEY

    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    for secret in (s3.secret_key, AZURITE_KEY):
        assert [name for name, text in places.items() if secret in text] == [], secret
    assert AZURITE_KEY in vm.sh("cat /etc/mlflow/mlflow.env")  # where it belongs
    stored = Path(os.environ["MLOPS_PROVISION_HOME"]) / "secrets" / "aws-secret-access-key"
    assert stored.read_text() == s3.secret_key and stored.stat().st_mode & 0o777 == 0o600
