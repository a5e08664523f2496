"""Where each deployed host answers and how to log in: written after a deploy, read by
`health` and `user`. The record holds no secret; the admin password stays in the secrets
store, named by the host's auth realm (its user database).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlops_provision import paths


@dataclass
class Endpoint:
    url: str
    auth_user: str = ""  # empty: --auth none
    auth_realm: str = ""
    ca_file: str = ""  # a self-signed certificate fetched from the host
    auth_cache_ttl: int = 0  # the login cache: how long other workers may accept an old password

    def password(self, secrets_dir: Path) -> str | None:
        """The admin password the role generated (Ansible's password lookup file), if any."""
        if not self.auth_user:
            return None
        path = secrets_dir / f"mlflow-admin-{self.auth_realm}.password"
        if not path.is_file():
            return None
        return path.read_text().split(" salt=")[0].strip() or None

    def set_password(self, secrets_dir: Path, password: str) -> None:
        """Replaces the kept password whole (a new file renamed over it): never half written."""
        path = secrets_dir / f"mlflow-admin-{self.auth_realm}.password"
        partial = path.with_name(path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)


def _file() -> Path:
    return paths.state_dir() / "endpoints.json"


def load_all() -> dict[str, Endpoint]:
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    return {host: Endpoint(**entry) for host, entry in data.items() if isinstance(entry, dict)}


def lookup(host: str) -> Endpoint | None:
    return load_all().get(host)


def record(host: str, url: str, deployment: dict[str, Any], ca_file: str = "") -> Endpoint:
    endpoint = Endpoint(url=url, auth_user=str(deployment.get("auth_user") or ""),
                        auth_realm=str(deployment.get("auth_realm") or ""), ca_file=ca_file,
                        auth_cache_ttl=int(deployment.get("auth_cache_ttl") or 0))
    entries = {name: asdict(e) for name, e in load_all().items()}
    entries[host] = asdict(endpoint)
    partial = _file().with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(entries, fh, indent=2, sort_keys=True)
    os.replace(partial, _file())
    return endpoint
