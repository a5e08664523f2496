"""The per-host summary printed at the end of a deploy or destroy."""

from __future__ import annotations

from typing import Any

from mlops_provision.deployment import Deployment
from mlops_provision.health import Report
from mlops_provision.runner import HostResult, RunResult

INTERRUPTED = "INTERRUPTED (the host may be half-changed)"
INCOMPLETE = "INCOMPLETE (the run ended early; see the log)"


def _counts(h: HostResult) -> str:
    return f"ok={h.ok} changed={h.changed} failed={h.failed} unreachable={h.unreachable}"


def interrupted_message(result: RunResult) -> str:
    """For stderr when a run was cancelled (Ctrl-C, SIGTERM): where it stopped and what to do."""
    if not result.last_task:
        return "interrupted before the first task; no host was changed: run the same command again"
    return (f"interrupted during {result.phase} (task {result.last_task_number}: {result.last_task}); "
            "the host may be half-changed: run the same command again to converge")


def _ended_early(result: RunResult) -> bool:
    """A failed run that no failed or unreachable host explains (ansible-playbook died, a
    play-level error): hosts without failures did not necessarily get through their tasks."""
    return (result.rc != 0 and not result.interrupted
            and not any(h.failed or h.unreachable for h in result.hosts.values()))


def _host_line(name: str, h: HostResult, state: str, result: RunResult) -> str:
    # A cancelled run has no final statistics: counts would read as "nothing happened".
    return f"{name}: {state}" if result.interrupted else f"{name}: {state}  [{_counts(h)}]"


def deploy_summary(result: RunResult, urls: dict[str, str], health: dict[str, Report],
                   check_mode: bool = False) -> str:
    lines: list[str] = []
    for name in sorted(result.hosts):
        h = result.hosts[name]
        dep = h.deployment
        if h.unreachable:
            state = "UNREACHABLE"
        elif h.failed:
            state = "FAILED"
        elif result.interrupted:
            state = INTERRUPTED
        elif _ended_early(result):
            state = INCOMPLETE
        elif check_mode:
            state = "checked (--check: nothing changed)"
        else:
            state = "deployed" if h.changed else "up to date (no changes)"
        lines.append(_host_line(name, h, state, result))
        for failure in h.failures[:3]:
            lines.append(f"  error      {failure.strip().splitlines()[0] if failure.strip() else failure}")
        if check_mode and dep is not None and dep.plan is not None:
            lines += _plan_lines(dep.plan)
        if dep is not None:
            url = urls.get(name, "")
            rep = health.get(name)
            if rep is None:
                health_text = "not checked"
            elif rep.healthy:
                ms = next((c.ms for c in rep.checks if c.name == "health"), 0.0)
                health_text = f"OK ({ms:.0f} ms from this machine)"
            else:
                bad = next((c.detail for c in rep.checks if not c.ok), "")
                health_text = (f"not reachable from this machine (it answered on the host itself): {bad}"
                               if rep.unreachable else f"FAILING: {bad}")
            lines += [
                f"  URL        {url}",
                f"  MLflow     {dep.version or '?'}",
                *(["  checked    nothing to do: files, units, firewall and process as the last deploy left them;"
                   " /health, /version and the login answer"] if dep.unchanged else []),
                *([f"  restarted  yes: {'; '.join(dep.restart_reasons) or 'reason not reported'}"]
                  if dep.restarted and not check_mode else []),
                *_migration_lines(dep),
                *_restore_lines(dep),
                f"  backend    {dep.backend or '?'}",
                f"  artifacts  {dep.artifacts or '?'}",
                *_security_lines(name, dep),
                f"  health     {health_text}",
                f"  use        export MLFLOW_TRACKING_URI={url}",
            ]
            if dep.auth_user:
                lines.append(f"             export MLFLOW_TRACKING_USERNAME={dep.auth_user} "
                             f"MLFLOW_TRACKING_PASSWORD=$(mlops-provision user admin-password --host {name})")
            if dep.artifact_kind in ("s3", "gs", "wasbs") and dep.serve_artifacts:
                # MLflow >= 3.x clients fetch large artifacts of such stores through presigned URLs,
                # straight from the store, unless told otherwise.
                lines.append("             export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false"
                             "  # if clients cannot reach the store itself")
        if h.load_balancer and not h.failed:
            lines += _load_balancer_lines(name, h.load_balancer, urls.get(name, ""), health.get(name))
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)


