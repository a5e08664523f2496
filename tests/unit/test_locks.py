"""One deploy or destroy per host from this machine: two real processes contend for a lock."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlops_provision import locks
from mlops_provision.errors import ProvisionError, UsageError
from tests.conftest import CLI, ROOT

HOLDER = """
import sys
from mlops_provision import locks
with locks.hold(sys.argv[1:], wait=0):
    print("held", flush=True)
    sys.stdin.readline()  # hold until the test says so
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_PROVISION_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def _holder(*names: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *names], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ), cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_held_lock_names_its_holder(home: Path) -> None:
    other = _holder("vm1")
    try:
        with pytest.raises(ProvisionError) as err:
            with locks.hold(["vm1"], wait=0):
                pass
    finally:
        other.communicate("\n", timeout=10)
    message = str(err.value)
    assert message.startswith(f"another deploy to vm1 is running from this machine: pid {other.pid}, "
                              f"user {getpass.getuser()}, started ")
    assert message.endswith("; wait for it, or pass --lock-wait SECONDS")
    assert err.value.exit_code == 1
    with locks.hold(["vm1"], wait=0):  # free again once the holder is gone
        pass


def test_the_waiter_gets_the_lock_when_the_holder_ends(home: Path) -> None:
    other = _holder("vm1", "vm2")
    heard: list[str] = []
    began = time.monotonic()
    threading.Timer(1, other.kill).start()  # the kernel frees a killed holder's lock
    with locks.hold(["vm2"], wait=10, log=heard.append):
        waited = time.monotonic() - began
    other.wait(timeout=10)
    assert 0.8 < waited < 5
    assert heard and heard[0].startswith("waiting up to ") and f"another deploy to vm2 (pid {other.pid}, " in heard[0]


def test_the_wait_expires(home: Path) -> None:
    other = _holder("vm1")
    try:
        began = time.monotonic()
        with pytest.raises(ProvisionError, match=f"pid {other.pid}"):
            with locks.hold(["vm1"], wait=1.2):
                pass
        assert 1.1 < time.monotonic() - began < 3
    finally:
        other.communicate("\n", timeout=10)


def test_lock_files_have_safe_distinct_names(home: Path) -> None:
    assert locks.lock_file("vm1") == home / "locks" / "vm1.lock"
    a, b = locks.lock_file("/srv/a/inventory.yml"), locks.lock_file("_srv_a_inventory.yml")
    assert a != b and a.parent == b.parent == home / "locks"
    assert locks.lock_file("..").name.startswith("-")  # never a path component
    assert (home / "locks").stat().st_mode & 0o777 == 0o700


def test_targets_are_the_hosts_or_else_the_inventory(tmp_path: Path) -> None:
    assert locks.target_names(["vm2", "vm1", "vm2"], [tmp_path / "inv.yml"]) == ["vm1", "vm2"]
    assert locks.target_names([], [tmp_path / "." / "inv.yml"]) == [str((tmp_path / "inv.yml").resolve())]


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "--lock-wait: '-1' is not a whole number of seconds; valid: 0-3600"),
    ("soon", "--lock-wait: 'soon' is not a whole number of seconds; valid: 0-3600"),
    ("1.5", "--lock-wait: '1.5' is not a whole number of seconds; valid: 0-3600"),
    ("", "--lock-wait: '' is not a whole number of seconds; valid: 0-3600"),
    ("3601", "--lock-wait: 3601 seconds is out of range; valid: 0-3600"),
])
def test_lock_wait_outside_0_to_3600_is_refused(value: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        locks.parse_wait(value)
    assert str(err.value) == message
    assert (locks.parse_wait("0"), locks.parse_wait("3600")) == (0, 3600)


def test_lock_wait_is_checked_before_anything_runs(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_PROVISION_HOME": str(tmp_path / "state")}
    for command in (["deploy", "--host", "vm1"], ["destroy", "--host", "vm1", "--yes"]):
        proc = subprocess.run([CLI, *command, "--lock-wait", "7200"], capture_output=True, text=True, env=env,
                              timeout=60)
        assert proc.returncode == 2
        assert proc.stderr == "error: --lock-wait: 7200 seconds is out of range; valid: 0-3600\n"


def test_the_cli_waits_for_the_inventory_lock_and_sigterm_ends_the_wait(home: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("mlflow_servers:\n  hosts:\n    vm9:\n      ansible_host: 127.0.0.1\n      ansible_port: 9\n")
    other = _holder(str(inventory.resolve()))
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_PROVISION_HOME": str(home)}
        cli = subprocess.Popen([CLI, "destroy", "-i", str(inventory), "--yes", "--lock-wait", "60"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert cli.stderr is not None
        waiting = cli.stderr.readline()
        assert waiting.startswith(f"waiting up to 60 s for another deploy to {inventory.resolve()} (pid {other.pid}, ")
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=10)
        assert (cli.returncode, err) == (130, "interrupted\n")
    finally:
        other.communicate("\n", timeout=10)
