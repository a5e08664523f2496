"""User commands against a tiny local HTTP server answering as MLflow does: a 404 for a missing
user (MLflow's JSON error) must not read as a server without the user API (a plain 404)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_provision import users
from mlops_provision.health import Access, Client

MISSING_USER = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                           "message": "User with username=bob not found"}).encode()
NOT_FOUND_HTML = b"<!doctype html><title>404 Not Found</title><h1>Not Found</h1>"


class _Handler(BaseHTTPRequestHandler):
    # (status, content type, body) for every request; set per test
    answer: tuple[int, str, bytes] = (200, "application/json", b"{}")

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, kind, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _reply  # http.server's names

    def log_message(self, format: str, *args: object) -> None:  # quiet tests
        pass


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, Client]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, Client(f"http://127.0.0.1:{httpd.server_address[1]}", 5, Access("admin", "secret"))
    finally:
        httpd.shutdown()
        httpd.server_close()


def _answer(httpd: ThreadingHTTPServer, status: int, body: bytes, kind: str = "application/json") -> None:
    httpd.RequestHandlerClass.answer = (status, kind, body)  # type: ignore[attr-defined]


@pytest.mark.parametrize("call", [
    lambda c: users.remove(c, "bob"),
    lambda c: users.set_password(c, "bob", "a-new-password-1"),
    lambda c: users.make_admin(c, "bob"),
])
def test_a_missing_user_is_named(server: tuple[ThreadingHTTPServer, Client], call: object) -> None:
    httpd, client = server
    _answer(httpd, 404, MISSING_USER)
    with pytest.raises(users.UserError) as err:
        call(client)  # type: ignore[operator]
    assert str(err.value) == f"user bob does not exist on {client.url}"
    assert err.value.exit_code == 1


def test_a_message_naming_the_user_is_enough(server: tuple[ThreadingHTTPServer, Client]) -> None:
    httpd, client = server
    _answer(httpd, 404, json.dumps({"error_code": "NOT_FOUND", "message": "No user bob."}).encode())
    with pytest.raises(users.UserError, match=r"^user bob does not exist on "):
        users.remove(client, "bob")
    _answer(httpd, 404, json.dumps({"error_code": "NOT_FOUND", "message": "No user bob.smith"}).encode())
    with pytest.raises(users.UserError, match=r"^DELETE users/delete: HTTP 404: No user bob.smith$"):
        users.remove(client, "bob")


@pytest.mark.parametrize(("body", "kind"), [(NOT_FOUND_HTML, "text/html"),
                                            (b'{"detail": "Not Found"}', "application/json")])
def test_a_plain_404_means_no_user_api(server: tuple[ThreadingHTTPServer, Client], body: bytes, kind: str) -> None:
    httpd, client = server
    _answer(httpd, 404, body, kind)
    with pytest.raises(users.UserError) as err:
        users.remove(client, "bob")
    assert str(err.value) == f"{client.url}: no user API (HTTP 404); was it deployed with --auth none?"


def test_another_mlflow_error_shows_its_message(server: tuple[ThreadingHTTPServer, Client]) -> None:
    httpd, client = server
    _answer(httpd, 400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                                    "message": "Username bob already exists"}).encode())
    with pytest.raises(users.UserError, match=r"^POST users/create: HTTP 400: Username bob already exists$"):
        users.add(client, "bob", "a-new-password-1")


def test_success_returns_the_body(server: tuple[ThreadingHTTPServer, Client]) -> None:
    httpd, client = server
    _answer(httpd, 200, json.dumps({"users": [{"username": "admin", "is_admin": True}]}).encode())
    assert users.list_users(client) == [{"username": "admin", "is_admin": True}]
