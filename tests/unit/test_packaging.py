"""`pip install .` (not only editable) carries playbooks, roles, templates and the alert rules inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_carries_playbooks_roles_templates_and_renders_from_them(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("mlops_provision-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("mlops_provision/cli.py", "mlops_provision/playbooks/deploy.yml",
                     "mlops_provision/playbooks/destroy.yml",
                     "mlops_provision/roles/mlflow_server/tasks/main.yml",
                     "mlops_provision/roles/mlflow_server/tasks/install/wheelhouse.yml",
                     "mlops_provision/roles/mlflow_server/tasks/firewall/nftables.yml",
                     "mlops_provision/roles/mlflow_server/meta/argument_specs.yml",
                     "mlops_provision/roles/mlflow_server/files/build_wheelhouse.py",
                     "mlops_provision/templates/mlflow.service.j2", "mlops_provision/templates/mlflow.env.j2",
                     "mlops_provision/sandbox/containers.conf",
                     "mlops_provision/prometheus/mlflow-alerts.rules.yml"):
        assert required in names, required
    # Every tracked file of the shipped trees is in the wheel, and nothing of tests/ or docs/ is.
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "roles", "playbooks", "templates",
                              "prometheus"],
                             check=True, capture_output=True, text=True).stdout.split()
    assert tracked, "git ls-files found nothing: not a checkout?"
    missing = sorted(f for f in tracked if "mlops_provision/" + f not in names)
    assert not missing, f"in git but not in the wheel: {missing}"
    shipped_data = {n.split("/", 1)[1] for n in names
                    if n.startswith(("mlops_provision/roles/", "mlops_provision/playbooks/",
                                     "mlops_provision/templates/", "mlops_provision/prometheus/"))}
    assert shipped_data <= set(tracked) | {f"{top}/__init__.py" for top in ("roles", "playbooks", "templates",
                                                                             "prometheus")}, (
        sorted(shipped_data - set(tracked)))
    assert not [n for n in names if n.startswith(("tests/", "docs/", "mlops_provision/tests/"))]

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from mlops_provision import paths; from mlops_provision.cli import main; "
            "print(paths.resource_root()); main(['render', '--port', '5123'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(site / "mlops_provision")
    assert 'MLFLOW_PORT="5123"' in proc.stdout


def test_molecule_uses_the_current_sandbox_images() -> None:
    from mlops_provision.sandbox.image import DISTROS, image_name

    scenario = (ROOT / "molecule" / "default" / "molecule.yml").read_text()
    for distro in DISTROS:
        assert f"image: {image_name(distro)}\n" in scenario, distro


def test_one_version_for_the_wheel_and_the_collection() -> None:
    import tomllib
    import yaml

    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("mlops_provision", "mlflow")
    assert galaxy["version"] == wheel
    assert f"## {wheel} " in (ROOT / "CHANGELOG.md").read_text()
    # The collection's tarball leaves out what is not Ansible content.
    for left_out in ("cli", "tests", "molecule", "scripts", "docs", ".venv", ".cache"):
        assert left_out in galaxy["build_ignore"], left_out
