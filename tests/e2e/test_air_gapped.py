"""A host with no outbound network at all (a drop policy on output in its own network
namespace; only loopback and replies to connections made to it pass): the default deploy
installs from the wheelhouse pushed over SSH and serves, and `--install-method index` there
fails within seconds naming the index and the wheelhouse, with nothing installed.

The deploy turns on `--metrics` (its exporter comes from the same wheelhouse), and a real
Prometheus on this machine (Debian's, unpacked by setup) scrapes the server with the rules
`alert-rules` prints: stopping the server makes MLflowServerDown fire, starting it resolves it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.benchlib import http_ok, wait_for

from tests.conftest import ROOT
from tests.e2e.conftest import LEAN, VM, admin_env, cli
from tests.servers import free_port

pytestmark = pytest.mark.e2e
CUT = ("nft -f - <<'EOF'\n"
       "table inet airgap {\n chain output {\n  type filter hook output priority 0; policy drop;\n"
       "  oif lo accept\n  ct state established,related accept\n }\n}\nEOF")


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    for box in VM.up("e2e-gap", "debian12"):
        box.sh("apt-get update -q >/dev/null"
               " && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null")
        box.sh(CUT)
        yield box


def test_the_cut_holds(vm: VM) -> None:
    """The host reaches neither the distribution's mirrors nor this machine."""
    gateway = vm.sh("ip -4 route show default | awk '{print $3}'").strip()
    probe = vm.sh(f"timeout 5 bash -c '</dev/tcp/{gateway}/22' && echo reached || echo cut", check=False)
    assert probe.strip() == "cut"
    apt = vm.sh("apt-get -q -o Acquire::http::Timeout=3 -o Acquire::Retries=0 update 2>&1", check=False)
    assert "Err:" in apt and "Hit:" not in apt and "Get:" not in apt, apt


def test_index_install_fails_fast_naming_the_index_and_the_wheelhouse(vm: VM) -> None:
    index = "http://10.0.2.2:3141/simple/"
    began = time.monotonic()
    proc = cli("deploy", "--host", vm.name, "--install-method", "index", "--pip-index-url", index)
    took = time.monotonic() - began
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"e2e-gap cannot reach the package index {index} (" in out, out
    assert "--install-method wheelhouse, pushes the packages from this machine and needs no index" in out, out
    assert took < 90, f"{took:.0f} s"
    assert vm.sh("test -e /etc/systemd/system/mlflow.service && echo unit || echo none").strip() == "none"
    print(f"index install refused after {took:.1f} s")


def test_the_wheelhouse_deploys_with_no_network(vm: VM) -> None:
    proc = cli("deploy", "--host", vm.name, *LEAN, "--metrics")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert vm.sh("systemctl is-active mlflow.service").strip() == "active"
    assert http_ok(vm.url + "/health")
    assert "  health     OK" in proc.stdout


PROMETHEUS = ROOT / ".cache/prometheus/usr/bin/prometheus"


def _prometheus_api(port: int, path: str, **query: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.load(resp)["data"]
    return list(data["alerts"] if path == "alerts" else data["result"])


@pytest.fixture()
def prometheus(vm: VM, tmp_path: Path) -> Iterator[int]:
    """Debian's Prometheus on 127.0.0.1, scraping the server's /metrics as admin every second
    (job "mlflow", as docs/alerting.md asks), with the shipped rules, their `for:` cut to 5 s."""
    rules = cli("alert-rules")
    assert rules.returncode == 0, rules.stderr
    (tmp_path / "rules.yml").write_text(re.sub(r"(?m)^(\s+for:) \d+m$", r"\1 5s", rules.stdout))
    password = tmp_path / "password"
    password.write_text(admin_env(vm)["MLFLOW_TRACKING_PASSWORD"])
    password.chmod(0o600)
    target = vm.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "mlflow", "basic_auth": {"username": "admin", "password_file": str(password)},
                            "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), 60), log.read_text()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_prometheus_scrapes_the_server_and_the_down_alert_fires_and_resolves(vm: VM, prometheus: int) -> None:
    def series(query: str) -> list[dict[str, object]]:
        return _prometheus_api(prometheus, "query", query=query)

    def down_alerts() -> list[dict[str, object]]:
        return [a for a in _prometheus_api(prometheus, "alerts") if a["labels"]["alertname"] == "MLflowServerDown"]  # type: ignore[index]

    # A request as admin, so the request counters exist; then the rules' metric names and labels
    # are what the real exporter sends.
    login = base64.b64encode(f"admin:{admin_env(vm)['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(vm.url + "/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Authorization": f"Basic {login}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    assert wait_for(lambda: bool(series('up{job="mlflow"} == 1'))
                    and bool(series('mlflow_http_request_duration_seconds_bucket{job="mlflow", mlflow_version!=""}'))
                    and bool(series('mlflow_http_request_total{job="mlflow", status="200"}')), 60)
    assert wait_for(lambda: down_alerts() == [], 30), down_alerts()  # a scrape before the first answer

    vm.sh("systemctl stop mlflow.service")
    try:
        assert wait_for(lambda: any(a["state"] == "firing" for a in down_alerts()), 60), down_alerts()
        (alert,) = down_alerts()
        assert alert["labels"] == {"alertname": "MLflowServerDown", "job": "mlflow",
                                   "instance": vm.url.removeprefix("http://"), "severity": "critical"}
    finally:
        vm.sh("systemctl start mlflow.service")
    assert wait_for(lambda: http_ok(vm.url + "/health"), 120)
    assert wait_for(lambda: down_alerts() == [], 60), down_alerts()
