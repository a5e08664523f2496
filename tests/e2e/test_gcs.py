"""Google Cloud Storage artifact store end to end, against gcp-storage-emulator (PyPI) which the
test starts on this machine's loopback; the sandbox reaches it at 10.0.2.2 through
`--gcs-endpoint-url` (STORAGE_EMULATOR_HOST on the host). One deploy: the preflight probe
writes and deletes its object in the emulator, a 50 MB artifact goes through the real mlflow
client and the server, is found in the bucket through the emulator's own API and comes back
with the same checksum. The service-account key (a real RSA key made here) is pushed 0600 for
the service user, parses with google-auth on the host, and is in no output, log or process.

With STORAGE_EMULATOR_HOST set, google-cloud-storage sends no credentials (the emulator wants
none): the key's token_uri points at a closed port, so a client that tried to fetch a token
would fail the deploy instead of passing by luck.

The host fetches its wheelhouse from an operator's plain-HTTP mirror of the control node's cache
(`--wheelhouse-url`), not over SSH: first from a mirror that serves other bytes, which fails
before anything is installed, then from the real copy (the control node sends no tar).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scripts.benchlib import wheelhouse_cache

from tests.conftest import CLI
from tests.e2e.conftest import LEAN, VM, admin_env, mlflow_client, places_where_secrets_must_not_be
from tests.servers import HOST_FROM_SANDBOX, GcsEmulator, WheelhouseMirror

pytestmark = pytest.mark.e2e
OUTPUTS: list[str] = []
BIG = 50 * 1024 * 1024
BUCKET = "mlflow-gcs"
STORE = f"gs://{BUCKET}/artifacts"
KEY_ON_HOST = "/etc/mlflow/gcs-credentials.json"
SERVICE_ACCOUNT = "mlflow-e2e@mlops-provision-test.iam.gserviceaccount.com"
PROXY_ONLY = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}


@dataclass
class Key:
    path: Path
    pem_lines: list[str]  # the private key's base64 body, line by line: any of them is a leak


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsEmulator]:
    server = GcsEmulator().start()
    server.bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return write_key(tmp_path_factory.mktemp("gcs") / "sa.json")


def write_key(path: Path) -> Key:
    """A service-account key file as Google issues them, with a fresh 2048-bit RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"type": "service_account", "project_id": "mlops-provision-test",
                   "private_key_id": os.urandom(20).hex(), "private_key": pem, "client_email": SERVICE_ACCOUNT,
                   "client_id": "100000000000000000001", "token_uri": "http://127.0.0.1:9/token"}, fh)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert len(body) > 20
    return Key(path, body)


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-gcs", "debian12", "--host-loopback")


@pytest.fixture(scope="module")
def mirror() -> Iterator[WheelhouseMirror]:
    server = WheelhouseMirror(wheelhouse_cache().parent)  # /wheelhouse/ is the control node's wheelhouse cache
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tampered(vm: VM, gcs: GcsEmulator, key: Key, mirror: WheelhouseMirror) -> subprocess.CompletedProcess[str]:
    """The first deploy, from a mirror whose tar is not the one the control node built."""
    mirror.tampered = True
    try:
        return deploy(vm, gcs, key, mirror)
    finally:
        mirror.tampered = False


