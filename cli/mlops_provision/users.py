"""MLflow users through the basic-auth app's REST API (/api/2.0/mlflow/users/*), as the admin."""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any

from mlops_provision.errors import ProvisionError, UnreachableError
from mlops_provision.health import Client, Unreachable

PASSWORD_ALPHABET = string.ascii_letters + string.digits


class UserError(ProvisionError):
    """The server refused or failed a user operation (exit 1)."""


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
    try:
        status, payload = client.request(method, "/api/2.0/mlflow/users/" + endpoint, body=body, query=query)
    except Unreachable as exc:
        raise UnreachableError(f"cannot reach the server: {exc}") from None
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
    if status != 200:
        text = str(error.get("message", "")) if error else payload.decode(errors="replace")
        raise UserError(f"{method} users/{endpoint}: HTTP {status}: {text[:300]}")
    return dict(json.loads(payload or b"{}"))


def list_users(client: Client) -> list[dict[str, Any]]:
    return list(_call(client, "GET", "list").get("users", []))


def add(client: Client, username: str, password: str) -> None:
    _call(client, "POST", "create", {"username": username, "password": password})


def make_admin(client: Client, username: str) -> None:
    _call(client, "PATCH", "update-admin", {"username": username, "is_admin": True}, username=username)


def set_password(client: Client, username: str, password: str, current_password: str = "") -> None:
    body = {"username": username, "password": password}
    if current_password:  # MLflow asks for it when a user changes their own password
        body["current_password"] = current_password
    _call(client, "PATCH", "update-password", body, username=username)


def remove(client: Client, username: str) -> None:
    _call(client, "DELETE", "delete", {"username": username}, username=username)
