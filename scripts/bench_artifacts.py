"""Benchmark: a 50 MB artifact through the proxied MLflow server vs straight to the store.

For each store (local disk, S3 on SeaweedFS, Azure Blob on Azurite; the servers run on this
machine's loopback, the sandbox reaches them over slirp4netns), deploy once, then time N
round trips (upload with mlflow.log_artifact + download with download_artifacts) through the
server, and N round trips of the same bytes straight to the store with boto3 /
azure-storage-blob. Prints medians and the proxy's overhead as a ratio. Not a test.

    python scripts/bench_artifacts.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchlib import REPO, cli, run, sandbox

sys.path.insert(0, str(REPO))

from tests.servers import HOST_FROM_SANDBOX, Azurite, SeaweedS3

SIZE = 50 * 1024 * 1024
NAME = "bench-artifacts"

CLIENT = """
import json, os, sys, tempfile, time, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(sys.argv[2])
blob = os.urandom(int(sys.argv[3]))
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "blob.bin")
    open(path, "wb").write(blob)
    start = time.perf_counter()
    with mlflow.start_run() as run:
        mlflow.log_artifact(path)
    up = time.perf_counter() - start
    start = time.perf_counter()
    MlflowClient().download_artifacts(run.info.run_id, "blob.bin", d)
    print(json.dumps({"up": up, "down": time.perf_counter() - start}))
"""


def through_server(url: str, experiment: str) -> float:
    out = run([sys.executable, "-c", CLIENT, url, experiment, str(SIZE)], check=True,
              env={**os.environ, "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}).stdout
    times = json.loads(out.strip().splitlines()[-1])
    return float(times["up"] + times["down"])


def straight_to_s3(s3: SeaweedS3) -> float:
    client, blob = s3.client(), os.urandom(SIZE)
    start = time.perf_counter()
    client.put_object(Bucket="bench", Key="direct/blob.bin", Body=blob)
    client.get_object(Bucket="bench", Key="direct/blob.bin")["Body"].read()
    return time.perf_counter() - start


def straight_to_azure(azurite: Azurite) -> float:
    blob_client = azurite.service().get_blob_client("bench", "direct/blob.bin")
    blob = os.urandom(SIZE)
    start = time.perf_counter()
    blob_client.upload_blob(blob, overwrite=True)
    blob_client.download_blob().readall()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    s3, azurite = SeaweedS3().start(), Azurite().start()
    s3.bucket("bench")
    azurite.container("bench")
    results: dict[str, dict[str, float]] = {}
    stores = [
        ("local", [], {}, None),
        ("s3", ["--artifacts-destination", "s3://bench/proxied", "--s3-endpoint-url",
                f"http://{HOST_FROM_SANDBOX}:{s3.port}", "--force"],
         {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
          "AWS_DEFAULT_REGION": "us-east-1"}, lambda: straight_to_s3(s3)),
        ("azure", ["--artifacts-destination", "wasbs://bench@devstoreaccount1.blob.core.windows.net/proxied",
                   "--force"], {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(HOST_FROM_SANDBOX)},
         lambda: straight_to_azure(azurite)),
    ]
    try:
        with sandbox(NAME, "--host-loopback") as url:
            for store, flags, env, direct in stores:
                cli("deploy", "--host", NAME, *flags, env={**os.environ, **env}, check=True)
                proxied = [through_server(url, f"bench-{store}") for _ in range(args.runs)]
                row = {"proxied_s": statistics.median(proxied)}
                if direct is not None:
                    row["direct_s"] = statistics.median(direct() for _ in range(args.runs))
                    row["ratio"] = row["proxied_s"] / row["direct_s"]
                results[store] = row
    finally:
        s3.stop()
        azurite.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"50 MB artifact, upload + download, median of {args.runs}")
        print(f"{'store':<7} {'via server':>11} {'straight':>9} {'ratio':>6}")
        for store, row in results.items():
            direct = f"{row['direct_s']:.2f} s" if "direct_s" in row else "-"
            ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
            print(f"{store:<7} {row['proxied_s']:>9.2f} s {direct:>9} {ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
