"""The installed command: exit codes and messages, as an operator sees them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mlops_provision.cli import build_parser
from mlops_provision.options import OPTIONS
from tests.conftest import CLI, ROOT, load_module


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MLOPS_PROVISION_HOME": str(home / "state")}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["deploy", "--host", "vm1", "--port", "70000"], 2, "error: --port: 70000 is not a TCP port; valid: 1-65535\n"),
    (["deploy", "--host", "vm1", "--backend-store-uri", "mysql:/oops"], 2,
     "error: --backend-store-uri: 'mysql:/oops' is not supported"),
    (["deploy", "--host", "vm1", "--default-artifact-root", "ftp://x"], 2,
     "error: --default-artifact-root: 'ftp://x' is not a supported artifact location"),
    (["deploy", "--host", "ghost.invalid"], 2,
     "error: --host ghost.invalid: not a sandbox (see `mlops-provision sandbox list`), no -i inventory given, "
     "and the name does not resolve"),
    (["deploy"], 2, "error: give --host NAME (a sandbox, an inventory host or a hostname/IP) or -i INVENTORY\n"),
    (["deploy", "-i", "/nonexistent/inv.yml"], 2, "error: -i/--inventory /nonexistent/inv.yml: file not found\n"),
    (["deploy", "--host", "bad host!"], 2, "error: --host 'bad host!' is not a valid host name"),
    (["deploy", "--workers", "two"], 2, "error: --workers: expected a whole number, got 'two'\n"),
    (["destroy", "--host", "vm1"], 2, "error: destroy removes the MLflow service from the hosts: add --yes"),
    (["health"], 2, "error: give --host NAME, -i INVENTORY or --url URL\n"),
    (["health", "--url", "ftp://x"], 2, "error: --url 'ftp://x': must start with http:// or https://\n"),
    (["health", "--url", "http://127.0.0.1:9"], 3, ""),
    (["sandbox", "up", "--name", "../etc"], 2, "error: --name '../etc': use 1-31 of a-z 0-9 -"),
    (["deploy", "--frobnicate"], 2, "error: unrecognized arguments: --frobnicate\n"),
    (["restore", "--host", "vm1"], 2, "error: restore needs exactly one of --from ARCHIVE (a backup) and "
     "--from-sqlite FILE (a server installed by hand)\n"),
    (["restore", "--host", "vm1", "--from", "a.tar.gz", "--from-sqlite", "/m.db"], 2,
     "error: restore needs exactly one of --from ARCHIVE"),
    (["restore", "--host", "vm1", "--from", "a.tar.gz", "--artifacts", "/srv/mlruns"], 2,
     "error: --artifacts goes with --from-sqlite; an archive from --from holds its own artifacts\n"),
    (["restore", "--host", "vm1", "--from-sqlite", "mlflow.db"], 2,
     "error: --from-sqlite: 'mlflow.db' must be an absolute path on the host, without . or .. parts\n"),
    (["restore", "--host", "vm1", "--from-sqlite", "/home/op/mlflow.db", "--artifacts", "/home/op/../mlruns"], 2,
     "error: --artifacts: '/home/op/../mlruns' must be an absolute path on the host, without . or .. parts\n"),
    (["restore", "--host", "vm1", "--host", "vm2", "--from-sqlite", "/m.db"], 2,
     "error: --from-sqlite: name exactly one --host, the one that holds the database\n"),
    # Path flags that cannot be used: bad input naming the flag, never a traceback, nothing run.
    (["backup", "--host", "127.0.0.1", "--output", "/proc/x"], 2,
     "error: --output: cannot create /proc/x (No such file or directory); valid: a directory on this machine "
     "that you can write to (created when missing)\n"),
    (["backup", "--host", "127.0.0.1", "--output", "/etc/hostname"], 2,
     "error: --output: /etc/hostname is not a directory; valid:"),
    (["render", "--output-dir", "/proc/x"], 2, "error: --output-dir: cannot create /proc/x (No such file or "
     "directory); valid: a directory on this machine that you can write to (created when missing)\n"),
    (["deploy", "--host", "vm1", "--config", "/proc"], 2,
     "error: --config /proc: cannot read it (Is a directory); valid: a YAML file of flags\n"),
])
def test_exit_code_and_message(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    proc = run(*args, home=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr


def test_unreachable_url_reports_3_and_names_the_url(tmp_path: Path) -> None:
    proc = run("health", "--url", "http://127.0.0.1:9", "--json", home=tmp_path)
    assert proc.returncode == 3
    report = yaml.safe_load(proc.stdout)["http://127.0.0.1:9"]
    assert report["unreachable"] is True and report["healthy"] is False


def test_config_file_with_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("port: 5000\nprot: 5001\n")
    proc = run("deploy", "--host", "vm1", "--config", str(config), home=tmp_path)
    assert proc.returncode == 2
    assert f"error: --config {config}: unknown key 'prot'; valid keys:" in proc.stderr


def test_render_prints_both_files_and_writes_them(tmp_path: Path) -> None:
    proc = run("render", "--port", "5050", home=tmp_path)
    assert proc.returncode == 0
    assert "# ---- mlflow.service ----" in proc.stdout and 'MLFLOW_PORT="5050"' in proc.stdout
    out = tmp_path / "out"
    proc = run("render", "--output-dir", str(out), home=tmp_path)
    assert proc.returncode == 0
    assert (out / "mlflow.env").stat().st_mode & 0o777 == 0o600
    assert (out / "mlflow.service").read_text().startswith("# Managed by mlops-provision")


def test_every_option_is_a_flag_of_deploy_and_render() -> None:
    parser = build_parser()
    for command in ("deploy", "render"):
        ns = parser.parse_args([command])
        for opt in OPTIONS:
            assert hasattr(ns, opt.key), (command, opt.flag)


@pytest.mark.parametrize("role", ["mlflow_server", "mlflow_common", "mlflow_postgresql", "mlflow_lb"])
def test_argument_specs_mirror_defaults_key_for_key(role: str) -> None:
    path = ROOT / "roles" / role
    defaults = yaml.safe_load((path / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((path / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    # Internal (_*) variables are not options; a default computed by a lookup is left out of
    # the spec (validating it would run the lookup) and documented in docs/role-variables.md instead.
    public = [k for k, v in defaults.items() if not k.startswith("_") and "lookup(" not in str(v)]
    assert list(specs) == public
    for key in public:
        value = defaults[key]
        if isinstance(value, str) and "{{" in value:  # computed default: documented, not repeated
            assert "default" not in specs[key], key
        else:
            assert specs[key]["default"] == value, key


def test_every_option_maps_to_a_role_variable() -> None:
    defaults: dict[str, object] = {}
    for path in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        defaults.update(yaml.safe_load(path.read_text()))
    for opt in OPTIONS:
        assert opt.var in defaults, opt.var


def _gen_role_variables() -> ModuleType:
    return load_module(ROOT / "scripts/gen_role_variables.py", "gen_role_variables")


def test_role_variables_doc_is_generated_and_up_to_date() -> None:
    expected = _gen_role_variables().render()
    assert (ROOT / "docs/role-variables.md").read_text() == expected, "run: python scripts/gen_role_variables.py"


@pytest.mark.parametrize("role", sorted(p.parent.parent.name for p in ROOT.glob("roles/*/meta/argument_specs.yml")))
def test_role_variables_doc_documents_every_role_variable(role: str) -> None:
    doc = (ROOT / "docs/role-variables.md").read_text()
    specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    for entry in specs["argument_specs"].values():
        for key in entry["options"]:
            assert f"| `{key}` |" in doc, key
    # and the public variables left out of the spec (password lookups)
    defaults_file = ROOT / "roles" / role / "defaults/main.yml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.is_file() else {}
    for key in defaults:
        if not key.startswith("_"):
            assert f"| `{key}` |" in doc, key


def test_ignoring_s3_tls_warns_before_anything_runs(tmp_path: Path) -> None:
    proc = run("deploy", "--host", "ghost.invalid", "--artifacts-destination", "s3://bucket1/a",
               "--s3-ignore-tls", home=tmp_path)
    assert "WARNING: --s3-ignore-tls: the server will not verify the S3 endpoint's certificate" in proc.stderr
    assert proc.returncode == 2  # and the unknown host still stops the deploy
