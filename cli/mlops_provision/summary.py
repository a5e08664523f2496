"""The per-host summary printed at the end of a deploy or destroy."""

from __future__ import annotations

from mlops_provision.health import Report
from mlops_provision.runner import HostResult, RunResult


def _counts(h: HostResult) -> str:
    return f"ok={h.ok} changed={h.changed} failed={h.failed} unreachable={h.unreachable}"


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
        elif check_mode:
            state = "checked (--check: nothing changed)"
        else:
            state = "deployed" if h.changed else "up to date (no changes)"
        lines.append(f"{name}: {state}  [{_counts(h)}]")
        for failure in h.failures[:3]:
            lines.append(f"  error      {failure.strip().splitlines()[0] if failure.strip() else failure}")
        if dep:
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
                f"  MLflow     {dep.get('version', '?')}",
                f"  backend    {dep.get('backend', '?')}",
                f"  artifacts  {dep.get('artifacts', '?')}",
                *_security_lines(name, dep),
                f"  health     {health_text}",
                f"  use        export MLFLOW_TRACKING_URI={url}",
            ]
            if dep.get("auth_user"):
                lines.append(f"             export MLFLOW_TRACKING_USERNAME={dep['auth_user']} "
                             f"MLFLOW_TRACKING_PASSWORD=$(mlops-provision user admin-password --host {name})")
            if dep.get("artifact_kind") in ("s3", "gs", "wasbs") and str(dep.get("serve_artifacts")) == "True":
                # MLflow >= 3.x clients fetch large artifacts of such stores through presigned URLs,
                # straight from the store, unless told otherwise.
                lines.append("             export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false"
                             "  # if clients cannot reach the store itself")
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)


def _security_lines(name: str, dep: dict[str, object]) -> list[str]:
    """Authentication, TLS and who may connect: what an operator must know about exposure."""
    lines = []
    if dep.get("auth_user"):
        lines.append(f"  auth       basic: admin user {dep['auth_user']}, password kept on this machine "
                     f"(mlops-provision user admin-password --host {name})")
    else:
        lines.append("  auth       NONE (--auth none): WARNING anyone who reaches the server can read, change "
                     "and delete every experiment, run and model")
    tls = str(dep.get("tls") or "")
    if tls:
        lines.append(f"  tls        {tls} (nginx in front; MLflow itself listens on 127.0.0.1 only)")
    ports = "443 and 80" if tls else str(dep.get("port", 5000))
    allow_from = dep.get("allow_from")
    allow = [str(a) for a in allow_from] if isinstance(allow_from, list) else []
    firewall = str(dep.get("firewall") or "unmanaged")
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
        state = "UNREACHABLE" if h.unreachable else ("FAILED" if h.failed else "removed")
        kept = "" if purge or h.failed or h.unreachable else " (data in /var/lib/mlflow kept; --purge-data removes it)"
        lines.append(f"{name}: {state}{kept}  [{_counts(h)}]")
        lines += [f"  error      {f.strip()}" for f in h.failures[:3]]
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)
