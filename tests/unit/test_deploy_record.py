"""The record of the last finished deploy and the "nothing to do" check
(roles/mlflow_server/files/deploy_record.py), and the control node's digest of what a deploy is
asked for (filter_plugins/deploy_digest.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT, load_module

ROLE = ROOT / "roles" / "mlflow_server"
digests = load_module(ROLE / "filter_plugins" / "deploy_digest.py", "deploy_digest_filters")


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_module(ROLE / "files" / "deploy_record.py", "deploy_record_host")
    monkeypatch.setattr(module, "LOCK", str(tmp_path / "run" / "deploy.lock"))
    monkeypatch.setattr(module, "live", lambda checks, answers=None: "")  # no server here; tested on the VM (e2e)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mlflow.env").write_text('MLFLOW_WORKERS="4"\n')
    (tmp_path / "etc" / "previous").mkdir()
    (tmp_path / "etc" / "previous" / "mlflow.env").write_text('MLFLOW_WORKERS="2"\n')
    return module


def spec(tmp_path: Path) -> dict[str, Any]:
    return {"record": str(tmp_path / "etc" / "deploy-record.json"),
            "files": [str(tmp_path / "etc"), str(tmp_path / "marker.json"), str(tmp_path / "unit*")],
            "stats": [str(tmp_path / "data")], "units": [],
            "commands": [["sh", "-c", "cat " + str(tmp_path / "rules")]]}


def run(host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *args: str) -> dict[str, Any]:
    monkeypatch.setattr(sys, "argv", ["deploy_record.py", *args])
    assert host.main() == 0
    return dict(json.loads(capsys.readouterr().out))


def record(host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           tmp_path: Path, digest: str = "D1", run_id: str = "R1") -> dict[str, Any]:
    facts = json.dumps({"server": {"version": "3.17.2"}, "proxy": {}})
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "last-release").write_text("R1")  # deploy_lock.py release of run R1
    return run(host, monkeypatch, capsys, "record", "--digest", digest, "--spec", json.dumps(spec(tmp_path)),
               "--facts", facts, "--run-id", run_id)


def check(host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          tmp_path: Path, digest: str = "D1") -> dict[str, Any]:
    return run(host, monkeypatch, capsys, "check", "--digest", digest, "--spec", json.dumps(spec(tmp_path)),
               "--live", "{}")


def test_nothing_changed_is_converged_and_returns_the_recorded_summary(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert check(host, monkeypatch, capsys, tmp_path) == {"converged": False,
                                                          "reason": "no record of a finished deploy"}
    assert record(host, monkeypatch, capsys, tmp_path) == {"recorded": True, "reason": ""}
    assert (tmp_path / "etc" / "deploy-record.json").stat().st_mode & 0o777 == 0o600
    done = check(host, monkeypatch, capsys, tmp_path)
    assert done["converged"] is True and done["deployment"]["server"] == {"version": "3.17.2"}
    # The record itself is not part of what it compares.
    assert check(host, monkeypatch, capsys, tmp_path)["converged"] is True


@pytest.mark.parametrize(("change", "named"), [
    (lambda p: (p / "etc" / "mlflow.env").write_text('MLFLOW_WORKERS="8"\n'), "etc/mlflow.env"),
    (lambda p: (p / "etc" / "previous" / "mlflow.env").chmod(0o666), "etc/previous/mlflow.env"),
    (lambda p: (p / "etc" / "previous" / "mlflow.env").unlink(), "etc/previous/mlflow.env"),
    (lambda p: (p / "etc" / "drop-in.conf").write_text("x"), "etc/drop-in.conf"),
    (lambda p: (p / "marker.json").write_text("{}"), "marker.json"),  # a killed migration's marker
    (lambda p: (p / "unit.service").write_text("[Unit]"), "unit.service"),  # a glob matches a new file
    (lambda p: (p / "data").mkdir(), "data"),
    (lambda p: (p / "rules").write_text("accept"), "commands:sh -c cat"),
])
def test_any_change_on_the_host_is_named_and_not_converged(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        change: Any, named: str) -> None:
    record(host, monkeypatch, capsys, tmp_path)
    change(tmp_path)
    result = check(host, monkeypatch, capsys, tmp_path)
    assert result["converged"] is False
    assert result["reason"].startswith("changed on the host: ") and named in result["reason"], result


def test_another_digest_or_a_held_lock_is_not_converged_and_a_held_lock_is_not_recorded(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record(host, monkeypatch, capsys, tmp_path)
    assert check(host, monkeypatch, capsys, tmp_path, "D2") == {
        "converged": False, "reason": "this deploy asks for something else"}
    lease = Path(host.LOCK)
    lease.write_text(json.dumps({"run_id": "B", "expires": time.time() + 60}))
    assert check(host, monkeypatch, capsys, tmp_path)["reason"] == "another deploy holds the host's lock"
    assert record(host, monkeypatch, capsys, tmp_path, "D2") == {
        "recorded": False, "reason": "another deploy took the host's lock"}
    lease.write_text(json.dumps({"run_id": "B", "expires": time.time() - 1}))  # expired: free
    assert check(host, monkeypatch, capsys, tmp_path)["converged"] is True


def test_a_server_that_does_not_answer_is_not_converged(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record(host, monkeypatch, capsys, tmp_path)
    monkeypatch.setattr(host, "live", lambda checks, answers=None: "/health answered 503")
    assert check(host, monkeypatch, capsys, tmp_path) == {"converged": False, "reason": "/health answered 503"}


def test_the_live_check_reads_the_admin_password_as_configparser_writes_it(host: ModuleType, tmp_path: Path) -> None:
    ini = tmp_path / "basic_auth.ini"
    ini.write_text("[mlflow]\nadmin_username = admin\nadmin_password = 100%%sure-secret\n")
    assert host._admin(str(ini)) == ("admin", "100%sure-secret")


def test_the_digest_changes_with_any_value_and_any_file_of_the_code(tmp_path: Path) -> None:
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "main.yml").write_text("a: 1\n")
    roots = [str(tmp_path / "roles")]
    first = digests.desired_digest({"vars": {"mlflow_port": 5000}}, roots)
    assert digests.desired_digest({"vars": {"mlflow_port": 5000}}, roots) == first
    assert digests.desired_digest({"vars": {"mlflow_port": 5001}}, roots) != first
    digests._tree_digest.cache_clear()  # one ansible-playbook run never sees its code change
    (tmp_path / "roles" / "main.yml").write_text("a: 2\n")
    assert digests.desired_digest({"vars": {"mlflow_port": 5000}}, roots) != first


def test_the_digest_follows_the_content_of_the_files_a_deploy_copies(tmp_path: Path) -> None:
    """A key replaced at the same path (a rotation) is a new digest, not "nothing to do"."""
    key = tmp_path / "gcs.json"
    key.write_text('{"private_key": "one"}')
    first = digests.desired_digest({"vars": {}}, [], [str(key)])
    assert digests.desired_digest({"vars": {}}, [], [str(key)]) == first
    key.write_text('{"private_key": "two"}')
    assert digests.desired_digest({"vars": {}}, [], [str(key)]) != first
    key.unlink()  # unreadable: a digest of its own (the deploy then names the missing file)
    assert digests.desired_digest({"vars": {}}, [], [str(key)]) not in (first, digests.desired_digest({"vars": {}}, []))


def test_a_run_records_only_if_no_other_deploy_released_the_lock_after_it(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert record(host, monkeypatch, capsys, tmp_path, run_id="R0") == {
        "recorded": False, "reason": "another deploy took and released the host's lock since this one"}
    assert check(host, monkeypatch, capsys, tmp_path)["reason"] == "no record of a finished deploy"


def test_a_fifo_swapped_in_is_hashed_as_such_and_never_read(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record(host, monkeypatch, capsys, tmp_path)
    os.mkfifo(tmp_path / "etc" / "pipe")
    result = check(host, monkeypatch, capsys, tmp_path)  # returns: no blocking read of the FIFO
    assert result["converged"] is False and "etc/pipe" in result["reason"]


def test_any_error_is_not_converged_never_a_failure(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record(host, monkeypatch, capsys, tmp_path)

    def broken(checks: dict[str, Any]) -> str:
        raise TimeoutError("firewall-cmd did not answer")

    monkeypatch.setattr(host, "live", broken)
    assert check(host, monkeypatch, capsys, tmp_path) == {
        "converged": False, "reason": "TimeoutError: firewall-cmd did not answer"}


def status(host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           tmp_path: Path, digest: str = "D1") -> dict[str, Any]:
    monkeypatch.setattr(host, "_get", lambda url, auth=None, context=None: (
        200, "3.17.2" if url.endswith("/version") else "OK"))
    monkeypatch.setattr(host, "_units", lambda names: {"mlflow.service": {
        "ActiveState": "active", "MainPID": "812", "ExecMainStartTimestampMonotonic": "1000000"}})
    live = {"port": 5000, "version": "3.17.2", "auth_config": "", "auth_probe_path": "/api/2.0/x"}
    return run(host, monkeypatch, capsys, "status", "--digest", digest, "--spec", json.dumps(spec(tmp_path)),
               "--live", json.dumps(live))


def test_status_answers_each_part_instead_of_stopping_at_the_first(
        host: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert status(host, monkeypatch, capsys, tmp_path)["drift"] == ["no record of a finished deploy"]
    assert record(host, monkeypatch, capsys, tmp_path)["recorded"]
    now = status(host, monkeypatch, capsys, tmp_path)
    assert now["drift"] == [] and not now["deploying"]
    assert now["service"]["state"] == "active" and now["service"]["pid"] == 812
    assert now["health"] == now["ready"] == "ok" and now["version"] == "3.17.2"
    assert now["last_deploy"]["version"] == "3.17.2"
    (tmp_path / "etc" / "mlflow.env").write_text('MLFLOW_WORKERS="1"\n')
    monkeypatch.setattr(host, "live", lambda checks, answers=None: "/health answered 502")
    both = status(host, monkeypatch, capsys, tmp_path, digest="D2")["drift"]
    assert both == ["the configuration asks for something else than the last deploy",
                    f"changed on the host since the last deploy: files:{tmp_path}/etc/mlflow.env",
                    "/health answered 502"]
    unknown = status(host, monkeypatch, capsys, tmp_path, digest="-")["drift"][0]
    assert unknown.startswith("cannot compare with the configuration: this machine does not have the realm's")


def test_status_after_user_passwd_of_the_admin_logs_in_with_the_control_nodes_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`user passwd admin` changes the server's user database and the control node's copy, not
    basic_auth.ini: status must neither log in with the file's (old) password (401, VERSION -)
    nor call the new password a configuration change (the digest it compares leaves it out)."""
    host = load_module(ROLE / "files" / "deploy_record.py", "deploy_record_passwd")
    monkeypatch.setattr(host, "LOCK", str(tmp_path / "run" / "deploy.lock"))
    (tmp_path / "etc").mkdir()
    ini = tmp_path / "etc" / "basic_auth.ini"
    ini.write_text("[mlflow]\nadmin_username = admin\nadmin_password = the-old-password\n")
    probe = "/api/2.0/mlflow/experiments/search?max_results=1"

    def server(url: str, auth: tuple[str, str] | None = None, context: object = None) -> tuple[int, str]:
        if url.endswith("/health"):
            return 200, "OK"
        if auth is None and url.endswith(probe):
            return 401, ""
        return (401, "") if auth == ("admin", "the-old-password") else (200, "3.17.2")

    monkeypatch.setattr(host, "_get", server)
    monkeypatch.setattr(host, "_units", lambda names: {"mlflow.service": {
        "ActiveState": "active", "MainPID": "812", "ExecMainStartTimestampMonotonic": "1000000"}})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last-release").write_text("R1")
    assert run(host, monkeypatch, capsys, "record", "--digest", "WITH-OLD-PASSWORD", "--status-digest", "S1",
               "--spec", json.dumps(spec(tmp_path)), "--facts", json.dumps({"server": {"version": "3.17.2"}}),
               "--run-id", "R1")["recorded"]
    live = {"port": 5000, "version": "3.17.2", "auth_config": str(ini), "auth_probe_path": probe}
    answers = {"version": [200, "3.17.2"], "ready": 200}  # status.yml's calls with the new password
    now = run(host, monkeypatch, capsys, "status", "--digest", "S1", "--spec", json.dumps(spec(tmp_path)),
              "--live", json.dumps(live), "--answers", json.dumps(answers))
    assert now["drift"] == [], now
    assert now["version"] == "3.17.2" and now["ready"] == "ok"
    # The deploy's own check still sees the new password: it writes basic_auth.ini once.
    assert run(host, monkeypatch, capsys, "check", "--digest", "WITH-NEW-PASSWORD", "--spec",
               json.dumps(spec(tmp_path)), "--live", json.dumps(live))["converged"] is False
    # Without the answers (a machine without the password), the file's password is what is tried.
    stale = run(host, monkeypatch, capsys, "status", "--digest", "S1", "--spec", json.dumps(spec(tmp_path)),
                "--live", json.dumps(live))
    assert stale["version"] == "" and stale["drift"] == ["/version answered 401 '', not MLflow 3.17.2"]
