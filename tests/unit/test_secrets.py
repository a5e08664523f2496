"""The secrets store: --check works on a throwaway copy; `sandbox down` forgets a sandbox's secrets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mlops_provision import commands, endpoints
from mlops_provision.sandbox import machines
from mlops_provision.secrets import SecretStore, throwaway_copy

SANDBOX_SECRETS = ["mlflow-admin-vm1.password", "mlflow-flask-vm1.key", "postgresql-vm1.password"]
KEPT = ["mlflow-admin-vm2.password", "aws-secret-access-key"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_PROVISION_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def _fill(directory: Path, names: list[str]) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(f"value-of-{name} salt=abc\n")


def test_the_check_copy_holds_the_same_secrets_privately_and_keeps_nothing(tmp_path: Path) -> None:
    real = tmp_path / "secrets"
    _fill(real, ["mlflow-admin-vm1.password"])
    with throwaway_copy(real) as copy:
        assert copy != real
        assert copy.stat().st_mode & 0o777 == 0o700
        kept = copy / "mlflow-admin-vm1.password"
        assert kept.read_text() == "value-of-mlflow-admin-vm1.password salt=abc\n"
        assert kept.stat().st_mode & 0o777 == 0o600
        (copy / "postgresql-vm1.password").write_text("made in check mode\n")  # what a lookup would do
    assert not copy.exists()
    assert sorted(p.name for p in real.iterdir()) == ["mlflow-admin-vm1.password"]


def test_the_check_copy_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    with throwaway_copy(tmp_path / "none") as copy:
        assert list(copy.iterdir()) == []


def test_redaction_reads_the_copy_it_is_given(tmp_path: Path) -> None:
    from mlops_provision.runner import _secret_values

    with throwaway_copy(tmp_path / "none") as copy:
        (copy / "mlflow-admin-vm1.password").write_text("GeneratedInCheckMode salt=x\n")
        assert _secret_values(copy) == ["GeneratedInCheckMode"]


def _down(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          vault_file: Path | None = None) -> tuple[str, str]:
    # The container side of `down` needs podman; what it removes on this machine does not.
    monkeypatch.setattr(machines, "down", lambda n: False)
    args = argparse.Namespace(command="sandbox", sandbox_command="down", name=name, ask_vault_pass=False,
                              vault_password_file=str(vault_file) if vault_file else None)
    assert commands.dispatch(args) == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_down_removes_the_sandboxs_secrets_and_endpoint(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _fill(home / "secrets", SANDBOX_SECRETS + KEPT)
    endpoints.record("vm1", "http://127.0.0.1:1", {"auth_user": "admin", "auth_realm": "vm1"})
    endpoints.record("vm2", "http://127.0.0.1:2", {"auth_user": "admin", "auth_realm": "vm2"})
    out, err = _down("vm1", monkeypatch, capsys)
    assert out == "sandbox vm1 did not exist\n" and err == ""
    assert sorted(p.name for p in (home / "secrets").iterdir()) == sorted(KEPT)
    assert list(endpoints.load_all()) == ["vm2"]
    assert (home / "endpoints.json").stat().st_mode & 0o777 == 0o600


def test_down_opens_the_vault_when_given_its_password(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    password = tmp_path / "vault-pass"
    password.write_text("correct horse\n")
    store = SecretStore(b"correct horse")
    with store.session() as work:
        _fill(work, SANDBOX_SECRETS + KEPT)
    assert (home / "secrets.vault").exists()
    _, err = _down("vm1", monkeypatch, capsys, password)
    assert err == ""
    with store.session() as work:
        assert sorted(p.name for p in work.iterdir()) == sorted(KEPT)


def test_down_without_the_vault_password_leaves_the_vault_and_says_what_remains(
        home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with SecretStore(b"pw").session() as work:
        _fill(work, SANDBOX_SECRETS)
    before = (home / "secrets.vault").read_bytes()
    _, err = _down("vm1", monkeypatch, capsys)
    assert (home / "secrets.vault").read_bytes() == before
    assert err.startswith(f"note: {home / 'secrets.vault'} is vault-encrypted and no vault password was given, "
                          f"so {', '.join(SANDBOX_SECRETS)} stay in it")
    assert "--vault-password-file FILE" in err


def test_a_wrong_vault_password_stops_before_the_sandbox_is_removed(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SecretStore(b"right").session() as work:
        _fill(work, SANDBOX_SECRETS)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    removed: list[str] = []
    monkeypatch.setattr(machines, "down", lambda n: removed.append(n) or True)
    args = argparse.Namespace(command="sandbox", sandbox_command="down", name="vm1", ask_vault_pass=False,
                              vault_password_file=str(wrong))
    with pytest.raises(Exception, match="the password does not open"):
        commands.dispatch(args)
    assert removed == []


def test_secret_names_refuse_a_bad_sandbox_name() -> None:
    with pytest.raises(Exception, match="--name"):
        machines.secret_names("../x")


@pytest.mark.parametrize("check", [True, False])
def test_check_mode_hands_the_roles_the_copy(home: Path, monkeypatch: pytest.MonkeyPatch, check: bool) -> None:
    """The run (here its stand-in: a real one needs a host) gets the copy as mlflow_secrets_dir
    and for redaction; what a lookup creates there is gone afterwards."""
    from mlops_provision import runner
    from mlops_provision.commands._common import run_playbook
    from mlops_provision.targets import Targets

    _fill(home / "secrets", ["mlflow-admin-vm1.password"])
    seen: list[runner.RunRequest] = []

    def fake_run(req: runner.RunRequest) -> runner.RunResult:
        seen.append(req)
        assert req.secrets_dir is not None
        (req.secrets_dir / "postgresql-vm1.password").write_text("NewInThisRun salt=x\n")
        assert "NewInThisRun" in runner._secret_values(req.secrets_dir)
        return runner.RunResult("deploy", 0, 1.0, home, {"vm1": runner.HostResult("vm1", ok=1)})

    monkeypatch.setattr(runner, "run", fake_run)
    args = argparse.Namespace(lock_wait="0", vault_password_file=None, ask_vault_pass=False, check=check,
                              extra_vars=[], limit=None, tags=None, diff=False, verbose=0)
    run_playbook("deploy", args, Targets(pattern="vm1"), {}, ["vm1"])
    req = seen[0]
    assert (req.secrets_dir == home / "secrets") is not check
    assert req.extravars["mlflow_lock_wait_sec"] == 0
    assert (home / "secrets" / "postgresql-vm1.password").exists() is not check
