"""The classic manual runbook on a sandbox, shared by tests/e2e/test_backup.py (adopting a server
installed by hand) and scripts/bench_auth.py (plain `mlflow server` with MLflow's defaults);
scripts/bench.py reads the pinned release here too. Imported as `hand_install` and as
`scripts.hand_install`, so it imports nothing from beside it (not scripts/benchlib.py either).

As a login user `op`: a venv and `mlflow server` on SQLite, started from the home directory.
The wheels come from this machine's wheelhouse for the pinned release (tests and benchmarks send
no traffic beyond loopback and their own networks); systemd-run stands in for nohup so that the
server outlives the exec session, as unit `hand-mlflow` (not mlflow.service).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """\
set -eu
id op >/dev/null 2>&1 || useradd --create-home op
mkdir -p /tmp/wh && tar -xf /tmp/wh.tar -C /tmp/wh
cd /tmp/wh && python3 -m zipfile -e uv-*.whl uvw && install -m 0755 uvw/uv-*.data/scripts/uv /tmp/wh/uv
runuser -u op -- python3 -m venv --without-pip /home/op/venv
runuser -u op -- /tmp/wh/uv pip install --quiet --no-index --no-cache --find-links /tmp/wh \\
  --python /home/op/venv/bin/python mlflow=={version}
systemd-run --unit hand-mlflow --uid op --working-directory /home/op --setenv MLFLOW_DISABLE_TELEMETRY=true \\
  /home/op/venv/bin/mlflow server --backend-store-uri sqlite:///mlflow.db {server_args} --host 0.0.0.0 --port 5000
"""


def pinned_version(roles: Path = REPO / "roles") -> str:
    """The MLflow release the mlflow_server role in roles deploys by default."""
    defaults = yaml.safe_load((roles / "mlflow_server/defaults/main.yml").read_text())
    return str(defaults["mlflow_version"])


def install_and_start(container: str, cache_dir: Path, server_args: str = "") -> None:
    """Install the pinned MLflow by hand in the sandbox container and start it on port 5000;
    returns once /health answers there. Needs a wheelhouse for it in cache_dir (a deploy of the
    pinned release builds one)."""
    version = pinned_version()
    tars = sorted((cache_dir / "wheelhouse").glob(f"mlflow-{version}-*-cp311-x86_64-*.tar"))
    if not tars:
        raise RuntimeError(f"no wheelhouse for MLflow {version} in {cache_dir}: deploy the pinned release once first")
    subprocess.run(["podman", "cp", str(tars[0]), f"{container}:/tmp/wh.tar"], check=True)
    subprocess.run(["podman", "exec", container, "sh", "-c", SCRIPT.format(version=version, server_args=server_args)],
                   check=True, capture_output=True, text=True, timeout=600)
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:5000/health').read().decode())"
    for _ in range(120):
        done = subprocess.run(["podman", "exec", container, "python3", "-c", probe], capture_output=True, text=True)
        if done.stdout.strip() == "OK":
            return
        time.sleep(1)
    raise RuntimeError("the hand-installed MLflow did not answer /health within 120 s")
