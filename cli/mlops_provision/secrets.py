"""Generated secrets on the control node (e.g. the PostgreSQL password of each database host).

The roles create and reuse them through Ansible's `password` lookup: one file per secret in
`mlflow_secrets_dir`. Without a vault password that directory is the store itself
(state_dir/secrets, mode 0700, files 0600). With one, the store is `secrets.vault`, an
ansible-vault encrypted YAML mapping of file name to content: it is unpacked into a private
temporary directory for the run and packed back afterwards, so no secret rests unencrypted.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mlops_provision import paths
from mlops_provision.errors import UsageError


def read_vault_password(password_file: str | None, ask: bool) -> bytes | None:
    if password_file and ask:
        raise UsageError("--vault-password-file and --ask-vault-pass: give one of them")
    if ask:
        return getpass.getpass("Vault password: ").encode()
    if not password_file:
        return None
    try:
        secret = Path(password_file).read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"--vault-password-file {password_file}: {exc.strerror}") from None
    if not secret:
        raise UsageError(f"--vault-password-file {password_file}: the file is empty")
    return secret


class SecretStore:
    def __init__(self, vault_password: bytes | None = None) -> None:
        self.vault_password = vault_password
        self.plain_dir = paths.state_dir() / "secrets"
        self.vault_file = paths.state_dir() / "secrets.vault"

    def _vault(self) -> Any:
        from ansible.constants import DEFAULT_VAULT_ID_MATCH
        from ansible.parsing.vault import VaultLib, VaultSecret

        assert self.vault_password is not None
        return VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(self.vault_password))])

    def _load_vault(self) -> dict[str, str]:
        if not self.vault_file.exists():
            return {}
        from ansible.errors import AnsibleError

        try:
            plain = self._vault().decrypt(self.vault_file.read_bytes())
        except AnsibleError:
            raise UsageError(f"--vault-password-file/--ask-vault-pass: the password does not open "
                             f"{self.vault_file}") from None
        return dict(yaml.safe_load(plain) or {})

    def _save_vault(self, entries: dict[str, str]) -> None:
        blob = self._vault().encrypt(yaml.safe_dump(entries).encode())
        partial = self.vault_file.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(partial, self.vault_file)

    @staticmethod
    def _read_dir(directory: Path) -> dict[str, str]:
        if not directory.is_dir():
            return {}
        return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}

    @contextmanager
    def session(self) -> Iterator[Path]:
        """The directory to hand to the roles as mlflow_secrets_dir for one run."""
        if self.vault_password is None:
            if self.vault_file.exists():
                raise UsageError(f"the secrets at {self.vault_file} are vault-encrypted: pass "
                                 "--vault-password-file FILE or --ask-vault-pass")
            self.plain_dir.mkdir(mode=0o700, exist_ok=True)
            yield self.plain_dir
            return
        entries = self._load_vault()
        migrated = self._read_dir(self.plain_dir)
        entries.update({k: v for k, v in migrated.items() if k not in entries})
        with tempfile.TemporaryDirectory(prefix="mlops-secrets-") as tmp:
            work = Path(tmp)
            for name, content in entries.items():
                fd = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(content)
            try:
                yield work
            finally:
                after = self._read_dir(work)
                if after != entries or migrated or not self.vault_file.exists():
                    self._save_vault(after)
                for name in migrated:  # now kept encrypted only
                    (self.plain_dir / name).unlink(missing_ok=True)

    @property
    def vaulted(self) -> bool:
        return self.vault_file.exists()

    def remove(self, names: Iterable[str]) -> list[str]:
        """Delete these entries wherever they are kept; returns the ones that existed. Entries in
        the vault stay unless the vault password was given."""
        wanted = set(names)
        removed = set()
        for name in wanted:
            path = self.plain_dir / name
            if path.is_file():
                path.unlink()
                removed.add(name)
        if self.vault_file.exists() and self.vault_password is not None:
            entries = self._load_vault()
            found = wanted & set(entries)
            if found:
                self._save_vault({k: v for k, v in entries.items() if k not in found})
                removed |= found
        return sorted(removed)

    def values(self) -> list[str]:
        """Every stored secret value (for redaction); the password lookup stores 'value[ salt=..]'."""
        if self.vault_password is not None:
            contents = list(self._load_vault().values())
        else:
            contents = list(self._read_dir(self.plain_dir).values())
        return [c.split(" salt=")[0].strip() for c in contents if c.strip()]


@contextmanager
def throwaway_copy(directory: Path) -> Iterator[Path]:
    """A private copy of a secrets directory, deleted afterwards: for --check, whose password
    lookups would otherwise store passwords for a deploy that never happened."""
    with tempfile.TemporaryDirectory(prefix="mlops-secrets-check-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        if directory.is_dir():
            for src in sorted(directory.iterdir()):
                if src.is_file():
                    fd = os.open(work / src.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(src.read_bytes())
        yield work
