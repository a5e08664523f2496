"""roles/mlflow_lb/files/mlflow_lb_servers.py against a fake HAProxy admin socket: a Unix socket
that answers `show stat`, `show servers state` and `set server ... state ...` as HAProxy 2.6 does
(CSV with a '# ' header; an empty answer on success, a message otherwise)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_module

lb = load_module(ROOT / "roles/mlflow_lb/files/mlflow_lb_servers.py", "mlflow_lb_servers")

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight,check_status,"


class FakeHAProxy:
    """Servers of backend mlflow with a status and open sessions; `set server` changes them the
    way HAProxy does (drain keeps sessions, maint and ready change the status)."""

    def __init__(self, path: Path, servers: dict[str, tuple[str, int]]) -> None:
        self.path, self.servers, self.commands = str(path), dict(servers), []  # type: ignore[var-annotated]
        # A server back from maintenance shows "UP 1/2" (HAProxy's state before any check), then
        # what its first health check finds after 0.3 s: UP, or DOWN when set here.
        self.health: dict[str, str] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def stat(self) -> str:
        rows = [HEADER, "mlflow,FRONTEND,,,0,0,,0,OPEN,,,", "stats,FRONTEND,,,0,0,,0,OPEN,,,"]
        rows += [f"mlflow,{name},0,0,{scur},0,,0,{status},1,{'L7OK' if status in ('UP', 'DRAIN') else ''},"
                 for name, (status, scur) in self.servers.items()]
        rows += ["mlflow,BACKEND,0,0,0,0,,0,UP,2,,", ""]
        return "\n".join(rows)

    def _answer(self, line: str) -> str:
        self.commands.append(line)
        if line == "show stat":
            return self.stat()
        words = line.split()
        if words[:2] == ["set", "server"] and words[3] == "state":
            name = words[2].split("/", 1)[1]
            if name not in self.servers:
                return "No such server.\n"
            _status, scur = self.servers[name]
            new = {"drain": "DRAIN", "maint": "MAINT", "ready": "UP 1/2"}[words[4]]
            self.servers[name] = (new, 0 if new == "MAINT" else scur)
            if new == "UP 1/2":
                threading.Timer(0.3, self._checked, args=(name,)).start()
            return ""
        return "Unknown command.\n"

    def _checked(self, name: str) -> None:
        self.servers[name] = (self.health.get(name, "UP"), 0)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.recv(4096).decode().strip()
                conn.sendall(self._answer(line).encode())


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[FakeHAProxy]:
    fake = FakeHAProxy(tmp_path / "admin.sock", {"s1": ("UP", 0), "s2": ("UP", 3)})
    yield fake
    fake.sock.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    rc = lb.main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_parse_stat_keeps_only_the_servers_of_the_backend(haproxy: FakeHAProxy) -> None:
    servers = lb.parse_stat(haproxy.stat())
    assert list(servers) == ["s1", "s2"]
    assert servers["s2"]["scur"] == "3" and servers["s2"]["status"] == "UP"


def test_show(haproxy: FakeHAProxy, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "--socket", haproxy.path, "show")
    assert rc == 0
    assert out == [{"name": "s1", "status": "UP", "weight": "1", "sessions": 0, "check": "L7OK"},
                   {"name": "s2", "status": "UP", "weight": "1", "sessions": 3, "check": "L7OK"}]


def test_status_gives_the_service_and_the_servers(haproxy: FakeHAProxy, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"systemctl": "ActiveState=active\nMainPID=812\nExecMainStartTimestampMonotonic=1000000\n",
               "haproxy": "HAProxy version 2.6.12-1+deb12u2 2025/01/01 - https://haproxy.org/\n"}
    monkeypatch.setattr(lb, "_output", lambda argv: answers[argv[0]])
    monkeypatch.setattr(lb.time, "monotonic", lambda: 61.4)
    rc, out = run(capsys, "--socket", haproxy.path, "status")
    assert rc == 0
    assert out == {"state": "active", "pid": 812, "uptime_s": 60, "version": "2.6.12-1+deb12u2",
                   "servers": [{"name": "s1", "status": "UP", "weight": "1", "sessions": 0, "check": "L7OK"},
                               {"name": "s2", "status": "UP", "weight": "1", "sessions": 3, "check": "L7OK"}]}


def test_status_without_haproxy_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lb, "_output", lambda argv: "")
    rc, out = run(capsys, "--socket", str(tmp_path / "none.sock"), "status")
    assert rc == 0
    assert out == {"state": "unknown", "pid": 0, "uptime_s": None, "version": "",
                   "servers": {"absent": True, "msg": str(tmp_path / "none.sock")}}


def test_drain_waits_for_the_open_sessions_then_sets_maintenance(haproxy: FakeHAProxy,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def finish_requests() -> None:
        import time

        time.sleep(0.6)
        haproxy.servers["s2"] = ("DRAIN", 0)

    threading.Thread(target=finish_requests).start()
    rc, out = run(capsys, "--socket", haproxy.path, "drain", "s2", "--timeout", "10")
    assert rc == 0
    assert out["changed"] is True and out["sessions_left"] == 0  # type: ignore[index]
    assert 0.5 <= out["waited_s"] < 5  # type: ignore[index,operator]
    assert haproxy.servers["s2"] == ("MAINT", 0)
    assert [c for c in haproxy.commands if c.startswith("set")] == ["set server mlflow/s2 state drain",
                                                                    "set server mlflow/s2 state maint"]


def test_drain_gives_up_waiting_after_the_timeout_and_says_how_many_were_left(
        haproxy: FakeHAProxy, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "--socket", haproxy.path, "drain", "s2", "--timeout", "0.5")
    assert rc == 0 and out["sessions_left"] == 3  # type: ignore[index]
    assert haproxy.servers["s2"][0] == "MAINT"


def test_drain_of_a_server_in_maintenance_changes_nothing(haproxy: FakeHAProxy,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s1"] = ("MAINT", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "drain", "s1")
    assert rc == 0 and out["changed"] is False  # type: ignore[index]
    assert not [c for c in haproxy.commands if c.startswith("set")]


def test_a_server_the_backend_does_not_list_yet_is_left_alone(haproxy: FakeHAProxy,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("drain", "ready"):
        rc, out = run(capsys, "--socket", haproxy.path, command, "s3")
        assert rc == 0 and out == {"changed": False, "absent": True,
                                   "msg": "s3 is not a server of this load balancer yet"}


def test_without_the_socket_there_is_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "--socket", str(tmp_path / "none.sock"), "drain", "s1")
    assert rc == 0 and out["absent"] is True and out["changed"] is False  # type: ignore[index]


def test_ready_takes_the_server_back_and_waits_for_a_passed_check(haproxy: FakeHAProxy,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s1"] = ("MAINT", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "ready", "s1")
    assert rc == 0 and out == {"changed": True, "status_before": "MAINT", "status": "UP"}  # not "UP 1/2"


def test_ready_fails_when_the_health_check_never_passes(haproxy: FakeHAProxy,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s1"] = ("MAINT", 0)
    haproxy.health["s1"] = "DOWN"
    rc, out = run(capsys, "--socket", haproxy.path, "ready", "s1", "--timeout", "0.6")
    assert rc == 1
    assert out["msg"] == ("s1 is back from maintenance but the load balancer's health check says DOWN "  # type: ignore[index]
                          "after 0.6 s")


def test_ready_all_brings_back_what_a_killed_roll_left_out(haproxy: FakeHAProxy,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s1"] = ("MAINT", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all")
    assert rc == 0
    assert out == {"changed": True, "readied": ["s1"], "status": {"s1": "UP", "s2": "UP"}, "up": ["s1", "s2"]}
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all")
    assert rc == 0 and out["changed"] is False  # type: ignore[index]


def test_ready_all_keeps_a_server_in_maintenance_on_purpose_out(haproxy: FakeHAProxy,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s2"] = ("MAINT", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all", "--keep", "s2")
    assert rc == 0
    assert out == {"changed": False, "readied": [], "status": {"s1": "UP", "s2": "MAINT"}, "up": ["s1"],
                   "kept_out": ["s2"]}
    # Put back by hand (or by HAProxy's start): drained and taken out again.
    haproxy.servers["s2"] = ("UP", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all", "--keep", "s2")
    assert rc == 0 and out["changed"] is True  # type: ignore[index]
    assert out["status"] == {"s1": "UP", "s2": "MAINT"}  # type: ignore[index]


def test_ready_all_never_takes_out_the_last_server_serving_and_fails(haproxy: FakeHAProxy,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s1"] = ("DOWN", 0)  # s2, to be kept out, is the only one UP (a migration put it in)
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all", "--keep", "s2", "--timeout", "0.3")
    assert rc == 1 and "no server is UP" in out["msg"]  # type: ignore[index,operator]
    assert out["kept_in"] == ["s2"] and out["status"]["s2"] == "UP"  # type: ignore[index]
    assert haproxy.servers["s2"][0] == "UP"


def test_ready_all_fails_when_no_server_is_up(haproxy: FakeHAProxy, capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers = {"s1": ("DOWN", 0), "s2": ("DOWN", 0)}
    rc, out = run(capsys, "--socket", haproxy.path, "ready-all", "--timeout", "0.3")
    assert rc == 1 and "no server is UP" in out["msg"]  # type: ignore[index,operator]


def test_drain_refuses_to_take_out_the_last_server_that_is_up(haproxy: FakeHAProxy,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    haproxy.servers["s2"] = ("MAINT", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "drain", "s1")
    assert rc == 1
    assert out["msg"].startswith("not taking s1 out: no other server of this load balancer is UP (s2 MAINT), so "  # type: ignore[index]
                                 "clients would get no answer while it restarts.")
    assert haproxy.servers["s1"] == ("UP", 0)
    rc, out = run(capsys, "--socket", haproxy.path, "drain", "s1", "--force")  # a migration stops them all
    assert rc == 0 and haproxy.servers["s1"] == ("MAINT", 0)


def test_an_answer_that_is_no_statistics_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="HAProxy answered 'show stat' with: Permission denied"):
        lb.parse_stat("Permission denied.\n")


def test_a_refused_command_is_reported_with_haproxys_answer(haproxy: FakeHAProxy) -> None:
    with pytest.raises(RuntimeError, match=r"HAProxy refused 'set server mlflow/nope state drain': No such server\."):
        lb.set_state("nope", "drain", haproxy.path)
