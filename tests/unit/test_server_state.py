"""What server_state.py (roles/mlflow_server/files) reads about a hand-started `mlflow server` on
the port: its stores, from the variables its CLI hands to its workers, resolved against its
working directory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_module

state = load_module(ROOT / "roles/mlflow_server/files/server_state.py", "server_state")


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:///mlflow.db", "sqlite:////home/op/mlflow.db"),
    ("sqlite:////srv/m.db", "sqlite:////srv/m.db"),
    ("./mlruns", "/home/op/mlruns"),
    ("file:///data/mlruns", "/data/mlruns"),
    ("mlflow-artifacts:/", "mlflow-artifacts:/"),
    ("s3://bucket/x", "s3://bucket/x"),
    ("postgresql://u:pw@db/mlflow", "postgresql://u:pw@db/mlflow"),
])
def test_a_store_is_resolved_as_the_server_resolved_it(uri: str, expected: str) -> None:
    assert state._absolute(uri, "/home/op") == expected


@pytest.fixture
def hand_started(tmp_path: Path) -> Iterator[int]:
    """A parent (the `mlflow server` CLI) whose child has the workers' variables."""
    proc = subprocess.Popen(
        ["sh", "-c", "env _MLFLOW_SERVER_FILE_STORE=sqlite:///mlflow.db _MLFLOW_SERVER_ARTIFACT_ROOT=./mlruns "
                     "sleep 30 & wait"], cwd=tmp_path)
    time.sleep(0.3)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_the_stores_of_a_hand_started_server_come_from_its_workers(hand_started: int, tmp_path: Path) -> None:
    assert state.mlflow_stores(hand_started) == {
        "backend": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": f"{tmp_path}/mlruns",
        "sqlite": f"{tmp_path}/mlflow.db", "local_artifacts": f"{tmp_path}/mlruns"}


def test_served_artifacts_live_in_the_destination(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"], cwd=tmp_path, env={
        "_MLFLOW_SERVER_FILE_STORE": "postgresql://mlflow:s3cret@db/mlflow",
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/"})
    try:
        time.sleep(0.2)
        assert state.mlflow_stores(proc.pid) == {
            "backend": "postgresql://mlflow:***@db/mlflow", "artifacts": f"{tmp_path}/mlartifacts",
            "sqlite": "", "local_artifacts": f"{tmp_path}/mlartifacts"}
    finally:
        proc.kill()
        proc.wait()


def test_layout_names_kind_mode_owner_and_content_of_what_exists(tmp_path: Path) -> None:
    content = b"print('hi')\n"
    script = tmp_path / "tool.py"
    script.write_bytes(content)
    script.chmod(0o644)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir").chmod(0o750)
    (tmp_path / "link").symlink_to(script)
    found = state.layout([str(tmp_path / "dir"), str(script), str(tmp_path / "missing"), str(tmp_path / "link")])
    owner = f"{state._user(script.stat().st_uid)} {state._group(script.stat().st_gid)}"
    digest = hashlib.sha1(content).hexdigest()  # what install.yml computes from the role's copy
    assert found == {
        str(tmp_path / "dir"): f"dir 750 {owner}",
        str(script): f"{digest} 644 {owner}",
        str(tmp_path / "link"): f"other 777 {owner}",  # a symlink is not followed: copy replaces it
    }
    script.write_bytes(b"print('changed')\n")
    assert state.layout([str(script)])[str(script)].split()[0] != digest


def test_layout_names_the_users_group_home_and_shell_and_whether_the_group_exists() -> None:
    import grp
    import os
    import pwd

    me = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(me.pw_gid).gr_name
    found = state.layout([], me.pw_name, group)
    assert found == {f"user {me.pw_name}": f"{group} {me.pw_dir} {me.pw_shell}", f"group {group}": str(me.pw_gid)}
    assert state.layout([], "no-such-user-here", "no-such-group-here") == {}


@pytest.fixture
def started_through_a_shell(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """`sh -c "mlflow server --port N; ..."` as a hand install starts it: a shell, the `mlflow`
    CLI (a script of that name, which listens), and its worker with the stores' variables."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = tmp_path / "mlflow"
    cli.write_text(
        "#!/usr/bin/python3\n"
        "import os, socket, subprocess, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[3]))); s.listen()\n"
        "env = dict(os.environ, _MLFLOW_SERVER_FILE_STORE='sqlite:///mlflow.db',"
        " _MLFLOW_SERVER_ARTIFACT_ROOT='./mlruns')\n"
        "subprocess.Popen(['sleep', '30'], env=env)\n"
        "time.sleep(30)\n")
    cli.chmod(0o755)
    shell = subprocess.Popen(["sh", "-c", f"{cli} server --port {port}; echo stopped"], cwd=tmp_path)
    time.sleep(0.6)
    yield shell.pid, port
    for child in state._descendants(shell.pid):
        subprocess.run(["kill", str(child)], check=False)
    shell.kill()
    shell.wait()


def test_a_server_started_through_a_shell_is_named_as_itself_with_its_stores(
        started_through_a_shell: tuple[int, int], tmp_path: Path) -> None:
    import os

    shell, port = started_through_a_shell
    server = state._guess_pid(os.getuid(), port)
    assert server != shell and state._comm(server) == "mlflow"
    assert state._past_wrappers(shell) == server
    # The adoption hint needs the database's path: found from the shell too (its grandchild).
    assert state.mlflow_stores(shell)["sqlite"] == f"{tmp_path}/mlflow.db"
    assert state.mlflow_stores(server)["local_artifacts"] == f"{tmp_path}/mlruns"


def test_the_verify_answers_read_version_as_the_admin_of_the_auth_file_and_probe_anonymously(tmp_path: Path) -> None:
    """verify.yml's one wait run reads /health, /version with the admin password the deploy
    rendered into basic_auth.ini (its % doubled for configparser), and an anonymous call."""
    import base64
    import http.server
    import threading

    password = "p%ss:w0rd"
    good = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                status, body = 200, b"OK"
            elif self.headers.get("Authorization") == good:
                status, body = 200, b"3.17.2\n"
            else:
                status, body = 401, b"login"
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ini = tmp_path / "basic_auth.ini"
    ini.write_text(f"[mlflow]\nadmin_username = admin\nadmin_password = {password.replace('%', '%%')}\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        probe = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        answers = state._answers(port, str(ini), probe)
        assert answers == {"health_status": 200, "health": "OK", "version_status": 200, "version_answer": "3.17.2",
                           "anonymous_status": 401}
        assert password not in json.dumps(answers)
        ini.write_text("[mlflow]\nadmin_username = admin\nadmin_password = changed-since\n")
        assert state._answers(port, str(ini), "")["version_status"] == 401
        assert state._answers(port, "", "") == {"health_status": 200, "health": "OK", "version_status": 401,
                                                "version_answer": ""}
        # A hand-edited file configparser cannot read (a lone %) or none: named, never quoted.
        ini.write_text(f"[mlflow]\nadmin_username = admin\nadmin_password = {password}\n")
        broken = state._answers(port, str(ini), "")
        assert broken["auth_config_error"] == f"{ini} cannot be read (InterpolationSyntaxError)", broken
        assert broken["version_status"] == 401 and password not in json.dumps(broken)
        missing = state._answers(port, str(tmp_path / "absent.ini"), "")
        assert missing["auth_config_error"] == f"{tmp_path / 'absent.ini'} cannot be read (OSError)"
    finally:
        server.shutdown()
