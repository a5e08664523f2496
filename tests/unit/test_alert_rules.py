"""The shipped Prometheus alert rules (`mlops-provision alert-rules`), proven with promtool
(Debian's prometheus package, unpacked by scripts/setup.sh): they load, and each rule's unit
tests in tests/prometheus/ pass, with series that make it fire and series that keep it quiet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PROMTOOL = os.environ.get("PROMTOOL") or str(ROOT / ".cache/prometheus/usr/bin/promtool")
TESTS = ROOT / "tests/prometheus/mlflow-alerts.test.yml"


def _rules_from_the_cli(directory: Path) -> Path:
    """What `mlops-provision alert-rules` prints, written where the promtool tests look for it."""
    proc = subprocess.run([sys.executable, "-m", "mlops_provision.cli", "alert-rules"],
                          capture_output=True, text=True, check=True)
    rules = directory / "mlflow-alerts.rules.yml"
    rules.write_text(proc.stdout)
    return rules


def test_promtool_is_there() -> None:
    assert Path(PROMTOOL).is_file(), f"{PROMTOOL} is missing: run scripts/setup.sh (make setup)"


def test_the_rules_load_and_their_unit_tests_pass(tmp_path: Path) -> None:
    rules = _rules_from_the_cli(tmp_path)
    assert rules.read_text() == (ROOT / "prometheus/mlflow-alerts.rules.yml").read_text()
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout + check.stderr
    shutil.copy(TESTS, tmp_path / TESTS.name)
    proc = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def test_every_rule_has_a_firing_case_and_a_quiet_one_after_its_for() -> None:
    """A quiet case evaluated before the rule's `for` has passed proves nothing about its
    expression: each rule needs one at least a minute after that."""
    rules = yaml.safe_load((ROOT / "prometheus/mlflow-alerts.rules.yml").read_text())
    wait = {rule["alert"]: _seconds(rule.get("for", "0s")) for group in rules["groups"] for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases
             if not case.get("exp_alerts") and _seconds(case["eval_time"]) >= wait[case["alertname"]] + 60}
    assert set(wait) == firing, f"rules without a firing case: {sorted(set(wait) - firing)}"
    assert set(wait) == quiet, f"rules without a quiet case after their for: {sorted(set(wait) - quiet)}"


# Each a plausible mistake in the rules; the promtool cases must catch every one.
MUTATIONS = {
    "5% read as 50%": ("> 0.05", "> 0.5"),
    "4xx counted as failures": ('status=~"5.."', 'status=~"5..|4.."'),
    "the readiness checks' 401s counted": ('{job="mlflow", status!="401"}', '{job="mlflow"}'),
    "no traffic guard on the load balancer's ratio": (
        '\n          and sum by (job, instance) (\n            rate(haproxy_backend_http_responses_total'
        '{job="mlflow_lb", proxy="mlflow"}[5m])) > 1 / 60', ""),
    "no traffic guard on slow requests": (
        '\n          and sum by (job, instance) (\n            rate(mlflow_http_request_duration_seconds_count'
        '{job="mlflow", status!="401"}[5m])) > 1 / 60', ""),
    "drained servers counted as out": ('state="DOWN"} == 1', 'state=~"DOWN|MAINT|DRAIN"} == 1'),
    "no wait before paging": ("for: 1m", "for: 0m"),
    "server down at once": ('up{job="mlflow"} == 0\n        for: 2m', 'up{job="mlflow"} == 0\n        for: 0m'),
}


@pytest.mark.parametrize("mistake", MUTATIONS, ids=list(MUTATIONS))
def test_a_mistake_in_the_rules_fails_their_unit_tests(mistake: str, tmp_path: Path) -> None:
    rules = _rules_from_the_cli(tmp_path)
    old, new = MUTATIONS[mistake]
    assert old in rules.read_text(), old
    rules.write_text(rules.read_text().replace(old, new))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    proc = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, cwd=tmp_path)
    # Failed cases name their alert; a rules file promtool cannot load would not.
    assert proc.returncode == 1 and "alertname: MLflow" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
