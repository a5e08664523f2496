"""A host with no outbound network at all (a drop policy on output in its own network
namespace; only loopback and replies to connections made to it pass): the default deploy
installs from the wheelhouse pushed over SSH and serves, and `--install-method index` there
fails within seconds naming the index and the wheelhouse, with nothing installed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from scripts.benchlib import http_ok

from tests.e2e.conftest import LEAN, VM, cli

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
    proc = cli("deploy", "--host", vm.name, *LEAN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert vm.sh("systemctl is-active mlflow.service").strip() == "active"
    assert http_ok(vm.url + "/health")
    assert "  health     OK" in proc.stdout
