"""Resolve --host / -i into an inventory: sandbox names, inventory hosts, or plain hostnames.

Order for each --host: a host of the given inventory, then a sandbox of that name, then a
hostname or address reached over SSH with the operator's SSH settings. A name that is none
of these is bad input (exit 2) before anything runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops_provision.errors import UsageError
from mlops_provision.sandbox import machines
from mlops_provision.sandbox.machines import Sandbox

GROUP = "mlflow_servers"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*$")


@dataclass
class Targets:
    inventories: list[Path] = field(default_factory=list)
    generated: dict[str, Any] = field(default_factory=dict)
    pattern: str = GROUP
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # host -> address for URLs

    def url(self, host: str, port: int, scheme: str = "http") -> str:
        if host in self.sandboxes:
            box = self.sandboxes[host]
            return f"https://127.0.0.1:{box.https_port}" if scheme == "https" else box.url
        address = self.addresses.get(host, host)
        if ":" in address:
            address = f"[{address}]"
        return f"{scheme}://{address}" + ("" if (scheme, port) == ("https", 443) else f":{port}")


def _inventory_hosts(inventories: list[Path]) -> dict[str, dict[str, Any]]:
    """Host -> its variables, read with Ansible's own inventory parser (any format)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(p) for p in inventories])
    variables = VariableManager(loader=loader, inventory=manager)
    out = {}
    for host in manager.get_hosts():
        hv = variables.get_vars(host=host)
        out[host.name] = {k: v for k, v in hv.items()
                          if k.startswith(("mlflow_", "ansible_host", "ansible_port", "group_names"))}
    return out


def resolve(hosts: list[str], inventories: list[str]) -> Targets:
    targets = Targets()
    for inv in inventories:
        path = Path(inv)
        if not path.exists():
            raise UsageError(f"-i/--inventory {inv}: file not found")
        if not os.access(path, os.R_OK):
            raise UsageError(f"-i/--inventory {inv}: not readable")
        targets.inventories.append(path.resolve())
    if not hosts and not targets.inventories:
        raise UsageError("give --host NAME (a sandbox, an inventory host or a hostname/IP) or -i INVENTORY")

    try:
        known = _inventory_hosts(targets.inventories) if targets.inventories else {}
    except OSError as exc:  # e.g. a directory with unreadable entries: Ansible reads every file in it
        what = os.fsdecode(exc.filename) if exc.filename else "it"
        raise UsageError(f"-i/--inventory: cannot read {what} ({exc.strerror or exc}); "
                         "valid: an inventory file or a directory of them") from None
    for h, hostvars in known.items():  # every inventory host, load balancers included, for URLs
        targets.addresses[h] = str(hostvars.get("ansible_host", h))
        _note_sandbox(targets, h, hostvars)
    if not hosts:
        members = [h for h, v in known.items() if GROUP in v.get("group_names", [])]
        if not members:
            raise UsageError(f"-i: the inventory has no hosts in group {GROUP}; "
                             "put the MLflow servers there or pass --host")
        return targets

    generated_hosts: dict[str, Any] = {}
    for host in hosts:
        if host in known:
            continue
        box = machines.load(host)
        if box is not None:
            targets.sandboxes[host] = box
            generated_hosts[host] = box.inventory_vars()
            continue
        _check_resolvable(host, bool(targets.inventories))
        generated_hosts[host] = {}
        targets.addresses[host] = host
    if generated_hosts:
        targets.generated = {GROUP: {"hosts": generated_hosts}}
    targets.pattern = ",".join(hosts)
    return targets


def _note_sandbox(targets: Targets, host: str, hostvars: dict[str, Any]) -> None:
    """An inventory host that is a sandbox of this machine (same name, reached at 127.0.0.1 on
    the sandbox's SSH port) answers at the sandbox's published port, not at 127.0.0.1:5000."""
    box = machines.load(host)
    if (box is not None and str(hostvars.get("ansible_host", "")) == "127.0.0.1"
            and str(hostvars.get("ansible_port", "")) == str(box.ssh_port)):
        targets.sandboxes[host] = box


def _check_resolvable(host: str, had_inventory: bool) -> None:
    where = "not in the inventory" if had_inventory else "no -i inventory given"
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise UsageError(f"--host {host!r} is not a valid host name, address, sandbox or inventory host")
    try:
        if host.lower().rstrip(".").endswith(".invalid"):  # RFC 6761: never resolves; no query
            raise OSError(host)
        socket.getaddrinfo(host, 22, proto=socket.IPPROTO_TCP)
    except OSError:
        start = f"start it with `mlops-provision sandbox up --name {host}`, " if machines.valid_name(host) else ""
        raise UsageError(
            f"--host {host}: not a sandbox (see `mlops-provision sandbox list`), {where}, and the name "
            f"does not resolve; {start}add it to an inventory (-i), or use its address"
        ) from None
