"""The summary an operator reads after a deploy or destroy, and the exit code that goes with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_provision import summary
from mlops_provision.commands import _exit_code
from mlops_provision.deployment import Deployment
from mlops_provision.health import Check, Report
from mlops_provision.runner import HostResult, RunResult

URL = "http://127.0.0.1:41235"
FACT = {"version": "3.17.2", "port": "5000", "scheme": "http", "tls": "", "auth": "basic", "auth_user": "admin",
        "auth_realm": "vm1", "allow_from": [], "firewall": "none", "artifact_kind": "local",
        "serve_artifacts": "True", "backend": "sqlite:////var/lib/mlflow/mlflow.db",
        "artifacts": "/var/lib/mlflow/artifacts (served by the server)"}


def _result(*hosts: HostResult, rc: int = 0, status: str = "successful", **extra: object) -> RunResult:
    return RunResult(action="deploy", rc=rc, duration=12.3, run_dir=Path("/state/runs/1-deploy"),
                     hosts={h.name: h for h in hosts}, status=status, **extra)  # type: ignore[arg-type]


def _host(changed: int = 3, failed: int = 0, unreachable: int = 0, **fact: object) -> HostResult:
    return HostResult("vm1", ok=20, changed=changed, failed=failed, unreachable=unreachable,
                      deployment=Deployment.from_fact({**FACT, **fact}))


HEALTHY = {"vm1": Report(URL, [Check("health", True, "HTTP 200 OK", 12.0), Check("version", True, "3.17.2", 3.0)])}


def _deploy(result: RunResult, check_mode: bool = False) -> str:
    return summary.deploy_summary(result, {"vm1": URL}, HEALTHY, check_mode=check_mode)


def test_a_deploy_with_changes_reads_as_in_the_readme() -> None:
    text = _deploy(_result(_host()))
    assert text.splitlines()[:3] == ["vm1: deployed  [ok=20 changed=3 failed=0 unreachable=0]",
                                     f"  URL        {URL}", "  MLflow     3.17.2"]
    assert "  health     OK (12 ms from this machine)" in text
    assert "  restarted" not in text
    assert _exit_code(_result(_host())) == 0


def test_a_second_deploy_is_up_to_date() -> None:
    assert _deploy(_result(_host(changed=0))).startswith(
        "vm1: up to date (no changes)  [ok=20 changed=0 failed=0 unreachable=0]\n")


def test_a_restart_names_its_reasons() -> None:
    text = _deploy(_result(_host(restarted="True", restart_reasons=["environment file changed", "unit changed"])))
    assert "  restarted  yes: environment file changed; unit changed\n" in text
    assert text.index("  MLflow ") < text.index("  restarted ") < text.index("  backend ")


def test_a_run_that_ended_early_without_failures_is_incomplete_not_deployed() -> None:
    result = _result(_host(), rc=1, status="failed")
    text = _deploy(result)
    assert text.startswith("vm1: INCOMPLETE (the run ended early; see the log)  [ok=20 ")
    assert "deployed" not in text and "up to date" not in text
    assert _exit_code(result) == 1


def test_another_hosts_failure_does_not_make_a_finished_host_incomplete() -> None:
    broken = HostResult("vm2", ok=5, failed=1, failures=["Unable to start service mlflow"])
    text = _deploy(_result(_host(), broken, rc=2, status="failed"))
    assert "vm1: deployed  [" in text
    assert "vm2: FAILED  [ok=5 changed=0 failed=1 unreachable=0]\n  error      Unable to start service mlflow" in text


def test_an_interrupted_run_says_where_it_stopped_and_exits_130() -> None:
    result = _result(HostResult("vm1", ok=7), rc=254, status="canceled", last_task_number=23,
                     last_task="Configure | Render the environment file", last_task_hosts="vm1")
    assert result.phase == "Configure"
    text = _deploy(result)
    assert text.splitlines()[0] == "vm1: INTERRUPTED (the host may be half-changed)"
    assert "deployed" not in text and "up to date" not in text
    assert summary.interrupted_message(result) == (
        "interrupted during Configure (task 23: Configure | Render the environment file); "
        "the host may be half-changed: run the same command again to converge")
    assert _exit_code(result) == 130


def test_a_signal_counts_as_an_interrupt_even_when_the_run_got_to_its_end() -> None:
    result = _result(_host(), signalled=True, last_task="Verify | Wait for /health", last_task_number=70)
    assert result.interrupted and _exit_code(result) == 130
    assert "deployed" not in _deploy(result)


def test_check_mode_lists_the_plan() -> None:
    plan = ["would install MLflow 3.17.2 into a new venv", "would restart mlflow.service (environment file changed)",
            "may migrate the database schema (MLflow 3.14.0 -> 3.17.2)"]
    text = _deploy(_result(_host(plan=plan, restarted="False")), check_mode=True)
    assert text.splitlines()[:4] == [
        "vm1: checked (--check: nothing changed)  [ok=20 changed=3 failed=0 unreachable=0]",
        "  would      install MLflow 3.17.2 into a new venv",
        "  would      restart mlflow.service (environment file changed)",
        "  plan       may migrate the database schema (MLflow 3.14.0 -> 3.17.2)",
    ]


def test_check_mode_without_changes_says_so() -> None:
    text = _deploy(_result(_host(changed=0, plan=[])), check_mode=True)
    assert "\n  plan       no changes\n" in text
    assert "  would " not in text


def test_check_mode_against_a_role_without_a_plan_prints_none() -> None:
    assert "  plan " not in _deploy(_result(_host()), check_mode=True)


@pytest.mark.parametrize(("host", "state"), [
    (HostResult("vm1", ok=3), "vm1: removed (data in /var/lib/mlflow kept; --purge-data removes it)  [ok=3 "),
    (HostResult("vm1", ok=1, unreachable=1), "vm1: UNREACHABLE  [ok=1 "),
])
def test_destroy_states(host: HostResult, state: str) -> None:
    assert summary.destroy_summary(_result(host), purge=False).startswith(state)


def test_an_interrupted_destroy_is_not_reported_removed() -> None:
    result = _result(HostResult("vm1", ok=2), rc=254, status="canceled", last_task="Destroy | Remove the venv",
                     last_task_number=4)
    text = summary.destroy_summary(result, purge=True)
    assert text.startswith("vm1: INTERRUPTED (the host may be half-changed)\n") and "removed" not in text
    assert summary.interrupted_message(result).startswith("interrupted during Destroy (task 4: Destroy | Remove")


def test_an_interrupt_before_any_task_says_nothing_changed() -> None:
    assert summary.interrupted_message(_result(status="canceled", rc=254)) == (
        "interrupted before the first task; no host was changed: run the same command again")


def test_a_lost_host_exits_3() -> None:
    lost = HostResult("vm1", ok=9, unreachable=1, stopped_answering=True,
                      failures=['vm1 stopped answering (SSH) during "Install | Build the venv": Broken pipe'])
    result = _result(lost, rc=4, status="failed")
    assert _exit_code(result) == 3
    assert 'vm1: UNREACHABLE  [ok=9 changed=0 failed=0 unreachable=1]\n  error      vm1 stopped answering' in \
        _deploy(result)
