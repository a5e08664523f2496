"""Run one playbook through ansible-runner; keep a redacted log of it in a run directory.

Secrets travel only in a 0600 vars file inside a private temporary directory that is deleted
after the run; the kept run directory holds the redacted output, the command and a summary.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops_provision import interrupt, paths
from mlops_provision.deployment import Deployment
from mlops_provision.errors import ProvisionError
from mlops_provision.failures import ARG_SPEC_TASK, LEGACY_VALIDATION_TASKS, classify, task_name
from mlops_provision.progress import Progress
from mlops_provision.redact import Redactor

KEEP_RUNS = 50
# Tasks whose failure means bad input whatever their message (see failures.BAD_INPUT_MARKER).
VALIDATION_TASKS = (ARG_SPEC_TASK, *LEGACY_VALIDATION_TASKS)
# deploy.yml's first play, which runs on the control node (roles/mlflow_server/tasks/realms.yml),
# and the name its refusal goes under in the summary (not "localhost", which no one targeted).
INVENTORY_CHECK_PLAY = "Check the inventory as a whole"
INVENTORY_CHECK_NAME = "inventory (checked on this machine)"
# How often ansible-runner polls the cancel callback: Ctrl-C takes effect within this.
CANCEL_POLL_S = 1


@dataclass
class HostResult:
    name: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    validation_failed: bool = False
    stopped_answering: bool = False  # SSH died mid-run: counted unreachable, not failed
    deployment: Deployment | None = None  # the role's mlflow_deployment fact, once verify ran
    backup: dict[str, Any] = field(default_factory=dict)  # `backup`: the role's mlflow_backup fact
    load_balancer: dict[str, Any] = field(default_factory=dict)  # role mlflow_lb's mlflow_lb_deployment fact
    status: dict[str, Any] = field(default_factory=dict)  # `status`: mlflow_server_status or mlflow_lb_status


@dataclass
class RunResult:
    action: str
    rc: int
    duration: float
    run_dir: Path
    hosts: dict[str, HostResult]
    status: str = ""  # ansible-runner's: successful, failed, canceled, timeout
    signalled: bool = False  # SIGINT or SIGTERM reached the CLI during the run
    last_task: str = ""
    last_task_number: int = 0
    last_task_hosts: str = ""

    @property
    def interrupted(self) -> bool:
        return self.status == "canceled" or self.signalled

    @property
    def phase(self) -> str:
        """'Configure' of 'Configure | Render the environment file'."""
        return self.last_task.split(" | ", 1)[0].strip() if self.last_task else ""

    @property
    def any_unreachable(self) -> bool:
        return any(h.unreachable for h in self.hosts.values())

    @property
    def any_failed(self) -> bool:
        return any(h.failed for h in self.hosts.values()) or (self.rc != 0 and not self.any_unreachable)


@dataclass
class RunRequest:
    action: str  # playbook name
    inventories: list[Path]
    generated_inventory: dict[str, Any]
    extravars: dict[str, Any]
    passthrough_extravars: list[str] = field(default_factory=list)
    limit: str | None = None
    tags: str | None = None
    check: bool = False
    diff: bool = False
    verbosity: int = 0
    secrets: list[str] = field(default_factory=list)
    secrets_dir: Path | None = None  # mlflow_secrets_dir: generated passwords, redacted from logs
    vault_password: bytes | None = None


def ansible_env() -> dict[str, str]:
    return {
        "ANSIBLE_ROLES_PATH": str(paths.roles_dir()),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "20",
        "ANSIBLE_TIMEOUT": "15",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_INTERPRETER_PYTHON": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_NOCOLOR": "True",
        # Keepalives: a host that stops answering mid-run fails within ~15 s instead of hanging.
        # No -C: module payloads are zip files and wheels are compressed; zlib only costs CPU.
        "ANSIBLE_SSH_ARGS": ("-o ControlMaster=auto -o ControlPersist=60s "
                             "-o ServerAliveInterval=5 -o ServerAliveCountMax=3"),
    }


def find_ansible_playbook(env: dict[str, str]) -> str:
    """Put this interpreter's bin directory first on PATH, here and in `env`, and find
    ansible-playbook there or on PATH.

    pipx, or a venv's bin/mlops-provision called by its full path, leave the venv's bin off
    PATH; ansible-runner would then fail to start ansible-playbook without a word (and the CLI
    would report that no host matched). ansible-runner resolves the executable with the
    parent's PATH, its child gets `env`: both need it.
    """
    bin_dir = str(Path(sys.executable).parent)
    rest = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and d != bin_dir]
    search = os.pathsep.join([bin_dir, *rest])
    os.environ["PATH"] = env["PATH"] = search
    found = shutil.which("ansible-playbook", path=search)
    if found is None:
        raise ProvisionError(f"ansible-playbook not found next to {sys.executable} or on PATH; "
                             "reinstall mlops-provision (it depends on ansible-core)")
    return found


def _new_run_dir(action: str) -> Path:
    runs = paths.state_dir() / "runs"
    runs.mkdir(mode=0o700, exist_ok=True)
    old = sorted(p for p in runs.iterdir() if p.is_dir())
    for stale in old[: max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = runs / f"{stamp}-{action}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs / f"{stamp}-{action}-{suffix}"
    run_dir.mkdir(mode=0o700)
    return run_dir


def _secret_values(directory: Path | None) -> list[str]:
    """Values of the password lookup files ('value[ salt=...]') in the secrets directory."""
    if directory is None or not directory.is_dir():
        return []
    return [p.read_text().split(" salt=")[0].strip() for p in directory.iterdir() if p.is_file()]


def limit_with_control_node(limit: str) -> str:
    """The --limit pattern plus localhost, where deploy.yml's first play checks the whole
    inventory, selecting the same hosts otherwise. Ansible applies every plain pattern first,
    then each &-pattern, then each !-pattern, so localhost joins the plain ones (`all` first when
    there are none); an intersection would drop it, so such a limit stays as it is and the check
    does not run (the role's own checks still do)."""
    from ansible.inventory.manager import split_host_pattern

    patterns = [str(p) for p in split_host_pattern(limit)]
    if any(p.startswith("&") for p in patterns):
        return limit
    if all(p.startswith("!") for p in patterns):
        patterns.insert(0, "all")
    return ",".join([*patterns, "localhost"])


def _cmdline(req: RunRequest, vars_file: Path, vault_file: Path | None) -> list[str]:
    args = ["-e", f"@{vars_file}"]
    if vault_file is not None:
        args += ["--vault-password-file", str(vault_file)]
    for extra in req.passthrough_extravars:
        args += ["-e", extra]
    if req.limit:
        args += ["--limit", limit_with_control_node(req.limit) if req.action == "deploy" else req.limit]
    if req.tags:
        args += ["--tags", req.tags]
    if req.check:
        args.append("--check")
    if req.diff:
        args.append("--diff")
    return args


def _count_tasks(playbook: Path, inventories: list[Path], cmdline: list[str], env: dict[str, str],
                 progress: Progress) -> None:
    """The m of "task n of m": the count of the last successful run of this action (it knows the
    dynamic includes), else `--list-tasks` in the background, without delaying the run. Listing
    parses the whole playbook again: about 0.9 CPU-seconds the run itself can use instead."""
    last = _task_counts().get(playbook.stem, 0)
    if last:
        progress.set_total(last)
        return
    exe = Path(sys.executable).with_name("ansible-playbook")
    cmd = [str(exe if exe.exists() else "ansible-playbook"), "--list-tasks", str(playbook)]
    for inv in inventories:
        cmd += ["-i", str(inv)]
    try:
        out = subprocess.run(cmd + cmdline, capture_output=True, text=True, env={**os.environ, **env},
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    tasks = [line for line in out.splitlines() if "TAGS:" in line and not line.strip().startswith("play #")]
    if tasks:
        progress.set_total(len(tasks) + 1)  # + fact gathering


def _task_counts_file() -> Path:
    return paths.state_dir() / "task-counts.json"


def _task_counts() -> dict[str, int]:
    try:
        return dict(json.loads(_task_counts_file().read_text()))
    except (OSError, ValueError):
        return {}


def _remember_task_count(action: str, count: int) -> None:
    counts = _task_counts()
    counts[action] = count
    _task_counts_file().write_text(json.dumps(counts))


def run(req: RunRequest) -> RunResult:
    import ansible_runner  # slow import: only when a playbook actually runs

    redact = Redactor(req.secrets + _secret_values(req.secrets_dir))
    run_dir = _new_run_dir(req.action)
    progress = Progress(redact, quiet=req.verbosity > 0)
    hosts: dict[str, HostResult] = {}
    playbook = paths.playbook(req.action)
    env = ansible_env()
    ansible_playbook = find_ansible_playbook(env)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="mlops-provision-") as private:
        private_dir = Path(private)
        vars_file = private_dir / "mlops-vars.yml"
        extravars = dict(req.extravars)
        if req.secrets_dir is not None:
            extravars["mlflow_secrets_dir"] = str(req.secrets_dir)
        _write_private(vars_file, yaml.safe_dump(extravars).encode())
        vault_file = None
        if req.vault_password is not None:
            vault_file = private_dir / "vault-password"
            _write_private(vault_file, req.vault_password)
        inventories = list(req.inventories)
        if req.generated_inventory:
            generated = private_dir / "generated-inventory.yml"
            generated.write_text(yaml.safe_dump(req.generated_inventory))
            inventories.insert(0, generated)
        cmdline = _cmdline(req, vars_file, vault_file)
        # ansible-runner reads its settings only from this file (a `settings=` argument is
        # dropped when the file is missing).
        (private_dir / "env").mkdir(mode=0o700)
        (private_dir / "env" / "settings").write_text(yaml.safe_dump({"pexpect_timeout": CANCEL_POLL_S}))
        counter = threading.Thread(target=_count_tasks, daemon=True,
                                   args=(playbook, inventories, cmdline, env, progress))
        counter.start()

        def on_event(event: dict[str, Any]) -> bool:
            _collect(event, hosts)
            return progress.handle(event)

        # A signal cancels the run through cancel_callback (ansible-runner then stops the play
        # with status 'canceled'); no KeyboardInterrupt would ever reach us from inside it.
        # ansible-playbook is started through `tether` so that it dies with this process.
        tethered = ["-m", "mlops_provision.tether", str(os.getpid()), ansible_playbook, str(playbook), *cmdline]
        with interrupt.deferred():
            result = ansible_runner.run(
                private_data_dir=str(private_dir),
                binary=sys.executable,
                inventory=[str(i) for i in inventories],
                cmdline=shlex.join(tethered),
                envvars=env,
                verbosity=req.verbosity or None,
                quiet=req.verbosity == 0,
                event_handler=on_event,
                cancel_callback=interrupt.requested,
                suppress_env_files=True,
            )
        progress.finish()
        redact = Redactor(req.secrets + _secret_values(req.secrets_dir))  # with passwords made in this run
        stdout = result.stdout.read() if result.stdout else ""
        (run_dir / "ansible.log").write_text(redact(stdout))
        (run_dir / "command").write_text(redact(shlex.join(["ansible-playbook", str(playbook), *cmdline])) + "\n")

    for entry in hosts.values():  # the summary prints them: a secret in a command's stderr stays masked
        entry.failures = [redact(text) for text in entry.failures]
    if result.rc == 0:
        _remember_task_count(req.action, progress.done)
    outcome = RunResult(action=req.action, rc=int(result.rc or 0), duration=time.monotonic() - started,
                        run_dir=run_dir, hosts=hosts, status=str(result.status or ""),
                        signalled=interrupt.requested(), last_task=progress.last_task,
                        last_task_number=progress.last_number, last_task_hosts=progress.last_hosts)
    summary = {"action": req.action, "rc": outcome.rc, "status": outcome.status,
               "duration_s": round(outcome.duration, 1),
               "last_task": {"number": outcome.last_task_number, "name": outcome.last_task,
                             "hosts": outcome.last_task_hosts},
               "hosts": {name: asdict(h) for name, h in hosts.items()}}
    (run_dir / "summary.json").write_text(redact(json.dumps(summary, indent=2)) + "\n")
    return outcome


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _collect(event: dict[str, Any], hosts: dict[str, HostResult]) -> None:
    kind = event.get("event", "")
    data = event.get("event_data", {})
    if kind == "playbook_on_stats":
        for stat, attr in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"),
                           ("dark", "unreachable"), ("skipped", "skipped")):
            for host, count in (data.get(stat) or {}).items():
                if host in hosts:  # not the control node of a passed inventory check
                    setattr(hosts[host], attr, int(count))
        for entry in hosts.values():
            if entry.stopped_answering and entry.failed:  # lost, not broken: exit 3
                entry.unreachable, entry.failed = entry.unreachable + entry.failed, 0
        return
    host = data.get("host")
    if not host:
        return
    if str(data.get("play", "")).startswith(INVENTORY_CHECK_PLAY):
        # The control node checking the whole inventory is no target host; only a refusal counts.
        if kind == "runner_on_failed":
            check = hosts.setdefault(INVENTORY_CHECK_NAME, HostResult(INVENTORY_CHECK_NAME))
            failure = classify(INVENTORY_CHECK_NAME, task_name(data), data.get("res") or {})
            check.failures.append(failure.message)
            check.failed += 1
            check.validation_failed |= failure.validation
        return
    entry = hosts.setdefault(host, HostResult(host))
    res = data.get("res") or {}
    if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
        failure = classify(host, task_name(data), res)
        entry.failures.append(failure.message)
        entry.validation_failed |= failure.validation
        entry.stopped_answering |= failure.lost_host and kind == "runner_on_failed"
    elif kind == "runner_on_ok":
        facts = res.get("ansible_facts") or {}
        if isinstance(facts.get("mlflow_deployment"), dict):
            entry.deployment = Deployment.from_fact(facts["mlflow_deployment"])
        if isinstance(facts.get("mlflow_backup"), dict):
            entry.backup = facts["mlflow_backup"]
        if isinstance(facts.get("mlflow_lb_deployment"), dict):
            entry.load_balancer = facts["mlflow_lb_deployment"]
        for role in ("server", "lb"):
            if isinstance(facts.get(f"mlflow_{role}_status"), dict):
                entry.status = {"kind": role, **facts[f"mlflow_{role}_status"]}