def _load_balancer_lines(name: str, lb: dict[str, Any], url: str, rep: Report | None) -> list[str]:
    """HAProxy in front of the servers (role mlflow_lb): the one URL, each server's state."""
    servers = lb.get("servers") or {}
    kept = lb.get("kept_out") or []
    states = ", ".join(f"{server} {state}" + (" (mlflow_lb_maintenance)" if server in kept else "")
                       for server, state in sorted(servers.items())) or "none"
    if rep is None:
        health_text = "not checked"
    elif rep.healthy:
        health_text = f"OK ({next((c.ms for c in rep.checks if c.name == 'health'), 0.0):.0f} ms from this machine)"
    else:
        health_text = "FAILING: " + next((c.detail for c in rep.checks if not c.ok), "")
    return [f"  URL        {url}  (load balancer: HAProxy)", f"  servers    {states}",
            f"  health     {health_text}", f"  use        export MLFLOW_TRACKING_URI={url}",
            f"             (log in as on the servers: mlops-provision user admin-password --host {name})"]


DATABASE_NAMES = {"tracking": "tracking", "auth": "users"}


def _recovery(left: dict[str, Any]) -> str:
    backup = left.get("backup") or "(nothing to put back: the host held no databases)"
    if left.get("kind") == "restore":
        return (f"a restore of {left.get('archive', '?')} did not finish: the data from before it is back "
                f"(databases: {backup}{'; artifacts: ' + left['artifacts'] if left.get('artifacts') else ''})")
    return f"an earlier deploy was killed mid-migration: restored its backup {backup} first"


def _migration_lines(dep: Deployment) -> list[str]:
    """schema migrated REV_A -> REV_B (backup: PATH), one database per line."""
    lines = [f"  recovered  {_recovery(dep.recovered)}"] if dep.recovered else []
    if not dep.migration:
        return lines
    label = "schema"
    for name, (before, after) in dep.migration.items():
        lines.append(f"  {label:<10} migrated {DATABASE_NAMES.get(name, name)} {before} → {after}")
        label = ""
    lines[-1] += f" (backup: {dep.backup})" if dep.backup else ""
    return lines


def _restore_lines(dep: Deployment) -> list[str]:
    """restore --from: what came back, and where the data it replaced went."""
    if not dep.restored:
        return []
    from mlops_provision.archives import describe

    got = dep.restored
    adopted = got.get("adopted") or {}
    if adopted:  # restore --from-sqlite: a server installed by hand
        where = adopted.get("sqlite", "?") + (f" and {adopted['artifacts']}" if adopted.get("artifacts") else "")
        lines = [f"  adopted    {where}: {describe(got)}; {adopted.get('rewritten_uris', 0)} artifact URIs now "
                 "point at the managed store (the originals were only read)"]
    else:
        lines = [f"  restored   {describe(got)}; taken on {got.get('host', '?')} at {got.get('created_at', '?')}"]
    if dep.backup:
        lines.append(f"             the databases it replaced: {dep.backup} (on the host)")
    if got.get("replaced_artifacts"):
        lines.append(f"             the artifacts it replaced: {got['replaced_artifacts']} (on the host)")
    return lines


def _ended_state(h: HostResult, result: RunResult, done: str, finished: bool = True) -> str:
    """A host's state word for a run that is not a deploy: done only for a run that finished."""
    if h.unreachable or h.failed:
        return "UNREACHABLE" if h.unreachable else "FAILED"
    if result.interrupted:
        return INTERRUPTED
    if _ended_early(result) or not finished:
        return INCOMPLETE
    return done


