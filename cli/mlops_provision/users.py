"""MLflow users through the basic-auth app's REST API (/api/2.0/mlflow/users/*), as the admin."""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any

from mlops_provision.errors import EXIT_USAGE, ProvisionError, UnreachableError, UsageError
from mlops_provision.health import Access, Client, Unreachable

PASSWORD_ALPHABET = string.ascii_letters + string.digits
# What `user add/passwd/remove` accept as a user name (docs/configuration.md): MLflow stores any
# string, but a name is typed in shells, URLs and log lines.
USERNAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
USERNAME_RULE = "1-64 characters of letters, digits and . _ @ + -"
# A password hash as werkzeug writes it (MLflow's user table): scrypt:N:r:p$salt$hex, pbkdf2:...
_HASH = re.compile(r"\b(?:scrypt|pbkdf2)[:$][^\s'\"(),\]]*")


class UserError(ProvisionError):
    """The server refused or failed a user operation (exit 1)."""


class UserExists(UserError):
    """The name is taken: nothing was changed (exit 2)."""

    exit_code = EXIT_USAGE


def check_username(username: str) -> None:
    """Bad input (exit 2) before anything is asked: the argument, what is valid, and never the
    whole of a long name."""
    if USERNAME.fullmatch(username):
        return
    if not username:
        raise UsageError(f"USERNAME: empty; use {USERNAME_RULE}")
    if len(username) > 64:
        raise UsageError(f"USERNAME: {len(username)} characters ({username[:20]!r}...); use {USERNAME_RULE}")
    raise UsageError(f"USERNAME {username!r}: use {USERNAME_RULE}")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Error text fit to show: no password hash (MLflow's SQL errors quote the row) and none of
    the passwords given."""
    text = _HASH.sub("[password hash]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[password]")
    return text


def generate_password(length: int = 32) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def _mlflow_error(payload: bytes) -> dict[str, Any] | None:
    """MLflow's JSON error body ({"error_code": ..., "message": ...}), if that is what came back."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "error_code" in data else None


def _call(client: Client, method: str, endpoint: str, body: dict[str, Any] | None = None,
          query: dict[str, str] | None = None, username: str = "") -> dict[str, Any]:
    secrets = (str((body or {}).get("password", "")), str((body or {}).get("current_password", "")),
               client.access.password)
    try:
        status, payload = client.request(method, "/api/2.0/mlflow/users/" + endpoint, body=body, query=query)
    except Unreachable as exc:
        raise UnreachableError(f"cannot reach the server: {scrub(str(exc), secrets)}") from None
    if status == 401:
        raise UserError(f"{client.url}: the admin credentials were refused (HTTP 401)")
    error = _mlflow_error(payload)
    if status == 404:
        # The user API answers a missing user with MLflow's own error; a server without the
        # auth app has no such route, and its 404 is not an MLflow error body.
        if error is None:
            raise UserError(f"{client.url}: no user API (HTTP 404); was it deployed with --auth none?")
        message = str(error.get("message", ""))
        # the name as a whole word (a sentence's full stop may follow it)
        names_user = re.search(rf"(?<![\w.@-]){re.escape(username)}(?![\w@-]|\.[\w@-])", message)
        if username and (error["error_code"] == "RESOURCE_DOES_NOT_EXIST" or names_user):
            raise UserError(f"user {username} does not exist on {client.url}")
    if error is not None and error["error_code"] == "RESOURCE_ALREADY_EXISTS" and username:
        raise UserExists(f"user {username} already exists on {client.url}")
    if status != 200:
        # Never MLflow's text as it is: its SQL errors quote the row, with the password's hash.
        text = str(error.get("message", "")) if error else payload.decode(errors="replace")
        raise UserError(f"{method} users/{endpoint}: HTTP {status}: {scrub(text, secrets)[:300]}")
    return dict(json.loads(payload or b"{}"))


def list_users(client: Client) -> list[dict[str, Any]]:
    return list(_call(client, "GET", "list").get("users", []))


def exists(client: Client, username: str) -> bool:
    try:
        _call(client, "GET", "get", query={"username": username}, username=username)
    except UserError as exc:
        if str(exc) == f"user {username} does not exist on {client.url}":
            return False
        raise
    return True


def add(client: Client, username: str, password: str) -> None:
    _call(client, "POST", "create", {"username": username, "password": password}, username=username)


def make_admin(client: Client, username: str) -> None:
    _call(client, "PATCH", "update-admin", {"username": username, "is_admin": True}, username=username)


def set_password(client: Client, username: str, password: str, current_password: str = "") -> None:
    body = {"username": username, "password": password}
    if current_password:  # MLflow asks for it when a user changes their own password
        body["current_password"] = current_password
    _call(client, "PATCH", "update-password", body, username=username)


def logs_in(client: Client, username: str, password: str) -> bool:
    """Whether the server takes this password for this user (a call every user may make)."""
    probe = Client(client.url, client.timeout, Access(username, password, client.access.ca_file))
    try:
        status, _ = probe.request("GET", "/api/2.0/mlflow/users/get", query={"username": username})
    except (Unreachable, ValueError):
        return False
    return status == 200


def remove(client: Client, username: str) -> None:
    _call(client, "DELETE", "delete", {"username": username}, username=username)
