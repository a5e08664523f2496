"""A failed task's message: every shape of Ansible result names its cause on the first line (the
one the deploy summary prints), a no_log result leaks nothing, and the wheelhouse build names
the release the package index lacks."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from mlops_provision.failures import GENERIC_FAILURE, HIDDEN, classify, failure_message
from mlops_provision.runner import HostResult, RunResult
from mlops_provision.summary import deploy_summary
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "roles/mlflow_server/files"))  # build_wheelhouse imports venv_bytecode
wheelhouse = importlib.import_module("build_wheelhouse")

# pip 25's own words (pip download of a release the index lacks), through a host's own index.
PIP_STDERR = (
    "WARNING: Location 'file:///opt/pypi/simple/mlflow-tracing/' is ignored: it is neither a file nor a directory.\n"
    "ERROR: Ignored the following yanked versions: 3.11.0rc0, 3.11.0\n"
    "ERROR: Could not find a version that satisfies the requirement mlflow-tracing==3.18.0 (from versions: "
    "3.0.0, 3.1.0, 3.16.1, 3.17.0, 3.17.1, 3.17.2)\n"
    "ERROR: No matching distribution found for mlflow-tracing==3.18.0\n"
)
MISSING = ("Could not find or access '/v/lib/python3.11/site-packages/mlops_provision/playbooks/tasks/"
           "peer_addresses.yml' on the Ansible Controller.")


def summary_error(res: dict[str, Any]) -> str:
    """The error line of the deploy summary for a host that failed with this result."""
    failure = classify("vm1", "Some | Task", res)
    host = HostResult("vm1", ok=3, failed=1, failures=[failure.message])
    text = deploy_summary(RunResult(action="deploy", rc=2, duration=1.0, run_dir=Path("/r"), hosts={"vm1": host},
                                    status="failed"), {}, {})
    return next(line for line in text.splitlines() if line.startswith("  error")).removeprefix("  error      ")


def test_an_include_whose_file_is_missing_names_the_file() -> None:
    """ansible-core's result for it carries `reason` only (strategy/__init__.py, _load_included_file)."""
    res = {"failed": True, "reason": MISSING}
    assert failure_message(res) == MISSING
    assert summary_error(res) == MISSING


def test_an_include_with_a_message_keeps_both() -> None:
    res = {"failed": True, "msg": "the include failed", "reason": "line one\nline two"}
    assert failure_message(res) == "the include failed: line one\nline two"


def test_a_pip_resolution_failure_names_the_missing_release() -> None:
    res = {"failed": True, "rc": 1, "msg": "non-zero return code", "cmd": ["pip", "download"], "stdout": "",
           "stderr": PIP_STDERR}
    assert failure_message(res) == (
        "non-zero return code: ERROR: No matching distribution found for mlflow-tracing==3.18.0\n"
        "ERROR: Ignored the following yanked versions: 3.11.0rc0, 3.11.0\n"
        "ERROR: Could not find a version that satisfies the requirement mlflow-tracing==3.18.0 (from versions: "
        "3.0.0, 3.1.0, 3.16.1, 3.17.0, 3.17.1, 3.17.2)")
    assert summary_error(res) == ("non-zero return code: "
                                  "ERROR: No matching distribution found for mlflow-tracing==3.18.0")


def test_a_command_failure_carries_the_tail_of_its_stderr_not_pages() -> None:
    stderr = "".join(f"progress line {n}\n" for n in range(500)) + "Traceback (most recent call last):\n" \
        '  File "db_schema.py", line 3, in <module>\n\n' + "psycopg2.OperationalError: connection refused\n"
    res = {"failed": True, "rc": 1, "msg": "non-zero return code", "stderr": stderr, "stdout": "{}"}
    assert failure_message(res) == ("non-zero return code: psycopg2.OperationalError: connection refused\n"
                                    "Traceback (most recent call last):\n"
                                    'File "db_schema.py", line 3, in <module>')


def test_a_command_failure_with_an_empty_stderr_carries_its_stdout() -> None:
    res = {"failed": True, "rc": 3, "msg": "non-zero return code", "stderr": "",
           "stdout": "checking\n\nhaproxy: config invalid: unknown keyword 'bakend'\n"}
    assert failure_message(res) == "non-zero return code: haproxy: config invalid: unknown keyword 'bakend'\nchecking"


def test_a_failed_when_without_a_message_carries_the_stderr() -> None:
    res = {"failed": True, "failed_when_result": True, "rc": 1, "stderr": "E: Unable to locate package foo\n"}
    assert failure_message(res) == "E: Unable to locate package foo"


def test_a_module_failure_with_only_its_stderr_names_the_exception() -> None:
    res = {"failed": True, "rc": 1, "msg": "MODULE FAILURE\nSee stdout/stderr for the exact error",
           "module_stdout": "", "module_stderr": "Traceback (most recent call last):\n  File \"<stdin>\", line 107\n"
           "ModuleNotFoundError: No module named 'ansible.module_utils.basic'\n"}
    assert failure_message(res) == ("MODULE FAILURE: ModuleNotFoundError: "
                                    "No module named 'ansible.module_utils.basic'\n"
                                    "Traceback (most recent call last):\n"
                                    'File "<stdin>", line 107')
    assert summary_error(res) == "MODULE FAILURE: ModuleNotFoundError: No module named 'ansible.module_utils.basic'"


