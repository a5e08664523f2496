"""Sandbox VMs: `up` starts a systemd container reachable over SSH on 127.0.0.1, `down` removes it.

Each sandbox is recorded as JSON in the state directory, so `--host NAME` finds its SSH port,
key and published MLflow port exactly like an inventory host.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops_provision import endpoints
from mlops_provision.errors import ProvisionError, UsageError
from mlops_provision.paths import state_dir
from mlops_provision.sandbox.image import SANDBOX_USER, build_image
from mlops_provision.sandbox.podman import podman

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
CONTAINER_PREFIX = "mlops-sandbox-"
MLFLOW_PORT = 5000
HTTPS_PORT = 443


@dataclass
class Sandbox:
    name: str
    distro: str
    container: str
    ssh_port: int
    mlflow_port: int  # on 127.0.0.1, published to the container's 5000
    user: str
    key_file: str
    known_hosts: str
    https_port: int = 0  # on 127.0.0.1, published to the container's 443 (--tls)

    def inventory_vars(self) -> dict[str, object]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.ssh_port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": self.key_file,
            "ansible_ssh_common_args": (
                f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={self.known_hosts}"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def _dir() -> Path:
    path = state_dir() / "sandboxes"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_name(name: str) -> None:
    if not valid_name(name):
        raise UsageError(f"--name {name!r}: use 1-31 of a-z 0-9 - starting with a letter, e.g. vm1")


def load(name: str) -> Sandbox | None:
    record = _dir() / f"{name}.json"
    if not _NAME.match(name) or not record.exists():
        return None
    return Sandbox(**json.loads(record.read_text()))


def list_all() -> list[tuple[Sandbox, str]]:
    out = []
    for record in sorted(_dir().glob("*.json")):
        box = Sandbox(**json.loads(record.read_text()))
        state = podman("inspect", "--format", "{{.State.Status}}", box.container, check=False)
        out.append((box, state.stdout.strip() if state.returncode == 0 else "missing"))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_key() -> Path:
    key = _dir() / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlops-provision-sandbox",
                        "-f", str(key)], check=True)
    return key


def up(name: str, distro: str, *, host_loopback: bool = False,
       log: Callable[[str], None] = print) -> Sandbox:
    """Start (or reuse) sandbox `name`. host_loopback: the VM reaches this machine's 127.0.0.1
    services at 10.0.2.2 (slirp4netns), e.g. a test's S3 server or database."""
    check_name(name)
    existing = load(name)
    if existing is not None:
        state = podman("inspect", "--format", "{{.State.Status}}", existing.container, check=False)
        if state.returncode == 0 and state.stdout.strip() == "running":
            log(f"sandbox {name} is already running ({existing.distro}, ssh 127.0.0.1:{existing.ssh_port})")
            return existing
        down(name)
    image = build_image(distro, log=log)
    key = _ensure_key()
    box = Sandbox(
        name=name, distro=distro, container=CONTAINER_PREFIX + name,
        ssh_port=_free_port(), mlflow_port=_free_port(), user=SANDBOX_USER,
        key_file=str(key), known_hosts=str(_dir() / f"{name}.known_hosts"), https_port=_free_port(),
    )
    Path(box.known_hosts).unlink(missing_ok=True)
    podman("rm", "--force", "--ignore", box.container)
    # SYS_ADMIN: systemd sandboxing (ProtectSystem=, PrivateTmp=) needs mount namespaces.
    # NET_ADMIN: the VM's own firewall (nftables) works as on a real host.
    network = ["--network", "slirp4netns:allow_host_loopback=true"] if host_loopback else []
    podman(
        "run", "--detach", "--name", box.container, "--hostname", name, *network,
        "--systemd=always", "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
        "--publish", f"127.0.0.1:{box.ssh_port}:22",
        "--publish", f"127.0.0.1:{box.mlflow_port}:{MLFLOW_PORT}",
        "--publish", f"127.0.0.1:{box.https_port}:{HTTPS_PORT}",
        "--label", "mlops-provision.sandbox=" + name,
        image, "/sbin/init",
    )
    authorized = f"/home/{SANDBOX_USER}/.ssh/authorized_keys"
    podman("cp", str(key) + ".pub", f"{box.container}:{authorized}")
    podman("exec", box.container, "sh", "-c",
           f"chown {SANDBOX_USER}:{SANDBOX_USER} {authorized} && chmod 600 {authorized}")
    (_dir() / f"{name}.json").write_text(json.dumps(asdict(box), indent=2) + "\n")
    _wait_for_ssh(box)
    return box


def _wait_for_ssh(box: Sandbox, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "StrictHostKeyChecking=accept-new",
           "-o", f"UserKnownHostsFile={box.known_hosts}", "-i", box.key_file, "-p", str(box.ssh_port),
           f"{box.user}@127.0.0.1", "sudo", "-n", "true"]
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise ProvisionError(f"sandbox {box.name} did not accept SSH within {timeout:.0f} s; "
                         f"see: podman logs {box.container}")


def down(name: str) -> bool:
    check_name(name)
    box = load(name)
    container = box.container if box else CONTAINER_PREFIX + name
    removed = podman("rm", "--force", "--time", "5", "--ignore", container).stdout.strip() != ""
    for suffix in (".json", ".known_hosts"):
        path = _dir() / f"{name}{suffix}"
        if path.exists():
            path.unlink()
            removed = True
    return removed


def secret_names(name: str) -> list[str]:
    """The secrets-store entries the roles create for sandbox `name` (its auth realm and its
    local PostgreSQL): removed with it, so a new sandbox of that name never inherits them."""
    check_name(name)
    return [f"mlflow-admin-{name}.password", f"mlflow-flask-{name}.key", f"postgresql-{name}.password"]


def forget_endpoint(name: str) -> bool:
    """Drop the endpoint record `deploy` kept for `name` (health and user would find a dead URL)."""
    entries = endpoints.load_all()
    if name not in entries:
        return False
    del entries[name]
    record = state_dir() / "endpoints.json"
    partial = record.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({host: asdict(e) for host, e in entries.items()}, fh, indent=2, sort_keys=True)
    os.replace(partial, record)
    return True
