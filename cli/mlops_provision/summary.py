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
                f"  health     {health_text}",
                f"  use        export MLFLOW_TRACKING_URI={url}",
            ]
            if dep.get("artifact_kind") in ("s3", "gs", "wasbs") and str(dep.get("serve_artifacts")) == "True":
                # MLflow >= 3.x clients fetch large artifacts of such stores through presigned URLs,
                # straight from the store, unless told otherwise.
                lines.append("             export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false"
                             "  # if clients cannot reach the store itself")
    lines.append(f"duration {result.duration:.1f} s; full log: {result.run_dir / 'ansible.log'}")
    return "\n".join(lines)


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
