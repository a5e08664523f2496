"""`mlops-provision status`: the table, --json and what counts as a problem, from the facts
playbooks/status.yml sets (shapes as files/deploy_record.py status and the LB task print them)."""

from __future__ import annotations

import json
from pathlib import Path

from mlops_provision import status
from mlops_provision.runner import HostResult, RunResult

SERVER = {"kind": "server", "drift": [], "deploying": False,
          "service": {"state": "active", "pid": 812, "uptime_s": 7325},
          "health": "ok", "version": "3.17.2", "ready": "ok", "port": 5000, "tls": "", "workers": 4,
          "last_deploy": {"at": 1796221278.5, "version": "3.17.2", "backend": "sqlite:////var/lib/mlflow/mlflow.db"}}
LB = {"kind": "lb", "port": 5000, "state": "active", "pid": 90, "uptime_s": 59, "version": "2.6.12",
      "servers": [{"name": "s1", "status": "UP", "weight": "1", "sessions": 0, "check": "L7OK"},
                  {"name": "s2", "status": "MAINT", "weight": "1", "sessions": 0, "check": "L7OK"}]}


def _result(**hosts: dict[str, object]) -> RunResult:
    found = {}
    for name, st in hosts.items():
        entry = HostResult(name)
        entry.status = dict(st)
        found[name] = entry
    return RunResult(action="status", rc=0, duration=1.0, run_dir=Path("/nonexistent"), hosts=found)


def test_a_server_in_order_has_one_row_and_no_problem() -> None:
    result = _result(vm1=SERVER)
    assert status.problems(SERVER) == [] and status.in_order(result)
    lines = status.table(result).splitlines()
    assert lines[0].split() == ["HOST", "ROLE", "VERSION", "SERVICE", "UPTIME", "HEALTH", "READY", "BACKEND", "LAST",
                                "DEPLOY", "DRIFT"]
    assert lines[1].split() == ["vm1", "server", "3.17.2", "active", "2h02m", "ok", "ok",
                                "sqlite:////var/lib/mlflow/mlflow.db", "2026-12-02", "14:21", "UTC", "(3.17.2)", "none"]
    assert len(lines) == 2


def test_drift_and_a_running_deploy_are_problems_listed_under_the_table() -> None:
    drifted = {**SERVER, "drift": ["changed on the host since the last deploy: files:/etc/mlflow/mlflow.env"],
               "deploying": True}
    result = _result(vm1=drifted, vm2=SERVER)
    assert not status.in_order(result)
    lines = status.table(result).splitlines()
    assert lines[1].endswith("2 (below)") and lines[2].endswith("none")
    assert lines[3:] == ["vm1: changed on the host since the last deploy: files:/etc/mlflow/mlflow.env",
                         "vm1: a deploy holds the host's lock now"]


def test_a_load_balancer_counts_its_servers_up_and_names_the_others() -> None:
    result = _result(lb1=LB, s1=SERVER)
    lines = status.table(result).splitlines()
    assert lines[1].split()[:2] == ["s1", "server"]  # servers first, then load balancers
    assert lines[2].split() == ["lb1", "lb", "haproxy", "2.6.12", "active", "59s", "1/2", "UP", "-", "-", "-", "1",
                                "(below)"]
    assert lines[3] == "lb1: server s2 is MAINT (L7OK)"
    assert status.problems({**LB, "servers": {"absent": True}}) == [
        "no view of the servers (HAProxy's admin socket did not answer)"]


def test_a_server_in_maintenance_on_purpose_is_no_problem_until_it_is_back_in() -> None:
    kept = {**LB, "kept_out": ["s2"]}
    assert status.problems(kept) == []
    lines = status.table(_result(lb1=kept)).splitlines()
    assert lines[1].split()[6:] == ["1/2", "UP,", "1", "in", "maintenance", "-", "-", "-", "none"]
    back = {**kept, "servers": [{**row, "status": "UP"} for row in LB["servers"]]}  # type: ignore[attr-defined]
    assert status.problems(back) == ["server s2 is UP, not in maintenance as mlflow_lb_maintenance asks"]


def test_a_host_without_an_answer_is_not_in_order() -> None:
    result = _result(vm1=SERVER)
    lost = HostResult("vm2", unreachable=1, failures=["vm2: unreachable over SSH"])
    result.hosts["vm2"] = lost
    assert not status.in_order(result)
    table = status.table(result)
    assert "vm2   ?       -        unreachable" in table and "vm2: unreachable over SSH" in table
    assert status.problems({"kind": "server", "error": False, "reason": "KeyError: 'port'"}) == [
        "could not be read: KeyError: 'port'"]


def test_json_splits_servers_and_load_balancers_with_their_problems() -> None:
    out = json.loads(status.as_json(_result(lb1=LB, s1=SERVER)))
    assert set(out) == {"servers", "load_balancers"}
    assert out["servers"]["s1"]["problems"] == [] and out["servers"]["s1"]["reachable"] is True
    assert out["servers"]["s1"]["service"]["pid"] == 812 and "kind" not in out["servers"]["s1"]
    assert out["load_balancers"]["lb1"]["problems"] == ["server s2 is MAINT (L7OK)"]


def test_uptime_reads_like_a_clock() -> None:
    assert [status._uptime(s) for s in (None, 5, 119, 120, 7199, 7200, 90000, 172800, 200000)] == [
        "-", "5s", "119s", "2m", "119m", "2h00m", "25h00m", "2d0h", "2d7h"]
