"""The shipped Prometheus alert rules (`mlops-provision alert-rules`), proven with promtool
(Debian's prometheus package, unpacked by scripts/setup.sh): they load, and each rule's unit
tests in tests/prometheus/ pass, with series that make it fire and series that keep it quiet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr
    shutil.copy(TESTS, tmp_path / TESTS.name)
    proc = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    rules = yaml.safe_load((ROOT / "prometheus/mlflow-alerts.rules.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names == firing, f"rules without a firing case: {sorted(names - firing)}"
    assert names == quiet, f"rules without a quiet case: {sorted(names - quiet)}"


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The tests can fail: 5% read as 50% leaves both 5xx rules silent where they must fire."""
    rules = _rules_from_the_cli(tmp_path)
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.5"))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    proc = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    failures = proc.stdout + proc.stderr
    assert "alertname: MLflowHigh5xxRatio," in failures and "alertname: MLflowLoadBalancerHigh5xxRatio," in failures
