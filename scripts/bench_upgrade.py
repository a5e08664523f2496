#!/usr/bin/env python3
"""Benchmark an MLflow upgrade, a backup and a restore on a sandbox VM; prints numbers, it is not a test.

Each run starts a sandbox, deploys MLflow 3.14.0 and fills it through the real client (not
timed): --runs-per-seed runs of --metrics metric rows each in all (log_batch, 1,000 per call),
and --artifact-mb MB of artifacts (random, incompressible, 50 MB files, through the server).
Then, on that data:

  failed-upgrade  `deploy --mlflow-version 3.17.2` with a setting only the new server rejects at
                  start: the migration runs, the start fails, the backup is restored and 3.14.0
                  starts again. Seconds of /health not answering 200 (polled every 50 ms from
                  here) and the deploy's duration.
  upgrade         the real upgrade: stop, backup, migrate, start, verify. Outage and duration.
  backup          `backup --host` to this machine while the server serves: duration, archive
                  size, and throughput (database + artifact bytes per second).
  restore         `restore --from ARCHIVE --force` onto the same host: outage and duration.

Medians over --runs are printed last; the sandbox upgrade-bench-<id> is removed after each run.
  python scripts/bench_upgrade.py [--runs 3] [--metrics 100000] [--artifact-mb 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

from benchlib import VENV_BIN, admin_password, cli, outage_during, print_medians, private_state_env, sandbox

ENV = private_state_env()

OLD, NEW = "3.14.0", "3.17.2"
BROKEN = json.dumps({"mlflow_extra_env": {"MLFLOW_WORKERS": "many"},
                     "mlflow_health_retries": 7, "mlflow_health_delay": 2})

SEED = """
import sys, time, mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient()
exp = client.create_experiment("bench-upgrade")
total, runs = int(sys.argv[2]), int(sys.argv[3])
now = int(time.time() * 1000)
for r in range(runs):
    run = client.create_run(exp)
    for start in range(0, total // runs, 1000):
        client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (s + 1), now, s)
                                                    for s in range(start, min(start + 1000, total // runs))])
    client.set_terminated(run.info.run_id)
import os, tempfile
with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp):
    for n in range(int(sys.argv[4]) // 50):
        path = os.path.join(tmp, f"blob-{n}.bin")
        with open(path, "wb") as out:
            out.write(os.urandom(50 * 1024 * 1024))
        mlflow.log_artifact(path)
        os.unlink(path)
"""


def one_run(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    name = f"upgrade-bench-{uuid.uuid4().hex[:6]}"
    with sandbox(name, env=ENV) as url:
        proc = cli("deploy", "--host", name, "--mlflow-version", OLD, env=ENV)
        assert proc.returncode == 0, proc.stdout[-2000:]
        login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin_password(name, ENV)}
        subprocess.run([str(VENV_BIN / "python"), "-c", SEED, url, str(args.metrics), str(args.runs_per_seed),
                        str(args.artifact_mb)], env={**ENV, **login}, check=True, capture_output=True, timeout=3600)
        down, took, rc = outage_during(url, ["deploy", "--host", name, "--mlflow-version", NEW, "-e", BROKEN], ENV)
        assert rc == 1, f"the failed upgrade exited {rc}"
        results["failed_upgrade_outage_s"].append(down)
        results["failed_upgrade_deploy_s"].append(took)
        down2, took2, rc = outage_during(url, ["deploy", "--host", name, "--mlflow-version", NEW], ENV)
        assert rc == 0, f"the upgrade exited {rc}"
        results["upgrade_outage_s"].append(down2)
        results["upgrade_deploy_s"].append(took2)
        print(f"failed upgrade: outage {down:.1f} s (deploy {took:.1f} s); upgrade: outage {down2:.1f} s "
              f"(deploy {took2:.1f} s); {args.metrics} metric rows", flush=True)
        with tempfile.TemporaryDirectory() as out:
            down3, took3, rc = outage_during(url, ["backup", "--host", name, "--output", out], ENV)
            assert rc == 0, f"the backup exited {rc}"
            archive = next(Path(out).glob("*.tar.gz"))
            with tarfile.open(archive) as tar:
                manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            data = sum(part["size"] for part in manifest["files"].values())
            results["backup_s"].append(took3)
            results["backup_mb_per_s"].append(data / 1e6 / took3)
            archive_mb = archive.stat().st_size / 1e6
            results["archive_mb"].append(archive_mb)
            down4, took4, rc = outage_during(url, ["restore", "--host", name, "--from", str(archive), "--force"], ENV)
            assert rc == 0, f"the restore exited {rc}"
            results["restore_outage_s"].append(down4)
            results["restore_s"].append(took4)
            results["restore_mb_per_s"].append(data / 1e6 / took4)
        print(f"backup: {took3:.1f} s for {data / 1e6:.0f} MB ({data / 1e6 / took3:.1f} MB/s; archive "
              f"{archive_mb:.0f} MB; /health down {down3:.1f} s); restore --force: {took4:.1f} s, "
              f"outage {down4:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--runs-per-seed", type=int, default=20)
    parser.add_argument("--artifact-mb", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"failed_upgrade_outage_s": [], "failed_upgrade_deploy_s": [],
                                       "upgrade_outage_s": [], "upgrade_deploy_s": [], "backup_s": [],
                                       "backup_mb_per_s": [], "archive_mb": [], "restore_outage_s": [],
                                       "restore_s": [], "restore_mb_per_s": []}
    for _ in range(args.runs):
        one_run(args, results)
    print_medians(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
