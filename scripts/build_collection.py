#!/usr/bin/env python3
"""Build the Ansible collection mlops_provision.mlflow from this checkout.

    python scripts/build_collection.py --output-path DIR     # DIR/mlops_provision-mlflow-<version>.tar.gz

The collection holds the same roles, playbooks and templates as the wheel. One difference is
made here, in a staging copy (.cache/collection-src): a role inside a collection cannot carry
plugins of its own, and ansible-core resolves a filter of a collection only by its full name. So
the roles' filter plugins (roles/*/filter_plugins/*.py) become the collection's plugins/filter/,
and every use of one of their filters in the roles, playbooks and templates is written with its
full name (`| mlflow_realms` -> `| mlops_provision.mlflow.mlflow_realms`). The checkout keeps the
short names, which the roles' own filter_plugins serve when they run from a roles path (the CLI,
Molecule, `ansible-playbook playbooks/deploy.yml`). tests/e2e/test_what_ships.py deploys with the
result.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("galaxy.yml", "README.md", "CHANGELOG.md", "meta", "roles", "playbooks", "templates", "prometheus")


def filter_names(plugin_files: list[Path]) -> list[str]:
    names: list[str] = []
    for path in plugin_files:
        spec = importlib.util.spec_from_file_location(f"_collection_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names += list(module.FilterModule().filters())
    return sorted(set(names), key=len, reverse=True)


def qualify(text: str, names: list[str], prefix: str) -> str:
    """Every `| NAME` of these filters as `| PREFIX.NAME`."""
    pattern = re.compile(r"(\|\s*)(" + "|".join(map(re.escape, names)) + r")\b")
    return pattern.sub(lambda m: m.group(1) + prefix + m.group(2), text)


def stage(staging: Path) -> tuple[Path, int]:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    prefix = f"{galaxy['namespace']}.{galaxy['name']}."
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, staging / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, staging / name)
    plugins = sorted((ROOT / "roles").glob("*/filter_plugins/*.py"))
    (staging / "plugins" / "filter").mkdir(parents=True)
    for plugin in plugins:
        shutil.copy2(plugin, staging / "plugins" / "filter" / plugin.name)
    names = filter_names(plugins)
    rewritten = 0
    for path in [*staging.glob("roles/**/*.yml"), *staging.glob("roles/**/*.j2"), *staging.glob("playbooks/**/*.yml"),
                 *staging.glob("templates/*.j2")]:
        text = path.read_text()
        new = qualify(text, names, prefix)
        if new != text:
            path.write_text(new)
            rewritten += 1
    short = re.compile(r"\|\s*(" + "|".join(map(re.escape, names)) + r")\b")
    left = [str(p) for p in staging.rglob("*") if p.suffix in (".yml", ".j2") and short.search(p.read_text())]
    if left:
        raise SystemExit(f"short filter names left in {left}")
    return staging, rewritten


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-path", required=True)
    parser.add_argument("--staging", default=str(ROOT / ".cache" / "collection-src"))
    args = parser.parse_args()
    staging, rewritten = stage(Path(args.staging))
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy if galaxy.exists() else "ansible-galaxy"), "collection", "build", "--force",
                    "--output-path", args.output_path, str(staging)], check=True)
    print(f"build_collection: {rewritten} files use the filters by their full names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
