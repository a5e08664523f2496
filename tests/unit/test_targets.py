"""targets.resolve: an -i inventory's hosts, and which of them are sandboxes of this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mlops_provision import targets


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_PROVISION_HOME", str(tmp_path / "state"))
    boxes = tmp_path / "state" / "sandboxes"
    boxes.mkdir(parents=True)
    for name, ssh, web in (("s1", 40022, 40500), ("lb", 41022, 41500)):
        (boxes / f"{name}.json").write_text(json.dumps({
            "name": name, "distro": "debian12", "container": f"mlops-sandbox-{name}", "ssh_port": ssh,
            "mlflow_port": web, "user": "mlops", "key_file": "/k", "known_hosts": "/kh"}))
    return tmp_path


def _inventory(path: Path, hosts: dict[str, dict[str, object]], lb: dict[str, dict[str, object]]) -> str:
    inv = path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"mlflow_servers": {"hosts": hosts},
                                                        "mlflow_lb": {"hosts": lb}}}}))
    return str(inv)


def test_an_inventory_host_that_is_a_sandbox_answers_at_its_published_port(state: Path) -> None:
    inv = _inventory(state, {"s1": {"ansible_host": "127.0.0.1", "ansible_port": 40022},
                             "vm9": {"ansible_host": "10.0.0.9"}},
                     {"lb": {"ansible_host": "127.0.0.1", "ansible_port": 41022}})
    found = targets.resolve([], [inv])
    assert sorted(found.sandboxes) == ["lb", "s1"]
    assert found.url("s1", 5000) == "http://127.0.0.1:40500"
    assert found.url("lb", 5000) == "http://127.0.0.1:41500"  # load balancers too
    assert found.url("vm9", 5000) == "http://10.0.0.9:5000"


def test_a_host_named_like_a_sandbox_but_reached_elsewhere_is_not_that_sandbox(state: Path) -> None:
    inv = _inventory(state, {"s1": {"ansible_host": "127.0.0.1", "ansible_port": 2222}},
                     {"lb": {"ansible_host": "192.0.2.7"}})
    found = targets.resolve([], [inv])
    assert found.sandboxes == {}
    assert found.url("s1", 5000) == "http://127.0.0.1:5000"
    assert found.url("lb", 5000) == "http://192.0.2.7:5000"
