"""Find one blob in the scenario's Azure Blob container from the control node, with the
store's own client (azure-storage-blob), for verify.yml. The state file of
tests/store_daemon.py arrives on stdin (it holds the account key, which never goes into argv);
the container and the blob name are the arguments. Prints one JSON object: `listed`, the blob
names under the blob's folder, and `content`, the blob's text (null when it is not there).
"""

from __future__ import annotations

import json
import posixpath
import sys

from azure.storage.blob import BlobServiceClient


def main() -> int:
    state = json.load(sys.stdin)
    container, name = sys.argv[1], sys.argv[2]
    client = BlobServiceClient.from_connection_string(state["connection_string"]).get_container_client(container)
    listed = sorted(blob.name for blob in client.list_blobs(name_starts_with=posixpath.dirname(name) + "/"))
    content = client.download_blob(name).readall().decode() if name in listed else None
    json.dump({"listed": listed, "content": content}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