@pytest.fixture(scope="module")
def deployed(vm: VM, gcs: GcsEmulator, key: Key, mirror: WheelhouseMirror,
             tampered: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    return deploy(vm, gcs, key, mirror)


def deploy(vm: VM, gcs: GcsEmulator, key: Key, mirror: WheelhouseMirror) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AWS_", "AZURE_", "MLFLOW_", "GOOGLE_", "STORAGE_EMULATOR_"))}
    started = time.monotonic()
    proc = subprocess.run([CLI, "deploy", "--host", vm.name, *LEAN, "--artifacts-destination", STORE,
                           "--gcs-credentials-file", str(key.path), "--gcs-endpoint-url", gcs.endpoint_for_sandbox,
                           "--wheelhouse-url", mirror.url_for_sandbox],
                          capture_output=True, text=True, env=clean, timeout=900)
    print(f"\ndeploy with the GCS store: {time.monotonic() - started:.1f} s")
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def test_a_wheelhouse_mirror_with_other_bytes_stops_the_deploy_before_any_install(
        vm: VM, mirror: WheelhouseMirror, tampered: subprocess.CompletedProcess[str]) -> None:
    out = tampered.stdout + tampered.stderr
    assert tampered.returncode == 1, out
    fetched = [path for path, _, _ in mirror.log]
    assert len(fetched) == 1 and re.fullmatch(r"/wheelhouse/mlflow-[0-9.]+-[0-9a-f]+-v3-cp3\d+-\w+-glibc[0-9.]+\.tar",
                                              fetched[0]), mirror.log
    url = f"http://{HOST_FROM_SANDBOX}:{mirror.port}{fetched[0]}"
    assert f"{vm.name} could not fetch the wheelhouse from {url}: The checksum for" in out, out
    assert "or leave --wheelhouse-url (mlflow_wheelhouse_url) empty to push it over SSH. Nothing was installed." in out
    # Nothing of the download is left anywhere (get_url fetches into Ansible's remote temporary
    # directory, removed with the task), and no venv was made.
    left = vm.sh("find /opt/mlflow /root/.ansible /tmp /var/tmp -type f -size +1M 2>/dev/null;"
                 " find /opt/mlflow -path '/opt/mlflow/venvs/*' -prune -print 2>/dev/null; true")
    assert left.strip() == "", left
    assert vm.sh("test -e /etc/systemd/system/mlflow.service || echo none").strip() == "none"


def test_the_host_fetches_the_wheelhouse_and_the_control_node_sends_no_tar(
        mirror: WheelhouseMirror, deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert len(mirror.log) == 2, mirror.log  # the tampered fetch, then this one
    path, status, sent = mirror.log[-1]
    tar = wheelhouse_cache().parent / path[1:]
    assert (status, sent) == (200, tar.stat().st_size) and sent > 100 * 1024 * 1024, mirror.log  # all of it, once
    run_log = Path(re.search(r"full log: (\S+)", deployed.stdout).group(1)).read_text()  # type: ignore[union-attr]
    assert re.search(r"TASK \[mlflow_server : Install \| Push the wheelhouse\][^\n]*\nskipping:", run_log)
    assert re.search(r"TASK \[mlflow_server : Install \| Download the wheelhouse on the host\][^\n]*\nchanged:",
                     run_log)


def test_deploy_probes_the_emulator_and_serves_the_bucket(vm: VM, gcs: GcsEmulator,
                                                          deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"artifacts  {STORE} (served by the server)" in deployed.stdout
    assert "export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false" in deployed.stdout
    env = vm.sh("cat /etc/mlflow/mlflow.env")
    assert f'STORAGE_EMULATOR_HOST="{gcs.endpoint_for_sandbox}"' in env
    assert f'GOOGLE_APPLICATION_CREDENTIALS="{KEY_ON_HOST}"' in env
    # The preflight probe went from the host to the emulator: an upload under its probe prefix,
    # read back and deleted (no probe object is left in the bucket).
    log = gcs.requests()
    probe = rf"/b/{BUCKET}/o[^ ]*artifacts%2F\.mlops-provision-probe-[0-9a-f]{{12}}%2Fprobe\.txt"
    assert re.search(r'"POST /upload/storage/v1/b/' + BUCKET + r'/o\?uploadType=\w+', log), log[-2000:]
    assert re.search(r'"GET /(download/)?storage/v1' + probe + r"[^ ]*alt=media", log), log[-2000:]
    assert re.search(r'"DELETE /storage/v1' + probe, log), log[-2000:]
    assert [name for name in gcs.objects(BUCKET) if "mlops-provision-probe" in name] == []


def test_a_50mb_artifact_round_trip_lands_in_the_bucket(vm: VM, gcs: GcsEmulator,
                                                         deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0
    code = f"""
import hashlib, json, os, tempfile, time, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri({vm.url!r})
mlflow.set_experiment("gcs")
blob = os.urandom({BIG})
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "weights.bin")
    open(path, "wb").write(blob)
    t0 = time.monotonic()
    with mlflow.start_run() as run:
        mlflow.log_artifact(path, artifact_path="model")
    t1 = time.monotonic()
    back = MlflowClient().download_artifacts(run.info.run_id, "model/weights.bin", d + "/out")
    t2 = time.monotonic()
    print(json.dumps({{"sha": hashlib.sha256(blob).hexdigest(),
                      "back": hashlib.sha256(open(back, "rb").read()).hexdigest(),
                      "artifact_uri": run.info.artifact_uri, "run_id": run.info.run_id,
                      "up_s": t1 - t0, "down_s": t2 - t1}}))
"""
    result = mlflow_client(code, {**admin_env(vm), **PROXY_ONLY})
    print(f"\n50 MB through the server to the emulator: up {result['up_s']:.1f} s, down {result['down_s']:.1f} s")
    assert result["back"] == result["sha"]
    assert str(result["artifact_uri"]).startswith("mlflow-artifacts:/")
    # In the bucket, under the store's prefix, byte for byte: read through the emulator's API.
    suffix = f"/{result['run_id']}/artifacts/model/weights.bin"
    objects = gcs.objects(BUCKET)
    names = [name for name in objects if name.endswith(suffix)]
    assert len(names) == 1, objects
    assert names[0].startswith("artifacts/") and objects[names[0]] == BIG
    assert hashlib.sha256(gcs.read(BUCKET, names[0])).hexdigest() == result["sha"]


def test_the_key_file_is_handled_like_the_other_secrets(vm: VM, key: Key,
                                                         deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0
    assert vm.sh(f"stat -c '%a %U' {KEY_ON_HOST}").split() == ["600", "mlflow"]
    assert vm.digest(KEY_ON_HOST) == hashlib.sha256(key.path.read_bytes()).hexdigest()
    # The service user, and only it, reads a key google-auth accepts, with the venv the server runs.
    loaded = vm.sh(f"runuser -u mlflow -- {vm.process_venv()}/bin/python -c "
                   f"'import google.auth; c, _ = google.auth.load_credentials_from_file(\"{KEY_ON_HOST}\"); "
                   "print(type(c).__name__, c.service_account_email)'")
    assert loaded.split() == ["Credentials", SERVICE_ACCOUNT]
    assert "Permission denied" in vm.sh(f"runuser -u nobody -- cat {KEY_ON_HOST} 2>&1", check=False)
    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    leaked = {name for name, text in places.items() for line in key.pem_lines if line in text}
    assert leaked == set()


def test_a_key_replaced_at_the_same_path_is_deployed(vm: VM, gcs: GcsEmulator, key: Key, mirror: WheelhouseMirror,
                                                     deployed: subprocess.CompletedProcess[str]) -> None:
    """A rotated key in the same file is a change, never "nothing to do" (the digest reads the content)."""
    assert deploy(vm, gcs, key, mirror).returncode == 0
    assert "checked    nothing to do" in OUTPUTS[-1], OUTPUTS[-1]  # unchanged: the short way
    rotated = write_key(key.path)
    proc = deploy(vm, gcs, rotated, mirror)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked    nothing to do" not in proc.stdout
    assert "restarted  yes" in proc.stdout, proc.stdout
    assert vm.digest(KEY_ON_HOST) == hashlib.sha256(rotated.path.read_bytes()).hexdigest()
    assert not any(line in proc.stdout + proc.stderr for line in rotated.pem_lines)
