"""What users install, used as they would use it: the CLI under test is the wheel installed outside
the checkout (`make test` builds it once with `python -m build`), and the Ansible collection built by
`ansible-galaxy collection build` and installed with `ansible-galaxy collection install TARBALL -p DIR`
deploys a sandbox from a playbook a team would write (`roles: [mlops_provision.mlflow.mlflow_server]`,
its own inventory and vars), then the collection's own fleet playbook by its FQCN converges it.
pipx's install of the wheel deploys the shared server in test_deploy."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI, ROOT
from tests.e2e.conftest import VM, cli

pytestmark = pytest.mark.e2e

ANSIBLE_BIN = Path(sys.executable).parent  # the team's own Ansible: the `ansible` package of the test tools


def test_the_cli_under_test_is_the_installed_wheel_not_the_checkout() -> None:
    if not os.environ.get("MLOPS_PROVISION_CLI"):
        pytest.skip("MLOPS_PROVISION_CLI is not set: this run tests the checkout (make test sets it)")
    python = Path(CLI).read_text().splitlines()[0].removeprefix("#!")
    where = subprocess.run([python, "-c", "import mlops_provision, mlops_provision.paths as p; "
                            "print(mlops_provision.__file__); print(p.playbook('deploy'))"],
                           capture_output=True, text=True, check=True, cwd="/").stdout.split()
    assert all("/site-packages/mlops_provision/" in w for w in where), where
    assert not any(w.startswith(str(ROOT)) for w in where), where


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    yield from VM.up("ships-e2e", "debian12")


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection tarball built once by `make test` (or here), installed as a team would."""
    built = os.environ.get("MLOPS_PROVISION_COLLECTION_DIR")
    out = tmp_path_factory.mktemp("collection-build")
    if built:
        tarballs = sorted(Path(built).glob("mlops_provision-mlflow-*.tar.gz"))
    else:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_collection.py"), "--output-path", str(out),
                        "--staging", str(out / "src")], check=True, capture_output=True)
        tarballs = sorted(out.glob("mlops_provision-mlflow-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert tarballs[0].name == f"mlops_provision-mlflow-{version}.tar.gz"
    target = tmp_path_factory.mktemp("collections")
    subprocess.run([str(ANSIBLE_BIN / "ansible-galaxy"), "collection", "install", str(tarballs[0]), "-p",
                    str(target)], check=True, capture_output=True)
    installed = target / "ansible_collections" / "mlops_provision" / "mlflow"
    assert (installed / "roles" / "mlflow_server" / "tasks" / "main.yml").is_file()
    # The alert rules ship in the collection too, the same file `mlops-provision alert-rules` prints.
    assert (installed / "prometheus" / "mlflow-alerts.rules.yml").read_text() == cli("alert-rules").stdout
    assert not (installed / "tests").exists() and not (installed / "cli").exists()
    return target


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The team's secrets directory (mlflow_secrets_dir) on this control node."""
    return tmp_path_factory.mktemp("team-secrets")


def _inventory(vm: VM, path: Path) -> Path:
    from mlops_provision.sandbox import machines

    box = machines.load(vm.name)
    assert box is not None
    path.write_text(yaml.safe_dump({"all": {"children": {"mlflow_servers": {"hosts": {
        vm.name: box.inventory_vars()}}}}}))
    return path


def _playbook(args: list[str], collections: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="True", ANSIBLE_ROLES_PATH=str(tmp_path / "no-roles"))
    return subprocess.run([str(ANSIBLE_BIN / "ansible-playbook"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=1200)


def _health(vm: VM) -> int:
    with urllib.request.urlopen(vm.url + "/health", timeout=10) as answer:
        return int(answer.status)


def test_a_teams_own_playbook_deploys_with_the_collections_role(vm: VM, collections: Path, secrets: Path,
                                                                tmp_path: Path) -> None:
    inventory = _inventory(vm, tmp_path / "inventory.yml")
    (tmp_path / "site.yml").write_text(yaml.safe_dump([{
        "name": "Our MLflow", "hosts": "mlflow_servers", "become": True,
        "roles": [{"role": "mlops_provision.mlflow.mlflow_server",
                   "vars": {"mlflow_workers": 1, "mlflow_secrets_dir": str(secrets)}}],
    }], sort_keys=False))
    proc = _playbook(["-i", str(inventory), "site.yml"], collections, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert _health(vm) == 200
    assert vm.sh("systemctl is-active mlflow.service").strip() == "active"
    # The admin password the role generated on this control node logs in.
    password = next(secrets.glob("mlflow-admin-*.password")).read_text().split()[0]
    request = urllib.request.Request(vm.url + "/api/2.0/mlflow/experiments/search?max_results=1")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["experiments"][0]["name"] == "Default"


def test_the_collections_fleet_playbook_runs_by_its_fqcn(vm: VM, collections: Path, secrets: Path,
                                                          tmp_path: Path) -> None:
    inventory = _inventory(vm, tmp_path / "inventory.yml")
    pid = vm.main_pid()
    proc = _playbook(["-i", str(inventory), "mlops_provision.mlflow.deploy", "-e",
                      json.dumps({"mlflow_workers": 1, "mlflow_secrets_dir": str(secrets)})], collections, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert _health(vm) == 200 and vm.main_pid() == pid  # the same settings: nothing restarted
