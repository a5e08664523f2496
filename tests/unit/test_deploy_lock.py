"""The host's deploy lock (roles/mlflow_server/files/deploy_lock.py) and the control-node filters
that say whether a holder still runs (filter_plugins/deploy_lock.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, load_module

ROLE = ROOT / "roles" / "mlflow_server"


filters = load_module(ROLE / "filter_plugins" / "deploy_lock.py", "deploy_lock_filters")


def test_this_process_is_alive_and_a_gone_pid_of_this_node_is_dead() -> None:
    me = filters.lock_holder()
    assert me["pid"] > 0 and me["run_id"].startswith(me["node_id"] + ":")
    assert filters.lock_holder_is_dead(me) is False  # our parent (pytest's shell or runner) runs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = {**me, "pid": gone.pid, "run_id": f"{me['node_id']}:{gone.pid}:1"}
    assert filters.lock_holder_is_dead(dead) is True


def test_a_holder_of_another_node_or_without_a_record_is_never_judged_dead() -> None:
    me = filters.lock_holder()
    assert filters.lock_holder_is_dead({**me, "node_id": "elsewhere", "pid": 999999}) is False
    assert filters.lock_holder_is_dead({}) is False
    assert filters.lock_holder_is_dead(None) is False


@pytest.fixture()
def lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_module(ROLE / "files" / "deploy_lock.py", "deploy_lock_host")
    monkeypatch.setattr(module, "LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(module, "LOCK", str(tmp_path / "locks" / "deploy.lock"))
    return module


def run(lock: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *args: str) -> dict[str, object]:
    monkeypatch.setattr(sys, "argv", ["deploy_lock.py", *args])
    assert lock.main() == 0
    return dict(json.loads(capsys.readouterr().out))


def test_one_holder_at_a_time_and_takeover_only_when_stale_or_expired(
        lock: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    a = json.dumps({"run_id": "A", "user": "ops", "pid": 1})
    b = json.dumps({"run_id": "B", "user": "dev", "pid": 2})
    assert run(lock, monkeypatch, capsys, "acquire", "--holder", a, "--ttl", "60")["ok"] is True
    busy = run(lock, monkeypatch, capsys, "acquire", "--holder", b, "--wait", "0")
    assert busy["ok"] is False and busy["holder"]["run_id"] == "A"  # type: ignore[index]
    # B renewing a lease it does not hold is refused, and does not steal it.
    assert run(lock, monkeypatch, capsys, "renew", "--holder", b)["ok"] is False
    # The control node of A says A is dead: B takes over at once.
    taken = run(lock, monkeypatch, capsys, "acquire", "--holder", b, "--wait", "0", "--stale", "A")
    assert taken["ok"] is True and taken["taken_over"]["run_id"] == "A"  # type: ignore[index]
    # A's release does not free B's lease; B's does.
    run(lock, monkeypatch, capsys, "release", "--holder", a)
    assert run(lock, monkeypatch, capsys, "peek")["holder"]["run_id"] == "B"  # type: ignore[index]
    run(lock, monkeypatch, capsys, "release", "--holder", b)
    assert run(lock, monkeypatch, capsys, "peek")["holder"] is None
    # An expired lease is free for anyone.
    assert run(lock, monkeypatch, capsys, "acquire", "--holder", a, "--ttl", "-1")["ok"] is True
    assert run(lock, monkeypatch, capsys, "acquire", "--holder", b, "--wait", "0")["ok"] is True
