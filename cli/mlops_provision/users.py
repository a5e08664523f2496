"""MLflow users through the basic-auth app's REST API (/api/2.0/mlflow/users/*), as the admin."""

from __future__ import annotations

import json
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


def _call(client: Client, method: str, endpoint: str, body: dict[str, Any] | None = None,
          query: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        status, payload = client.request(method, "/api/2.0/mlflow/users/" + endpoint, body=body, query=query)
    except Unreachable as exc:
        raise UnreachableError(f"cannot reach the server: {exc}") from None
    if status == 401:
        raise UserError(f"{client.url}: the admin credentials were refused (HTTP 401)")
    if status == 404:
        raise UserError(f"{client.url}: no user API (HTTP 404); was it deployed with --auth none?")
    if status != 200:
        text = payload.decode(errors="replace")
        try:
            text = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        raise UserError(f"{method} users/{endpoint}: HTTP {status}: {text[:300]}")
    return dict(json.loads(payload or b"{}"))


def list_users(client: Client) -> list[dict[str, Any]]:
    return list(_call(client, "GET", "list").get("users", []))


def add(client: Client, username: str, password: str) -> None:
    _call(client, "POST", "create", {"username": username, "password": password})


def make_admin(client: Client, username: str) -> None:
    _call(client, "PATCH", "update-admin", {"username": username, "is_admin": True})


def set_password(client: Client, username: str, password: str, current_password: str = "") -> None:
    body = {"username": username, "password": password}
    if current_password:  # MLflow asks for it when a user changes their own password
        body["current_password"] = current_password
    _call(client, "PATCH", "update-password", body)


def remove(client: Client, username: str) -> None:
    _call(client, "DELETE", "delete", {"username": username})
