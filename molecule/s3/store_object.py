"""Find one object in the scenario's S3 bucket from the control node, with the store's own
client (boto3), for verify.yml. The state file of tests/store_daemon.py arrives on stdin (it
holds the keys, which never go into argv); the bucket and the object key are the arguments.
Prints one JSON object: `listed`, the keys under the object's folder, and `content`, the
object's text (null when it is not there).
"""

from __future__ import annotations

import json
import posixpath
import sys

import boto3


def main() -> int:
    state = json.load(sys.stdin)
    bucket, key = sys.argv[1], sys.argv[2]
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{state['port']}", region_name="us-east-1",
                          aws_access_key_id=state["access_key"], aws_secret_access_key=state["secret_key"])
    found = client.list_objects_v2(Bucket=bucket, Prefix=posixpath.dirname(key) + "/").get("Contents", [])
    listed = sorted(item["Key"] for item in found)
    content = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode() if key in listed else None
    json.dump({"listed": listed, "content": content}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
