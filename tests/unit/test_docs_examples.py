"""Every example in README.md and docs/ that a reader would copy works as written: each command
line of a `bash` block parses with the CLI's own parser (and a deploy's flags pass its validation),
names a make target, script or file that exists; each `yaml` block is a valid inventory (every
variable a role knows, the realm check of the servers it lists passing with the roles' defaults)
or config file (loaded by the CLI's own loader). A block of output or of a layout is marked
`<!-- illustrative -->` on the line before it; an unmarked block of another kind fails here.
The scale-out inventory is deployed for real by tests/e2e/test_scale_out.py."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, load_module

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks() -> list[tuple[str, int, str, str, str]]:
    """(file, line, language, body, the line before the fence) of every fenced block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            line = text[:match.start()].count("\n") + 1
            found.append((doc.relative_to(ROOT).as_posix(), line, match.group(1), match.group(2), before))
    return found


BLOCKS = _blocks()


def _id(block: tuple[str, int, str, str, str]) -> str:
    return f"{block[0]}:{block[1]}"


def _commands(body: str) -> list[str]:
    lines = []
    for raw in body.splitlines():
        line = re.sub(r"\s+#.*$", "", raw.removeprefix("$ ")).strip()
        line = re.sub(r"\s+>\s*\S+$", "", line)  # output redirected to a file: the command is what is checked
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _role_variables() -> set[str]:
    known: set[str] = set()
    for role in (ROOT / "roles").iterdir():
        for name in ("defaults/main.yml", "meta/argument_specs.yml"):
            path = role / name
            if path.is_file():
                data = yaml.safe_load(path.read_text()) or {}
                if name.startswith("meta"):
                    data = data["argument_specs"]["main"]["options"]
                known |= set(data)
    return known


def test_every_block_is_checked_or_marked_illustrative() -> None:
    unmarked = [_id(b) for b in BLOCKS if b[2] not in ("bash", "yaml") and "<!-- illustrative -->" not in b[4]]
    assert not unmarked, f"mark these output/layout blocks <!-- illustrative --> or make them bash/yaml: {unmarked}"
    assert len([b for b in BLOCKS if b[2] in ("bash", "yaml")]) >= 10


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[2] == "bash"], ids=_id)
def test_bash_examples_run_as_written(block: tuple[str, int, str, str, str]) -> None:
    from mlops_provision import cli

    makefile = (ROOT / "Makefile").read_text()
    for line in _commands(block[3]):
        argv = shlex.split(line)
        if argv[0] == "mlops-provision":
            try:
                args = cli.build_parser().parse_args(argv[1:])
            except SystemExit as exc:  # --help exits 0 once it printed the help
                assert exc.code == 0, f"{_id(block)}: {line!r} does not parse (exit {exc.code})"
                continue
            if argv[1] == "deploy" and not args.config:
                from mlops_provision.commands._common import spec_from_args

                spec_from_args(args)  # the flags' values pass the CLI's validation (UsageError otherwise)
        elif argv[0] == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{_id(block)}: no make target {target}"
        elif argv[0] in ("python", ".venv/bin/python", "python3"):
            assert (ROOT / argv[1]).is_file(), f"{_id(block)}: {argv[1]} does not exist"
            shown = subprocess.run([sys.executable, argv[1], "--help"], capture_output=True, text=True, cwd=ROOT)
            assert shown.returncode == 0, f"{_id(block)}: {argv[1]} --help: {shown.stderr[-500:]}"
            for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
                assert re.search(rf"{re.escape(flag)}\b", shown.stdout), f"{_id(block)}: {argv[1]} has no {flag}"
        elif argv[0] == "ansible-playbook":
            playbook = argv[-1]
            assert (ROOT / playbook).is_file(), f"{_id(block)}: {playbook} does not exist"
        elif argv[0] in ("pip", "export"):
            continue
        else:
            raise AssertionError(f"{_id(block)}: {line!r}: no check for {argv[0]!r}; add one or mark the block")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[2] == "yaml"], ids=_id)
def test_yaml_examples_are_valid_inventories_or_config_files(block: tuple[str, int, str, str, str],
                                                            tmp_path: Path) -> None:
    data = yaml.safe_load(block[3])
    assert isinstance(data, dict), _id(block)
    groups = data.get("all", {}).get("children", {}) if "all" in data else data
    if "mlflow_servers" not in groups:  # a --config file
        from mlops_provision import spec

        path = tmp_path / "mlflow.yml"
        path.write_text(block[3])
        spec.load_config(str(path))
        return
    known = _role_variables() | {"ansible_user", "ansible_host", "ansible_port"}
    common = dict(data.get("all", {}).get("vars") or {})
    hostvars: dict[str, dict[str, Any]] = {}
    for group, body in groups.items():
        assert group in ("mlflow_servers", "mlflow_db", "mlflow_lb"), f"{_id(block)}: unknown group {group}"
        for host, values in ((body or {}).get("hosts") or {}).items():
            hostvars[host] = {**common, **((body or {}).get("vars") or {}), **(values or {})}
    unknown = sorted({name for values in hostvars.values() for name in values} - known)
    assert not unknown, f"{_id(block)}: no role knows {unknown}"
    derive = load_module(ROOT / "roles/mlflow_server/filter_plugins/mlflow_derive.py", "derive_docs")
    defaults: dict[str, Any] = {}
    for role in ("mlflow_common", "mlflow_server"):
        defaults.update(yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()))
    servers = list((groups["mlflow_servers"] or {}).get("hosts") or {})
    db_hosts = list((groups.get("mlflow_db") or {}).get("hosts") or {})
    found = derive.realms(servers, hostvars, db_hosts, defaults)
    assert derive.realm_problems(found) == [], _id(block)
