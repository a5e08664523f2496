"""Health checks from the control node: /health, /version and, with deep=True, a real round
trip through the REST API (experiment, run, metric, artifact upload and download, cleanup).

Standard library only, so `health` starts fast and needs nothing but this package.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

HEALTH_EXPERIMENT = "mlops-provision-healthcheck"


class Unreachable(Exception):
    """No TCP/HTTP answer at all (refused, timeout, DNS)."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    ms: float


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)
    unreachable: bool = False

    @property
    def healthy(self) -> bool:
        return not self.unreachable and all(c.ok for c in self.checks)

    @property
    def version(self) -> str:
        return next((c.detail for c in self.checks if c.name == "version" and c.ok), "")

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "unreachable": self.unreachable,
                "checks": [asdict(c) for c in self.checks]}


@dataclass
class Access:
    """How to talk to a server: basic-auth credentials and a CA file for its certificate."""

    username: str = ""
    password: str = ""
    ca_file: str = ""


class Client:
    def __init__(self, url: str, timeout: float = 10.0, access: Access | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.access = access or Access()
        self.context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            try:
                self.context = ssl.create_default_context(cafile=self.access.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot use the CA file {self.access.ca_file!r}: {exc}") from None

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                query: dict[str, str] | None = None) -> tuple[int, bytes]:
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(target, data=data, method=method)  # noqa: S310 - URL checked to be http(s)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.access.username:
            token = base64.b64encode(f"{self.access.username}:{self.access.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:  # noqa: S310 - http(s) only
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"{self.url}: {reason}") from None

    def api(self, method: str, endpoint: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        status, payload = self.request(method, "/api/2.0/mlflow/" + endpoint, body=body, query=query)
        if status != 200:
            raise RuntimeError(f"{method} {endpoint}: HTTP {status} {payload[:200].decode(errors='replace')}")
        return json.loads(payload or b"{}")


def _timed(report: Report, name: str, func: Any) -> Any:
    start = time.perf_counter()
    try:
        ok, detail, value = func()
    except Unreachable:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a failed check with its reason
        ok, detail, value = False, str(exc), None
    report.checks.append(Check(name, ok, detail, round((time.perf_counter() - start) * 1000, 1)))
    return value


def check(url: str, deep: bool = False, timeout: float = 10.0, access: Access | None = None) -> Report:
    try:
        client = Client(url, timeout, access)
    except ValueError as exc:  # an unusable CA file: a failed check, not a crash
        return Report(url=url, checks=[Check("tls", False, str(exc), 0.0)])
    report = Report(url=client.url)
    try:
        def health() -> tuple[bool, str, None]:
            status, body = client.request("GET", "/health")
            text = body.decode(errors="replace").strip()
            return status == 200, f"HTTP {status} {text}"[:120], None

        def version() -> tuple[bool, str, None]:
            status, body = client.request("GET", "/version")
            if status == 401:
                return False, ("HTTP 401: the server wants a user; no working credentials (deploy from this "
                               "machine, or set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)"), None
            return status == 200, body.decode(errors="replace").strip()[:60] or f"HTTP {status}", None

        _timed(report, "health", health)
        _timed(report, "version", version)
        if deep and report.healthy:
            _deep(client, report)
    except Unreachable as exc:
        report.unreachable = True
        report.checks.append(Check("connect", False, str(exc), 0.0))
    return report


def _deep(client: Client, report: Report) -> None:
    """Experiment -> run -> metric -> artifact up and down -> cleanup, each step a check."""
    state: dict[str, Any] = {}

    def experiment() -> tuple[bool, str, None]:
        status, payload = client.request("GET", "/api/2.0/mlflow/experiments/get-by-name",
                                         query={"experiment_name": HEALTH_EXPERIMENT})
        if status == 200:
            state["exp"] = json.loads(payload)["experiment"]["experiment_id"]
        else:
            state["exp"] = client.api("POST", "experiments/create", {"name": HEALTH_EXPERIMENT})["experiment_id"]
        return True, f"experiment {HEALTH_EXPERIMENT} ({state['exp']})", None

    def run_and_metric() -> tuple[bool, str, None]:
        run = client.api("POST", "runs/create", {"experiment_id": state["exp"],
                                                 "start_time": int(time.time() * 1000)})["run"]["info"]
        state["run"], state["artifact_uri"] = run["run_id"], run["artifact_uri"]
        client.api("POST", "runs/log-metric", {"run_id": state["run"], "key": "probe", "value": 1.5,
                                               "timestamp": int(time.time() * 1000), "step": 0})
        metrics = client.api("GET", "runs/get", query={"run_id": state["run"]})["run"]["data"]["metrics"]
        ok = any(m["key"] == "probe" and m["value"] == 1.5 for m in metrics)
        return ok, f"run {state['run'][:8]} logged and read back metric probe=1.5", None

    def artifact() -> tuple[bool, str, None]:
        uri = str(state["artifact_uri"])
        if not uri.startswith("mlflow-artifacts:"):
            return True, f"skipped: artifacts go straight to {uri.split('/')[0]}// (direct mode)", None
        rel = uri.split(":", 1)[1].lstrip("/") + "/healthcheck.txt"
        path = "/api/2.0/mlflow-artifacts/artifacts/" + urllib.parse.quote(rel)
        blob = f"mlops-provision {uuid.uuid4()}\n".encode()
        status, _ = client.request("PUT", path, raw=blob)
        if status != 200:
            return False, f"upload failed: HTTP {status}", None
        status, back = client.request("GET", path)
        if status != 200 or back != blob:
            return False, f"download failed or differs: HTTP {status}", None
        client.request("DELETE", path)
        return True, f"uploaded and read back {len(blob)} bytes", None

    def cleanup() -> tuple[bool, str, None]:
        client.api("POST", "runs/delete", {"run_id": state["run"]})
        return True, "test run deleted", None

    for name, step in (("experiment", experiment), ("run+metric", run_and_metric),
                       ("artifact", artifact), ("cleanup", cleanup)):
        _timed(report, name, step)
        if not report.checks[-1].ok:
            break


def format_table(reports: dict[str, Report]) -> str:
    width = max([4, *(len(h) for h in reports)])
    lines = [f"{'HOST':<{width}}  {'CHECK':<11} {'RESULT':<6} {'MS':>7}  DETAIL"]
    for host, rep in reports.items():
        for c in rep.checks:
            lines.append(f"{host:<{width}}  {c.name:<11} {'ok' if c.ok else 'FAIL':<6} {c.ms:>7.1f}  {c.detail}")
        status = "healthy" if rep.healthy else ("UNREACHABLE" if rep.unreachable else "UNHEALTHY")
        lines.append(f"{host:<{width}}  {'=>':<11} {status}  {rep.url}")
    return "\n".join(lines)
