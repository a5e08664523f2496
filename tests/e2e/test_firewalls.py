"""firewalld and ufw, each in turn the active host firewall of one Debian 12 sandbox, proven with
real connections from two sources: this machine (through the published port, so from the
default podman network's gateway) and a container on a podman network this module creates.
For each: an allowlist admits its source and no other, a new allowlist leaves no old rule
behind, no allowlist opens the port to both, and what destroy runs removes every rule this tool
added. (nftables is proven on the shared server by test_security.py.)

One install serves both: firewalld goes first, its rules are removed by the helper destroy runs
(`host_firewall.py remove`), then ufw replaces it under the running server and the full
`destroy` ends the module (a second install would cost a minute of the suite's budget)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import LEAN, VM, cli, podman_network

pytestmark = pytest.mark.e2e
PROBE = ("import sys, urllib.request, urllib.error\n"
         "try:\n"
         "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
         "except urllib.error.HTTPError as e:\n"
         "    print(e.code)\n"
         "except OSError:\n"
         "    print(0)\n")


@dataclass
class Sources:
    gateway: str  # this machine, as the VM sees it
    sibling: str  # the probing container's fixed address on the test network
    vm_on_net: str  # the VM's address there
    network: str
    image: str
    url: str  # the published port on this machine's loopback

    def from_here(self) -> int:
        """HTTP status of /health from this machine, 0 when no answer came."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def from_sibling(self) -> int:
        """The same from the other source: any HTTP status means the firewall let it through."""
        proc = subprocess.run(["podman", "run", "--rm", "--network", self.network, "--ip", self.sibling,
                               "--entrypoint", "python3", self.image, "-c", PROBE,
                               f"http://{self.vm_on_net}:5000/health"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("e2e-fw", "debian12")


@pytest.fixture(scope="module")
def sources(vm: VM) -> Iterator[Sources]:
    gateway = vm.sh("ip -4 route show default | awk '{print $3}'").strip()
    image = json.loads(subprocess.run(["podman", "inspect", vm.container], check=True,
                                      capture_output=True, text=True).stdout)[0]["ImageName"]
    with podman_network(f"mlops-e2e-fw-{vm.name}", vm) as net:
        yield Sources(gateway=gateway, sibling=str(net.subnet.network_address + 200),
                      vm_on_net=net.addresses[vm.container], network=net.name, image=image, url=vm.url)


def deploy(vm: VM, *args: str) -> str:
    proc = cli("deploy", "--host", vm.name, *LEAN, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def destroy(vm: VM) -> None:
    proc = cli("destroy", "--host", vm.name, "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def prove_the_allowlist(vm: VM, src: Sources, firewall: str, rules: str) -> None:
    """The steps every firewall goes through; rules is a shell command listing its rules."""
    out = deploy(vm, "--allow-from", f"{src.gateway}/32")
    assert f"  firewall   port 5000 open only to {src.gateway}/32 ({firewall})" in out, out
    assert (src.from_here(), src.from_sibling()) == (200, 0)

    out = deploy(vm, "--allow-from", f"{src.sibling}/32", "--allow-from", "2001:db8::/32")
    assert f"open only to {src.sibling}/32, 2001:db8::/32 ({firewall})" in out, out
    assert (src.from_here(), src.from_sibling()) == (0, 200)
    listed = vm.sh(rules)
    assert src.gateway not in listed, listed  # the old allowlist left nothing behind
    assert src.sibling in listed and "2001:db8::/32" in listed, listed
    out = deploy(vm, "--allow-from", f"{src.sibling}/32", "--allow-from", "2001:db8::/32")
    assert "changed=0" in out, out  # the rules read back as what was asked: nothing re-added
    assert vm.sh(rules) == listed

    out = deploy(vm)
    assert f"  firewall   port 5000 open to everyone ({firewall}; --allow-from CIDR limits it)" in out, out
    assert (src.from_here(), src.from_sibling()) == (200, 200)
    listed = vm.sh(rules)
    assert src.sibling not in listed and "2001:db8" not in listed, listed
    assert "5000" in listed, listed


def test_firewalld(vm: VM, sources: Sources) -> None:
    vm.sh("apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q firewalld >/dev/null"
          " && systemctl is-active firewalld")
    both = "firewall-cmd --list-all && firewall-cmd --permanent --list-all"
    prove_the_allowlist(vm, sources, "firewalld", both)
    # What destroy runs to close our ports (tasks/destroy.yml), on the running server: the
    # full destroy is proven with ufw below.
    subprocess.run(["podman", "cp", str(ROOT / "roles/mlflow_server/files/host_firewall.py"),
                    f"{vm.container}:/root/host_firewall.py"], check=True)
    removed = json.loads(vm.sh("python3 /root/host_firewall.py remove --other-port 5000 --other-port 443"
                               " --other-port 80"))
    assert removed["changed"], removed
    listed = vm.sh(both)
    assert "5000" not in listed and "rule family" not in listed, listed
    assert (sources.from_here(), sources.from_sibling()) == (0, 0)  # firewalld's default zone drops it


def test_ufw(vm: VM, sources: Sources) -> None:
    """ufw replaces firewalld under the running server: the next deploy manages ufw."""
    vm.sh("systemctl disable --now firewalld >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get purge -y -q"
          " firewalld >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ufw >/dev/null"
          " && ufw allow 22/tcp >/dev/null && ufw --force enable >/dev/null")
    prove_the_allowlist(vm, sources, "ufw", "ufw status")
    destroy(vm)
    assert "5000" not in vm.sh("ufw status")
    assert "mlflow" not in vm.sh("ufw status")
    assert vm.sh("ufw status").startswith("Status: active")  # destroy closed our port, not the firewall
