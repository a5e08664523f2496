"""The summary an operator reads after a deploy or destroy, and the exit code that goes with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_provision import summary
from mlops_provision.commands._common import exit_code
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
    assert exit_code(_result(_host())) == 0


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
    assert exit_code(result) == 1


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
    assert exit_code(result) == 130


def test_a_signal_counts_as_an_interrupt_even_when_the_run_got_to_its_end() -> None:
    result = _result(_host(), signalled=True, last_task="Verify | Wait for /health", last_task_number=70)
    assert result.interrupted and exit_code(result) == 130
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
    assert exit_code(result) == 3
    assert 'vm1: UNREACHABLE  [ok=9 changed=0 failed=0 unreachable=1]\n  error      vm1 stopped answering' in \
        _deploy(result)


BACKUP = {"ok": True, "fetched": "/backups/mlflow-backup-vm1-20261201T043000Z.tar.gz", "size": 2_500_000,
          "host": "vm1", "created_at": "2026-12-01T04:30:00+00:00", "mlflow_version": "3.17.2",
          "databases": {"tracking": {"revision": "dc11669786a5",
                                     "counts": {"experiments": 2, "runs": 5, "registered_models": 1}},
                        "auth": {"revision": "f1a2b3c4d5e6", "counts": {"users": 2}}},
          "artifacts": {"location": "/var/lib/mlflow/artifacts", "copied": True, "files": 3, "bytes": 1_500_000}}


def test_a_backup_names_the_archive_what_it_holds_and_the_restore_command() -> None:
    text = summary.backup_summary(_result(HostResult("vm1", ok=9, changed=2, backup=BACKUP)))
    assert text.splitlines()[:5] == [
        "vm1: backed up  [ok=9 changed=2 failed=0 unreachable=0]",
        "  archive    /backups/mlflow-backup-vm1-20261201T043000Z.tar.gz (2.5 MB, checksums checked here)",
        "  holds      2 experiments, 5 runs, 1 registered models, 2 users, 3 artifact files (1.5 MB)",
        "  MLflow     3.17.2; schema tracking dc11669786a5, users f1a2b3c4d5e6",
        "  restore    mlops-provision restore --host vm1 --from /backups/mlflow-backup-vm1-20261201T043000Z.tar.gz",
    ]


def test_a_backup_of_remote_artifacts_says_they_are_not_in_it() -> None:
    remote = {**BACKUP, "artifacts": {"location": "s3://bucket/mlflow", "copied": False, "files": 0, "bytes": 0}}
    text = summary.backup_summary(_result(HostResult("vm1", ok=9, changed=2, backup=remote)))
    assert "  holds      2 experiments, 5 runs, 1 registered models, 2 users, artifacts in s3://bucket/mlflow " \
           "(not copied)" in text
    assert "  note       artifacts in s3://bucket/mlflow are not in the archive: back up that store itself" in text


def test_a_backup_run_that_ended_without_an_archive_is_incomplete() -> None:
    text = summary.backup_summary(_result(HostResult("vm1", ok=3, changed=0)))
    assert text.startswith(f"vm1: {summary.INCOMPLETE}")


def test_a_restore_says_what_came_back_and_where_the_replaced_data_went() -> None:
    restored = {**BACKUP, "replaced_artifacts": "/var/lib/mlflow/artifacts.replaced-20261201T050000Z"}
    text = _deploy(_result(_host(restored=restored, backup="/var/backups/mlflow/pre-restore-20261201T050000Z")))
    assert ("  restored   2 experiments, 5 runs, 1 registered models, 2 users, 3 artifact files (1.5 MB); "
            "taken on vm1 at 2026-12-01T04:30:00+00:00") in text
    assert ("             the databases it replaced: /var/backups/mlflow/pre-restore-20261201T050000Z "
            "(on the host)") in text
    assert ("             the artifacts it replaced: /var/lib/mlflow/artifacts.replaced-20261201T050000Z "
            "(on the host)") in text


def test_the_list_of_scheduled_backups_is_a_table_newest_first() -> None:
    listing = {"dir": "/var/backups/mlflow/scheduled", "schedule": "{ OnCalendar=*-*-* 00:00:00 ; next_elapse=... }",
               "archives": [{**BACKUP, "name": "mlflow-backup-vm1-20261201T000000Z.tar.gz"},
                            {**BACKUP, "name": "mlflow-backup-vm1-20261130T000000Z.tar.gz", "size": 1_000_000}]}
    lines = summary.backup_list_summary(_result(HostResult("vm1", ok=3, backup=listing))).splitlines()
    assert lines[0] == ("vm1: 2 scheduled backups in /var/backups/mlflow/scheduled; "
                        "schedule: { OnCalendar=*-*-* 00:00:00 ; next_elapse=... }")
    assert lines[2].split() == ["mlflow-backup-vm1-20261201T000000Z.tar.gz", "2.5", "MB", "3.17.2", "5",
                                "2026-12-01T04:30:00+00:00"]
    assert lines[-1] == ("  restore    mlops-provision restore --host vm1 "
                         "--from @mlflow-backup-vm1-20261201T000000Z.tar.gz")
    listing["ignored"] = ["mlflow-backup-vm1-20990101T000000Z.tar.gz"]
    lines = summary.backup_list_summary(_result(HostResult("vm1", ok=3, backup=listing))).splitlines()
    assert lines[-1] == ("  ignored    1 other files there, not archives of this host with their summary: "
                         "mlflow-backup-vm1-20990101T000000Z.tar.gz")


def test_a_deploy_that_finished_a_killed_migration_says_so_before_its_own() -> None:
    text = _deploy(_result(_host(recovered={"kind": "migration", "from": "3.14.0", "to": "3.17.2",
                                            "backup": "/var/backups/mlflow/pre-upgrade-1-3.14.0-to-3.17.2"},
                                 migration={"tracking": ["b7e4c1a90f23", "dc11669786a5"]},
                                 backup="/var/backups/mlflow/pre-upgrade-2-3.14.0-to-3.17.2")))
    lines = text.splitlines()
    at = lines.index("  recovered  an earlier deploy was killed mid-migration: restored its backup "
                     "/var/backups/mlflow/pre-upgrade-1-3.14.0-to-3.17.2 first")
    assert lines[at + 1] == ("  schema     migrated tracking b7e4c1a90f23 → dc11669786a5 "
                             "(backup: /var/backups/mlflow/pre-upgrade-2-3.14.0-to-3.17.2)")


def test_a_deploy_that_undid_a_killed_restore_names_the_archive_and_what_came_back() -> None:
    text = _deploy(_result(_host(recovered={
        "kind": "restore", "archive": "mlflow-backup-vm1-20261201T000000Z.tar.gz",
        "backup": "/var/backups/mlflow/pre-restore-20261201T010000Z", "artifacts": "/var/lib/mlflow/artifacts"})))
    assert ("  recovered  a restore of mlflow-backup-vm1-20261201T000000Z.tar.gz did not finish: the data from "
            "before it is back (databases: /var/backups/mlflow/pre-restore-20261201T010000Z; "
            "artifacts: /var/lib/mlflow/artifacts)") in text.splitlines()


def test_an_adopted_server_says_what_came_from_where() -> None:
    text = _deploy(_result(_host(restored={
        "databases": {"tracking": {"counts": {"experiments": 2, "runs": 3, "registered_models": 0}}},
        "artifacts": {"copied": True, "files": 4, "bytes": 2_000_000},
        "adopted": {"sqlite": "/home/op/mlflow.db", "artifacts": "/home/op/mlruns", "rewritten_uris": 6}})))
    assert ("  adopted    /home/op/mlflow.db and /home/op/mlruns: 2 experiments, 3 runs, 0 registered models, "
            "4 artifact files (2.0 MB); 6 artifact URIs now point at the managed store (the originals were "
            "only read)") in text.splitlines()


def test_a_load_balancer_gives_the_one_url_and_each_servers_state() -> None:
    lb = HostResult("lb1", ok=12, changed=1, load_balancer={"port": "5000", "servers": {"s2": "UP", "s1": "UP"},
                                                            "health": "OK"})
    lb_url = "http://10.0.0.5:5000"
    health = {**HEALTHY, "lb1": Report(lb_url, [Check("health", True, "HTTP 200 OK", 4.0)])}
    text = summary.deploy_summary(_result(_host(), lb), {"vm1": URL, "lb1": lb_url}, health)
    block = text.split("lb1: deployed  [ok=12 changed=1 failed=0 unreachable=0]\n")[1].splitlines()[:5]
    assert block == [f"  URL        {lb_url}  (load balancer: HAProxy)", "  servers    s1 UP, s2 UP",
                     "  health     OK (4 ms from this machine)", f"  use        export MLFLOW_TRACKING_URI={lb_url}",
                     "             (log in as on the servers: mlops-provision user admin-password --host lb1)"]


def test_a_server_kept_out_on_purpose_is_named_so() -> None:
    lb = HostResult("lb1", ok=12, load_balancer={"port": "5000", "servers": {"s1": "UP", "s2": "MAINT"},
                                                 "kept_out": ["s2"], "health": "OK"})
    text = summary.deploy_summary(_result(_host(), lb), {"vm1": URL, "lb1": "http://10.0.0.5:5000"}, HEALTHY)
    assert "  servers    s1 UP, s2 MAINT (mlflow_lb_maintenance)" in text.splitlines()


def test_a_failed_load_balancer_shows_no_url() -> None:
    lb = HostResult("lb1", ok=3, failed=1, failures=["LB preflight | Check failed on lb1: [bad input] ..."],
                    load_balancer={"port": "5000"})
    text = summary.deploy_summary(_result(_host(), lb, rc=2, status="failed"), {"vm1": URL}, HEALTHY)
    assert "lb1: FAILED" in text and "load balancer: HAProxy" not in text
