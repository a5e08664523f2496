"""User commands against a tiny local HTTP server answering as MLflow does: a 404 for a missing
user (MLflow's JSON error) must not read as a server without the user API (a plain 404)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

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


# --- the user command as an operator runs it, against a server that keeps its users ---------------

SQL_DUPLICATE = ("User (username={name}) already exists. Error: (sqlite3.IntegrityError) UNIQUE constraint "
                 "failed: users.username\n[SQL: INSERT INTO users (username, password_hash, is_admin) VALUES "
                 "(?, ?, ?)]\n[parameters: ('{name}', 'scrypt:32768:8:1$Xq3v9Lk2$7f0c1e9a2b', 0)]")


class _Users(BaseHTTPRequestHandler):
    """MLflow's user API as far as the command uses it; the passwords in clear (a test)."""

    passwords: ClassVar[dict[str, str]] = {}
    lose_answer_to_password_change = False

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        import base64
        import urllib.parse

        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else {}
        user, _, password = base64.b64decode(self.headers.get("Authorization", "Basic ")[6:]).decode().partition(":")
        if self.passwords.get(user) != password:
            self._send(401, {"error_code": "UNAUTHENTICATED", "message": "bad credentials"})
            return
        path, _, query = self.path.partition("?")
        name = body.get("username") or urllib.parse.parse_qs(query).get("username", [""])[0]
        if path.endswith("/users/get"):
            if name in self.passwords:
                self._send(200, {"user": {"username": name}})
            else:
                self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                 "message": f"User with username={name} not found"})
        elif path.endswith("/users/create"):
            if name in self.passwords:
                self._send(400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": SQL_DUPLICATE.format(name=name)})
            else:
                self.passwords[name] = body["password"]
                self._send(200, {"user": {"username": name}})
        elif path.endswith("/users/update-password"):
            self.passwords[name] = body["password"]
            if self.lose_answer_to_password_change:
                self.connection.close()  # the change is made; its answer never arrives
                return
            self._send(200, {})
        else:
            self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path})

    do_GET = do_POST = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[type[_Users], Path]]:
    """A host vm1 deployed from this machine (its endpoint record and admin password kept here)."""
    handler = type("Users", (_Users,), {"passwords": {"admin": "old-admin-password-1", "bob": "bobs-password-12"}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state = tmp_path / "state"
    monkeypatch.setenv("MLOPS_PROVISION_HOME", str(state))
    (state / "secrets").mkdir(parents=True, mode=0o700)
    (state / "endpoints.json").write_text(json.dumps({"vm1": {
        "url": f"http://127.0.0.1:{httpd.server_address[1]}", "auth_user": "admin", "auth_realm": "vm1"}}))
    stored = state / "secrets" / "mlflow-admin-vm1.password"
    stored.write_text("old-admin-password-1\n")
    try:
        yield handler, stored
    finally:
        httpd.shutdown()
        httpd.server_close()


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
         stdin: str = "") -> tuple[int, str, str]:
    from mlops_provision.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_adding_an_existing_user_says_so_without_the_servers_error(
        deployed: tuple[type[_Users], Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler, _ = deployed
    code, out, err = _cli(capsys, monkeypatch, "user", "add", "--host", "vm1", "bob", "--password-stdin",
                          stdin="another-password-9\n")
    assert code == 2
    assert err == ("error: user add: bob already exists on vm1; to change the password use: "
                   "mlops-provision user passwd --host vm1 bob\n")
    assert handler.passwords["bob"] == "bobs-password-12"
    assert "scrypt" not in out + err and "another-password-9" not in out + err


def test_a_create_that_loses_the_race_is_the_same_clean_message(server: tuple[ThreadingHTTPServer, Client]) -> None:
    httpd, client = server
    _answer(httpd, 400, json.dumps({"error_code": "RESOURCE_ALREADY_EXISTS",
                                    "message": SQL_DUPLICATE.format(name="bob")}).encode())
    with pytest.raises(users.UserExists) as err:
        users.add(client, "bob", "a-new-password-1")
    assert err.value.exit_code == 2 and "scrypt" not in str(err.value)


def test_no_server_error_shown_holds_a_hash_or_the_password(server: tuple[ThreadingHTTPServer, Client]) -> None:
    httpd, client = server
    message = SQL_DUPLICATE.format(name="bob") + " pbkdf2:sha256:600000$salt$0a1b2c password=a-new-password-1"
    _answer(httpd, 500, json.dumps({"error_code": "INTERNAL_ERROR", "message": message}).encode())
    with pytest.raises(users.UserError) as err:
        users.set_password(client, "bob", "a-new-password-1")
    shown = str(err.value)
    assert "scrypt:" not in shown and "pbkdf2:" not in shown and "a-new-password-1" not in shown
    assert "7f0c1e9a2b" not in shown and "[password hash]" in shown and "[password]" in shown


@pytest.mark.parametrize(("name", "message"), [
    ("", "error: USERNAME: empty; use 1-64 characters of letters, digits and . _ @ + -\n"),
    ("x" * 10_000, "error: USERNAME: 10000 characters ('xxxxxxxxxxxxxxxxxxxx'...); "
                   "use 1-64 characters of letters, digits and . _ @ + -\n"),
    ("bob smith", "error: USERNAME 'bob smith': use 1-64 characters of letters, digits and . _ @ + -\n"),
])
@pytest.mark.parametrize("command", ["add", "passwd", "remove"])
def test_a_bad_user_name_is_bad_input_before_any_host_is_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        command: str, name: str, message: str) -> None:
    monkeypatch.setenv("MLOPS_PROVISION_HOME", str(tmp_path / "state"))  # nothing deployed from here
    code, out, err = _cli(capsys, monkeypatch, "user", command, "--host", "vm1", name)
    assert (code, out, err) == (2, "", message)


def test_a_plus_is_a_valid_user_name() -> None:
    users.check_username("ops+ml@example.com")


def test_passwd_of_the_admin_keeps_the_new_password_once_the_server_takes_it(
        deployed: tuple[type[_Users], Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stored = deployed
    code, out, _ = _cli(capsys, monkeypatch, "user", "passwd", "--host", "vm1", "admin", "--password-stdin",
                        stdin="new-admin-password-2\n")
    assert code == 0 and "kept in the secrets store" in out
    assert handler.passwords["admin"] == "new-admin-password-2"
    assert stored.read_text() == "new-admin-password-2\n"
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no partial file left
    # What status and the user commands log in with now works.
    code, out, _ = _cli(capsys, monkeypatch, "user", "admin-password", "--host", "vm1")
    assert out == "new-admin-password-2\n"


def test_passwd_of_the_admin_whose_answer_is_lost_still_keeps_what_the_server_took(
        deployed: tuple[type[_Users], Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stored = deployed
    handler.lose_answer_to_password_change = True
    code, _, err = _cli(capsys, monkeypatch, "user", "passwd", "--host", "vm1", "admin", "--password-stdin",
                        stdin="new-admin-password-2\n")
    assert code != 0 and "new-admin-password-2" not in err
    assert handler.passwords["admin"] == "new-admin-password-2"
    assert stored.read_text() == "new-admin-password-2\n"  # else this machine is locked out


def test_passwd_of_the_admin_that_the_server_refuses_keeps_the_old_password(
        deployed: tuple[type[_Users], Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stored = deployed
    handler.passwords["admin"] = "changed-elsewhere-3"  # this machine's password no longer opens it
    code, _, _ = _cli(capsys, monkeypatch, "user", "passwd", "--host", "vm1", "admin", "--password-stdin",
                      stdin="new-admin-password-2\n")
    assert code == 1
    assert stored.read_text() == "old-admin-password-1\n"