def backup_summary(result: RunResult) -> str:
    from mlops_provision.archives import describe

    lines = []
    for name in sorted(result.hosts):
        h = result.hosts[name]
        state = _ended_state(h, result, "backed up", finished=bool(h.backup))
        lines.append(_host_line(name, h, state, result))
        lines += [f"  error      {f.strip()}" for f in h.failures[:3]]
        if h.backup and not h.failed:
            got = h.backup
            revisions = ", ".join(f"{DATABASE_NAMES.get(kind, kind)} {db.get('revision')}"
                                  for kind, db in got.get("databases", {}).items())
            lines += [
                f"  archive    {got.get('fetched')} ({int(got.get('size', 0)) / 1e6:.1f} MB, checksums checked here)",
                f"  holds      {describe(got)}",
                f"  MLflow     {got.get('mlflow_version')}; schema {revisions}",
            ]
            location = got.get("artifacts", {}).get("location", "")
            if location and not got.get("artifacts", {}).get("copied"):
                lines.append(f"  note       artifacts in {location} are not in the archive: back up that store itself")
            lines.append(f"  restore    mlops-provision restore --host {name} --from {got.get('fetched')}")
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)


def backup_list_summary(result: RunResult) -> str:
    lines = []
    for name in sorted(result.hosts):
        h = result.hosts[name]
        if h.unreachable or h.failed:
            lines.append(_host_line(name, h, "UNREACHABLE" if h.unreachable else "FAILED", result))
            lines += [f"  error      {f.strip()}" for f in h.failures[:3]]
            continue
        found = h.backup.get("archives", [])
        schedule = h.backup.get("schedule") or "none (deploy --backup-schedule CALENDAR sets one)"
        lines.append(f"{name}: {len(found)} scheduled backups in {h.backup.get('dir', '?')}; schedule: {schedule}")
        if found:
            lines.append(f"  {'NAME':<50} {'SIZE':>9}  {'MLFLOW':<8} {'RUNS':>6}  TAKEN")
        for got in found:
            runs = got.get("databases", {}).get("tracking", {}).get("counts", {}).get("runs", "?")
            lines.append(f"  {got.get('name', '?'):<50} {int(got.get('size', 0)) / 1e6:>6.1f} MB  "
                         f"{got.get('mlflow_version', '?'):<8} {runs:>6}  {got.get('created_at', '?')}")
        if found:
            lines.append(f"  restore    mlops-provision restore --host {name} --from @{found[0].get('name')}")
        ignored = [str(n) for n in h.backup.get("ignored", [])]
        if ignored:  # never offered for a restore, never removed by the timer
            more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
            lines.append(f"  ignored    {len(ignored)} other files there, not archives of this host with their "
                         f"summary: {', '.join(n[:80] for n in ignored[:5])}{more}")
    return "\n".join(lines)


def _plan_lines(plan: list[str]) -> list[str]:
    """--check: what a real deploy would do on the host, one line each."""
    if not plan:
        return ["  plan       no changes"]
    return [f"  would      {step[len('would '):]}" if step.startswith("would ") else f"  plan       {step}"
            for step in plan]


def _security_lines(name: str, dep: Deployment) -> list[str]:
    """Authentication, TLS and who may connect: what an operator must know about exposure."""
    lines = []
    if dep.auth_user:
        lines.append(f"  auth       basic: admin user {dep.auth_user}, password kept on this machine "
                     f"(mlops-provision user admin-password --host {name})")
    else:
        lines.append("  auth       NONE (--auth none): WARNING anyone who reaches the server can read, change "
                     "and delete every experiment, run and model")
    tls = dep.tls
    if tls:
        lines.append(f"  tls        {tls} (nginx in front; MLflow itself listens on 127.0.0.1 only)")
    ports = "443 and 80" if tls else str(dep.port)
    allow = dep.allow_from
    firewall = dep.firewall
    if allow:
        lines.append(f"  firewall   port {ports} open only to {', '.join(allow)} ({firewall})")
    elif firewall in ("none", "unmanaged"):
        why = "not managed here" if firewall == "unmanaged" else "no host firewall active"
        lines.append(f"  firewall   port {ports} open to everyone ({why}; --allow-from CIDR needs ufw, "
                     "firewalld or nftables)")
    else:
        lines.append(f"  firewall   port {ports} open to everyone ({firewall}; --allow-from CIDR limits it)")
    return lines


def destroy_summary(result: RunResult, purge: bool) -> str:
    lines = []
    for name in sorted(result.hosts):
        h = result.hosts[name]
        state = _ended_state(h, result, "removed" + ("" if purge else
                                                     " (data in /var/lib/mlflow kept; --purge-data removes it)"))
        lines.append(_host_line(name, h, state, result))
        lines += [f"  error      {f.strip()}" for f in h.failures[:3]]
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)
