"""Backup archives on the control node: check one against its manifest before it goes anywhere.

The archive format belongs to the host-side script that writes and unpacks it
(roles/mlflow_server/files/backup_archive.py); this module uses that script's own reader, so the
two cannot drift.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mlops_provision import paths
from mlops_provision.errors import UsageError


def _host_script() -> ModuleType:
    files = paths.roles_dir() / "mlflow_server" / "files"
    sys.path.insert(0, str(files))  # it imports db_schema from beside itself
    try:
        spec = importlib.util.spec_from_file_location("mlops_backup_archive", files / "backup_archive.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(files))


SIGNING_KEY = "backup-signing.key"  # in the secrets store; the role's mlflow_backup_signing_key


def signing_key(secrets_dir: Path) -> str:
    """This machine's backup signing key, made on first use (64 hex digits, as the role's
    password lookup would make it, which then reads this file)."""
    import secrets

    path = secrets_dir / SIGNING_KEY
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().split(" salt=")[0].strip()


def check(path: Path, flag: str = "--from", key: str | None = None) -> dict[str, Any]:
    """The archive's manifest, once every member matched its SHA-256 (and, with key, once its
    signature verified with this machine's signing key); bad input otherwise."""
    if not path.is_file():
        raise UsageError(f"{flag}: {path} is not a file; valid: a backup archive written by "
                         "`mlops-provision backup`")
    import tarfile

    try:
        return dict(_host_script().check(str(path), {"signing_key": key} if key else {"unverified": True}))
    except (tarfile.ReadError, EOFError):  # not gzip, or cut short
        reason = "it is not a complete .tar.gz archive"
    except (RuntimeError, tarfile.TarError, OSError, KeyError, ValueError) as exc:
        reason = str(exc)
    raise UsageError(f"{flag}: {path} fails its check: {reason}; nothing was changed")


def describe(manifest: dict[str, Any]) -> str:
    """One line: what the archive holds."""
    tracking = manifest.get("databases", {}).get("tracking", {}).get("counts", {})
    users = manifest.get("databases", {}).get("auth", {}).get("counts", {}).get("users")
    artifacts = manifest.get("artifacts", {})
    parts = [f"{tracking.get('experiments', 0)} experiments", f"{tracking.get('runs', 0)} runs",
             f"{tracking.get('registered_models', 0)} registered models"]
    if users is not None:
        parts.append(f"{users} users")
    if artifacts.get("copied"):
        parts.append(f"{artifacts.get('files', 0)} artifact files ({artifacts.get('bytes', 0) / 1e6:.1f} MB)")
    elif artifacts.get("location"):
        parts.append(f"artifacts in {artifacts['location']} (not copied)")
    return ", ".join(parts)
