"""`--install-method index` against a real package index: pypiserver (from PyPI) serving the
wheelhouse over HTTPS with a certificate of a CA made here, on this machine's loopback, which a
`--host-loopback` sandbox reaches as 10.0.2.2; and through a real HTTP proxy (proxy.py, from
PyPI) that asks for credentials, to an index only the proxy can reach (this machine's
127.0.0.1, which is the VM's own loopback from inside it). One cold install through the proxy
proves both (each install from an index costs about two minutes of the suite); the deploy
without the CA bundle asks for another venv, so it would build one if the index were trusted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scripts.benchlib import http_ok, wait_for

from tests.conftest import ROOT
from tests.e2e.conftest import LEAN, VM, cli, ensure_deployed, places_where_secrets_must_not_be
from tests.servers import free_port

pytestmark = pytest.mark.e2e
PROXY_PASSWORD = "pr0xy-S3cret-Zq"
CA_ON_HOST = "/etc/ssl/mlops-test-index-ca.pem"
OUTPUTS: list[str] = []


@dataclass
class Index:
    port: int
    proxy_port: int
    access_log: Path
    proxy_log: Path


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-index", "debian12", "--host-loopback")


def wheelhouses(cache: Path) -> list[Path]:
    """Debian 12 wheelhouses of the default MLflow version, oldest first: any of them holds
    MLflow and every dependency (the others add store clients)."""
    version = (ROOT / "roles/mlflow_server/defaults/main.yml").read_text().split('mlflow_version: "')[1].split('"')[0]
    return sorted((cache / "wheelhouse").glob(f"mlflow-{version}-*-cp311-*-glibc2.36.tar"),
                  key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def index(vm: VM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    work = tmp_path_factory.mktemp("index")
    cache = Path(os.environ.get("MLOPS_PROVISION_CACHE") or Path.home() / ".cache/mlops-provision")
    if not wheelhouses(cache):  # this module alone, on a fresh cache: a default deploy builds one
        ensure_deployed(vm)
    tars = wheelhouses(cache)
    assert tars, f"no Debian 12 wheelhouse in {cache}"
    wheels = work / "wheels"
    with tarfile.open(tars[-1]) as tar:
        tar.extractall(wheels, filter="data")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "ca.pem"), "-days", "2",
                    "-subj", "/CN=mlops-provision test index",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:10.0.2.2"], check=True, capture_output=True)
    subprocess.run(["podman", "cp", str(work / "ca.pem"), f"{vm.container}:{CA_ON_HOST}"], check=True)
    idx = Index(port=free_port(), proxy_port=free_port(), access_log=work / "access.log",
                proxy_log=work / "proxy.log")
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "gunicorn"), "--certfile", str(work / "ca.pem"), "--keyfile", str(work / "key.pem"),
         "-b", f"127.0.0.1:{idx.port}", "-w", "2", "--access-logfile", str(idx.access_log),
         f"pypiserver:app(roots=[{str(wheels)!r}])"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with idx.proxy_log.open("w") as log:
        proxy = subprocess.Popen(
            [str(bin_dir / "proxy"), "--hostname", "127.0.0.1", "--port", str(idx.proxy_port),
             "--basic-auth", f"mlops:{PROXY_PASSWORD}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: idx.access_log.exists() and _listening(idx.port) and _listening(idx.proxy_port), 30)
        yield idx
    finally:
        for proc in (server, proxy):
            proc.terminate()
            proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def deploy(vm: VM, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli("deploy", "--host", vm.name, *LEAN, "--install-method", "index", *args)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def extra(*packages: str) -> list[str]:
    return ["-e", json.dumps({"mlflow_extra_pip_packages": list(packages)})]


def test_https_index_with_a_ca_bundle_through_a_proxy_that_asks_for_credentials(vm: VM, index: Index) -> None:
    """One cold install proves both: pip reaches the HTTPS index (its CA bundle on the host) only
    through the proxy, which asks for credentials."""
    before = vm.process_venv() if vm.main_pid() not in ("", "0") else ""
    proxy = f"http://mlops:{PROXY_PASSWORD}@10.0.2.2:{index.proxy_port}"
    # 127.0.0.1 is the VM's own loopback: only the proxy, on this machine, reaches that index.
    proc = deploy(vm, "--pip-index-url", f"https://127.0.0.1:{index.port}/simple/", "--pip-proxy", proxy,
                  "--pip-ca-bundle", CA_ON_HOST, *extra("six"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert vm.process_venv() != before
    assert vm.process_venv() == vm.sh("readlink -f /opt/mlflow/current").strip()
    assert "pip" in vm.sh("ls /opt/mlflow/current/bin/").split()  # pip built it, not uv
    log = index.access_log.read_text()
    assert "GET /simple/mlflow/ " in log and "GET /packages/mlflow-" in log and "GET /packages/six-" in log, log[-2000:]
    assert f"CONNECT 127.0.0.1:{index.port}" in index.proxy_log.read_text()
    assert vm.sh("stat -c '%U %a' /opt/mlflow/pip.conf").strip() == "root 600"
    assert http_ok(vm.url + "/health")
    leaks = {where for where, text in places_where_secrets_must_not_be(vm, OUTPUTS).items()
             if PROXY_PASSWORD in text}
    assert not leaks, leaks


def test_without_the_ca_bundle_the_index_is_refused_in_seconds(vm: VM, index: Index) -> None:
    pid = vm.main_pid()
    began = time.monotonic()
    url = f"https://10.0.2.2:{index.port}/simple/"
    proc = deploy(vm, "--pip-index-url", url, *extra("six", "packaging"))  # a new venv would be built
    took = time.monotonic() - began
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"e2e-index cannot reach the package index {url} (" in out and "CERTIFICATE_VERIFY_FAILED" in out, out
    assert took < 60, f"{took:.0f} s"
    assert vm.main_pid() == pid
