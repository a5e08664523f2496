"""The key each host signs its backup archives with, derived from the control node's backup
signing key (a secret of the control node's store, vault-able, shareable by a team).

A host holds only its own key: a host that is taken over can sign archives that name it, never
ones that name another host. files/backup_archive.py verifies with the same derivation; a unit
test holds the two equal.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

KEY_CONTEXT = b"mlops-provision backup signing v1\0"


def archive_host_key(signing_key: str, host: str) -> bytes:
    return hmac.new(str(signing_key).strip().encode(), KEY_CONTEXT + str(host).encode(), hashlib.sha256).digest()


def mlflow_archive_host_key(signing_key: str, host: str) -> str:
    """The host's key as the hex text of /etc/mlflow/backup-signing.key."""
    return archive_host_key(signing_key, host).hex()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"mlflow_archive_host_key": mlflow_archive_host_key}