def test_a_specific_message_gets_the_stderr_that_it_does_not_already_quote() -> None:
    apt = {"failed": True, "rc": 100,
           "msg": "'/usr/bin/apt-get -y install foo' failed: E: Unable to locate package foo\n",
           "stderr": "E: Unable to locate package foo\n"}
    assert failure_message(apt) == "'/usr/bin/apt-get -y install foo' failed: E: Unable to locate package foo"
    other = {"failed": True, "msg": "Unable to start service mlflow", "stderr": "Job for mlflow.service failed.\n"}
    assert failure_message(other) == "Unable to start service mlflow: Job for mlflow.service failed."


def test_a_loop_names_its_first_failed_item_and_its_cause() -> None:
    res = {"failed": True, "msg": "One or more items failed", "changed": False, "results": [
        {"item": "tracking", "failed": False, "rc": 0},
        {"item": "auth", "failed": True, "rc": 2, "msg": "non-zero return code",
         "stderr": "psql: error: connection to server on socket failed: No such file or directory\n"},
        {"item": "registry", "failed": True, "rc": 2, "msg": "non-zero return code", "stderr": "later\n"},
    ]}
    assert failure_message(res) == ("One or more items failed: item auth: non-zero return code: psql: error: "
                                    "connection to server on socket failed: No such file or directory (and 1 more)")


def test_a_no_log_result_leaks_nothing() -> None:
    """What the callback gets (ansible-core's censor_result) and a raw result flagged no_log alike."""
    censored = {"censored": HIDDEN, "changed": False, "_ansible_no_log": True, "failed": True}
    assert failure_message(censored) == HIDDEN
    raw = {"failed": True, "_ansible_no_log": True, "msg": "password hunter2hunter2",
           "stderr": "PGPASSWORD=hunter2hunter2",
           "module_stderr": "hunter2hunter2", "reason": "hunter2hunter2"}
    assert failure_message(raw) == HIDDEN
    loop = {"failed": True, "msg": "One or more items failed", "results": [
        {"failed": True, "_ansible_no_log": True, "item": "hunter2hunter2", "stderr": "hunter2hunter2"}]}
    assert failure_message(loop) == f"One or more items failed: {HIDDEN}"
    assert not classify("vm1", "PostgreSQL | Database and role", raw).lost_host


def test_a_password_in_a_uri_of_the_output_is_masked() -> None:
    res = {"failed": True, "rc": 1, "msg": "non-zero return code",
           "stderr": "could not connect to postgresql://mlflow:s3cretpass@db:5432/mlflow\n"}
    assert failure_message(res) == "non-zero return code: could not connect to postgresql://mlflow:********@db:5432/mlflow"


def test_only_a_result_that_says_nothing_gets_the_generic_line() -> None:
    assert failure_message({"failed": True}) == GENERIC_FAILURE
    assert failure_message({"failed": True, "msg": "", "stderr": "\n  \n", "stdout": ""}) == GENERIC_FAILURE


def test_the_input_marker_and_a_lost_host_are_still_recognised() -> None:
    bad = classify("vm1", "Configure | Check", {"msg": "[bad input] mlflow_port 1-65535", "stderr": "x\n"})
    assert (bad.validation, bad.message) == (True, "mlflow_port 1-65535: x")
    lost = classify("vm1", "Install | Build", {"msg": "MODULE FAILURE", "rc": 255,
                                              "stderr": "client_loop: send disconnect: Broken pipe\n"})
    assert lost.lost_host
    assert lost.message == ('vm1 stopped answering (SSH) during "Install | Build": '
                            "MODULE FAILURE: client_loop: send disconnect: Broken pipe")
    journal = classify("vm1", "Verify | Check", {"msg": "non-zero return code", "rc": 1,
                                                 "stdout": "BrokenPipeError: [Errno 32] Broken pipe"})
    assert not journal.lost_host


@pytest.mark.parametrize(("stderr", "cause"), [
    (PIP_STDERR, "ERROR: the package index has no mlflow-tracing==3.18.0 "
                 "(pip: No matching distribution found for mlflow-tracing==3.18.0)"),
    ("ERROR: Could not find a version that satisfies the requirement uv==9.9 (from versions: 0.1, 0.2)\n",
     "ERROR: the package index has no uv==9.9 (pip: Could not find a version that satisfies the requirement uv==9.9)"),
    ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken "
     "by 'NewConnectionError(...)': /simple/mlflow/\n"
     "ERROR: Could not find a version that satisfies the requirement mlflow==3.17.2 (from versions: none)\n"
     "ERROR: No matching distribution found for mlflow==3.17.2\n",
     "ERROR: the package index did not answer, so pip found no mlflow==3.17.2 "
     "(pip: No matching distribution found for mlflow==3.17.2)"),
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n", ""),
])
def test_the_wheelhouse_build_names_the_release_the_index_lacks(stderr: str, cause: str) -> None:
    assert wheelhouse.pip_failure(stderr) == cause


def test_the_wheelhouse_cause_is_what_the_deploy_summary_shows(capsys: pytest.CaptureFixture[str]) -> None:
    wheelhouse.pip_failed(PIP_STDERR)
    stderr = capsys.readouterr().err
    assert stderr == PIP_STDERR + ("ERROR: the package index has no mlflow-tracing==3.18.0 "
                                   "(pip: No matching distribution found for mlflow-tracing==3.18.0)\n")
    res = {"failed": True, "rc": 1, "msg": "non-zero return code", "stdout": "", "stderr": stderr}
    assert summary_error(res) == ("non-zero return code: ERROR: the package index has no mlflow-tracing==3.18.0 "
                                  "(pip: No matching distribution found for mlflow-tracing==3.18.0)")
