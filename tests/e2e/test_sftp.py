"""The SFTP artifact store against a real SSH server: a second sandbox, reached over a podman
network this module creates, with an account that accepts only the test's key. A 50 MB
artifact goes through the real client and the server's SFTP store and comes back with the same
checksum; the file is on the SSH server; the key is readable by the service user only and shows
nowhere else; without the server's host key the deploy is refused before it starts."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import LEAN, VM, cli, places_where_secrets_must_not_be, podman_network
from tests.e2e.test_artifacts import log_big_artifact

pytestmark = pytest.mark.e2e
STORE_USER = "mlstore"
STORE_DIR = "/srv/mlflow-artifacts"
OUTPUTS: list[str] = []


@pytest.fixture(scope="module")
def ssh_server() -> Iterator[VM]:
    yield from VM.up("e2e-sftpd", "debian12")


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-sftp", "debian12")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RSA in PEM: pysftp, which MLflow's SFTP store uses, loads RSA (or DSA) keys only."""
    path = tmp_path_factory.mktemp("sftp") / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-m", "PEM", "-N", "", "-C", "mlflow-store",
                    "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def store(vm: VM, ssh_server: VM, key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The SSH server's account and directory, the two sandboxes on a network of their own, and
    a known_hosts file with the server's real host key. Yields the URI and the flags."""
    ssh_server.sh(f"useradd --create-home --shell /bin/sh {STORE_USER}"
                  f" && install -d -o {STORE_USER} -m 700 /home/{STORE_USER}/.ssh"
                  f" && install -d -o {STORE_USER} -m 750 {STORE_DIR}")
    subprocess.run(["podman", "cp", f"{key}.pub", f"{ssh_server.container}:/home/{STORE_USER}/.ssh/authorized_keys"],
                   check=True)
    ssh_server.sh(f"chown {STORE_USER} /home/{STORE_USER}/.ssh/authorized_keys"
                  f" && chmod 600 /home/{STORE_USER}/.ssh/authorized_keys")
    with podman_network("mlops-e2e-sftp", vm, ssh_server) as net:
        address = net.addresses[ssh_server.container]
        known_hosts = tmp_path_factory.mktemp("sftp-known") / "known_hosts"
        host_key = ssh_server.sh("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        known_hosts.write_text(f"{address} {' '.join(host_key)}\n")
        yield {"uri": f"sftp://{STORE_USER}@{address}{STORE_DIR}", "known_hosts": str(known_hosts)}


def deploy(vm: VM, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli("deploy", "--host", vm.name, *LEAN, *args)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def test_without_the_server_host_key_the_deploy_is_refused(vm: VM, store: dict[str, str], key: Path) -> None:
    proc = deploy(vm, "--artifacts-destination", store["uri"], "--sftp-key-file", str(key))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--sftp-known-hosts-file is needed for this artifact store (the SFTP server's host key" in proc.stderr
    assert vm.sh("test -e /etc/mlflow && echo touched || echo bare").strip() == "bare"


def test_a_50mb_round_trip_through_the_sftp_store(vm: VM, ssh_server: VM, store: dict[str, str], key: Path) -> None:
    proc = deploy(vm, "--artifacts-destination", store["uri"], "--sftp-key-file", str(key),
                  "--sftp-known-hosts-file", store["known_hosts"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = log_big_artifact(vm, experiment="sftp")
    assert result["back"] == result["sha"]
    found = ssh_server.sh(f"find {STORE_DIR} -path '*{result['run_id']}/artifacts/model/weights.bin'").split()
    assert len(found) == 1, found
    assert ssh_server.sh(f"sha256sum {found[0]}").split()[0] == result["sha"]
    assert ssh_server.sh(f"stat -c %U {found[0]}").strip() == STORE_USER


def test_the_key_is_the_service_users_alone(vm: VM, key: Path) -> None:
    assert vm.sh("stat -c '%U %G %a' /var/lib/mlflow/.ssh /var/lib/mlflow/.ssh/id_mlflow").split("\n")[:2] == [
        "mlflow mlflow 700", "mlflow mlflow 600"]
    assert vm.sh("runuser -u nobody -- cat /var/lib/mlflow/.ssh/id_mlflow 2>&1 || echo refused",
                 check=False).strip().endswith("refused")
    assert hashlib.sha256(vm.sh("cat /var/lib/mlflow/.ssh/id_mlflow").encode()).hexdigest() == \
        hashlib.sha256(key.read_text().encode()).hexdigest()
    secret = "".join(key.read_text().splitlines()[1:-1])[:64]  # a piece of the key's body
    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    assert [name for name, text in places.items() if secret in text.replace("\n", "")] == []
