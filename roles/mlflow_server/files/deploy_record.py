#!/usr/bin/python3
"""The record of the last deploy that finished, and the check that nothing changed since.

A deploy that finished writes a record: the digest of everything it was asked for (role
variables, the role's own code, the host facts it used; computed on the control node) and a
snapshot of what it left on the host (every file it manages, the state and main process of
each unit, the firewall's rules). The next deploy asks first: same digest, same snapshot,
the lock free, and the server still answers as the record says? Then there is nothing to
do and the play ends for this host. Anything else, and the full deploy runs as always.

Runs as root with the system python3 (shipped with the `script` module). Prints one JSON
object and exits 0; the role decides.

  check  --digest D --spec JSON [--live JSON]
      {"converged": bool, "reason": why not, "deployment": the recorded summary facts}
  record --digest D [--status-digest S] --spec JSON --facts JSON|- --run-id ID
      writes the record (S: the digest without the admin password, which status compares) when the host's deploy lock is free and this run released it last (never
      while or after another deploy changed the host); {"recorded": bool, "reason": ...}
  status --digest S --spec JSON --live JSON [--answers JSON]
      what `mlops-provision status` shows: the check's three parts each answered (asked for the
      same? changed on the host since? answers as verified?), what runs, since when, and the
      last deploy: {"drift": [...], "service": {...}, "health": ..., "version": ..., "ready": ...};
      --digest - when this machine cannot compute it (no secrets); --answers: the server's answers
      to the admin this machine logs in as ({"version": [status, body], "ready": status}), which
      replace the calls with basic_auth.ini's password (`user passwd` does not change that file)
Any error means "not converged" / "not recorded", never a failed deploy.

The spec: {"record": path, "files": [path or glob ...] (content, mode, owner; directories
recursively), "stats": [path ...] (mode and owner only), "units": [name ...], "commands":
[[argv ...] ...] (output and exit code; skipped when argv[0] is not installed)}.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import glob
import hashlib
import http.client
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from typing import Any

LOCK = "/run/mlops-provision/deploy.lock"  # files/deploy_lock.py's lease
UNIT_PROPERTIES = ("ActiveState", "SubState", "MainPID", "ExecMainStartTimestampMonotonic", "UnitFileState",
                   "FragmentPath", "DropInPaths", "NeedDaemonReload")


def _file_entry(path: str) -> dict[str, Any]:
    st = os.lstat(path)
    entry: dict[str, Any] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
    if os.path.islink(path):
        entry["link"] = os.readlink(path)
    elif os.path.isfile(path):
        # Never follow a link or block on a FIFO swapped in after the lstat (the service user owns
        # some of these directories): only the regular file that was listed is read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return {**entry, "sha256": "not a regular file"}
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        entry["sha256"] = digest.hexdigest()
    return entry


def _files(patterns: list[str], skip: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            out[pattern] = None
        for top in matches:
            if not os.path.lexists(top):
                out[top] = None
                continue
            out[top] = _file_entry(top)
            if os.path.isdir(top) and not os.path.islink(top):
                for root, dirs, names in os.walk(top):
                    dirs.sort()
                    for name in sorted(dirs + names):
                        path = os.path.join(root, name)
                        if path != skip:
                            out[path] = _file_entry(path)
    return out


def _stats(paths: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        try:
            st = os.lstat(path)
            out[path] = [st.st_mode, st.st_uid, st.st_gid, os.readlink(path) if os.path.islink(path) else ""]
        except FileNotFoundError:
            out[path] = None
    return out


def _units(names: list[str]) -> dict[str, Any]:
    if not names:
        return {}
    out = subprocess.run(["systemctl", "show", *names, *(f"--property={p}" for p in UNIT_PROPERTIES)],
                         capture_output=True, text=True, check=False).stdout
    # One block per unit, in the order asked, separated by blank lines.
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip().split("\n\n")]
    return dict(zip(names, blocks, strict=False))


def _commands(commands: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for argv in commands:
        if not shutil.which(argv[0]):
            continue
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        out[" ".join(argv)] = [done.returncode, done.stdout, done.stderr]
    return out


def snapshot(spec: dict[str, Any]) -> dict[str, Any]:
    return {"files": _files(spec.get("files", []), spec["record"]), "stats": _stats(spec.get("stats", [])),
            "units": _units(spec.get("units", [])), "commands": _commands(spec.get("commands", []))}


def _lease_free(lease: dict[str, Any]) -> bool:
    return not lease or float(lease.get("expires", 0)) < time.time()


def _read_lease() -> dict[str, Any]:
    try:
        with open(LOCK, encoding="utf-8") as fh:
            return json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return {}


def _get(url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 (http(s) to 127.0.0.1, built here)
    if auth:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:  # noqa: S310 (http(s) to 127.0.0.1)
            return answer.status, answer.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (OSError, ValueError, http.client.HTTPException) as err:
        return 0, str(err)


def _admin(auth_config: str) -> tuple[str, str]:
    ini = configparser.ConfigParser()  # the template doubles % for its interpolation
    ini.read(auth_config)
    return ini.get("mlflow", "admin_username", fallback=""), ini.get("mlflow", "admin_password", fallback="")


def live(checks: dict[str, Any], answers: dict[str, Any] | None = None) -> str:
    """'' when the server answers as a verified deploy leaves it; else what is wrong. answers:
    the admin's calls, made elsewhere with the control node's password."""
    base = f"http://127.0.0.1:{checks['port']}"
    status, body = _get(base + "/health")
    if status != 200:
        return f"/health answered {status or body}"
    if checks.get("auth_config"):
        status, _ = _get(base + checks["auth_probe_path"])
        if status != 401:
            return f"an anonymous API call answered {status}, not 401"
        status, body = (answers["version"][0], answers["version"][1]) if answers else \
            _get(base + "/version", auth=_admin(checks["auth_config"]))
    else:
        status, body = _get(base + "/version")
    if status != 200 or body != checks["version"]:
        return f"/version answered {status} {body!r}, not MLflow {checks['version']}"
    # A call that reads the database (/health and /version do not): a stopped database is a change.
    if answers and checks.get("auth_config"):
        status = answers["ready"]
    else:
        status, _ = _get(base + checks["auth_probe_path"],
                         auth=_admin(checks["auth_config"]) if checks.get("auth_config") else None)
    if status != 200:
        return f"an API call that reads the database answered {status}"
    if checks.get("renew_cert"):  # the full deploy makes a new self-signed certificate 30 days before its end
        ends = subprocess.run(["openssl", "x509", "-noout", "-checkend", "2592000", "-in", checks["renew_cert"]],
                              capture_output=True, check=False)
        if ends.returncode != 0:
            return "the self-signed certificate ends within 30 days (or cannot be read)"
    if checks.get("https_port"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # nginx's own health through TLS; the certificate is in the snapshot
        status, body = _get(f"https://127.0.0.1:{checks['https_port']}/health", context=context)
        if status != 200:
            return f"/health through nginx answered {status or body}"
    return ""


def check(args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(args.spec)
    try:
        with open(spec["record"], encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return {"converged": False, "reason": "no record of a finished deploy"}
    if record.get("digest") != args.digest:
        return {"converged": False, "reason": "this deploy asks for something else"}
    if not _lease_free(_read_lease()):
        return {"converged": False, "reason": "another deploy holds the host's lock"}
    changed = changed_since(record, spec)
    if changed:
        return {"converged": False, "reason": "changed on the host: " + ", ".join(changed[:5])}
    problem = live(json.loads(args.live))
    if problem:
        return {"converged": False, "reason": problem}
    return {"converged": True, "reason": "", "deployment": record.get("facts", {})}


def changed_since(record: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """What differs between the host now and the record's snapshot ("files:/etc/mlflow/mlflow.env")."""
    now = snapshot(spec)
    before = record.get("snapshot") or {}
    return sorted(f"{part}:{key}" for part in now for key in set(now[part]) | set(before.get(part, {}))
                  if now[part].get(key) != before.get(part, {}).get(key))


def _service(name: str = "mlflow.service") -> dict[str, Any]:
    """State, main process and seconds since it started (CLOCK_MONOTONIC, as systemd counts)."""
    props = _units([name]).get(name, {})
    started = int(props.get("ExecMainStartTimestampMonotonic") or 0)
    active = props.get("ActiveState", "")
    return {"state": active or "unknown", "pid": int(props.get("MainPID") or 0),
            "uptime_s": round(time.monotonic() - started / 1e6) if started and active == "active" else None}


def status(args: argparse.Namespace) -> dict[str, Any]:
    """Each part of the check answered on its own, and what runs: nothing stops at the first
    difference. Reads only."""
    spec, checks = json.loads(args.spec), json.loads(args.live)
    try:
        with open(spec["record"], encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = {}
    drift = []
    if not record:
        drift.append("no record of a finished deploy")
    else:
        if args.digest == "-":
            drift.append("cannot compare with the configuration: this machine does not have the realm's admin "
                         "password and secret key (deploy from here once, or bring the secrets store)")
        elif record.get("status_digest", record.get("digest")) != args.digest:
            drift.append("the configuration asks for something else than the last deploy")
        changed = changed_since(record, spec)
        if changed:
            drift.append("changed on the host since the last deploy: " + ", ".join(changed[:8])
                         + (f" and {len(changed) - 8} more" if len(changed) > 8 else ""))
    answers = json.loads(args.answers) if args.answers else None
    problem = live(checks, answers)
    if problem:
        drift.append(problem)
    lease = _read_lease()
    base = f"http://127.0.0.1:{checks['port']}"
    admin = _admin(checks["auth_config"]) if checks.get("auth_config") else None
    health, _ = _get(base + "/health")
    if answers and admin:
        (version_status, version), ready = answers["version"], answers["ready"]
    else:
        version_status, version = _get(base + "/version", auth=admin)
        ready, _ = _get(base + checks["auth_probe_path"], auth=admin)  # reads the tracking database
    facts = record.get("facts", {}).get("server", {})
    return {
        "drift": drift,
        "deploying": not _lease_free(lease),
        "service": _service(),
        "health": "ok" if health == 200 else f"answered {health or 'nothing'}",
        "version": version if version_status == 200 else "",
        "ready": "ok" if ready == 200 else f"a database read answered {ready or 'nothing'}",
        "last_deploy": {"at": record.get("recorded"), "version": facts.get("version", ""),
                        "backend": facts.get("backend", "")} if record else {},
    }


def record(args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(args.spec)
    os.makedirs(os.path.dirname(LOCK), mode=0o700, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # no deploy takes the lease while the snapshot is taken
        try:
            lease = json.loads(lock.read() or "{}")
        except ValueError:
            lease = {}
        if not _lease_free(lease):
            return {"recorded": False, "reason": "another deploy took the host's lock"}
        try:
            with open(os.path.join(os.path.dirname(LOCK), "last-release"), encoding="utf-8") as fh:
                released_by = fh.read().strip()
        except OSError:
            released_by = ""
        if released_by != args.run_id:
            return {"recorded": False, "reason": "another deploy took and released the host's lock since this one"}
        body = {"digest": args.digest, "status_digest": args.status_digest or args.digest, "snapshot": snapshot(spec), "facts": json.loads(args.facts),
                "recorded": time.time()}
        directory = os.path.dirname(spec["record"])
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd2, tmp = tempfile.mkstemp(dir=directory, prefix=".deploy-record.")
        with os.fdopen(fd2, "w", encoding="utf-8") as out:
            json.dump(body, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, spec["record"])
    return {"recorded": True, "reason": ""}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    ck = sub.add_parser("check")
    ck.add_argument("--digest", required=True)
    ck.add_argument("--spec", required=True)
    ck.add_argument("--live", required=True)
    st = sub.add_parser("status")
    st.add_argument("--digest", required=True)
    st.add_argument("--spec", required=True)
    st.add_argument("--live", required=True)
    st.add_argument("--answers", default="", help="JSON: the admin's calls, made with the control node's password")
    rc = sub.add_parser("record")
    rc.add_argument("--digest", required=True)
    rc.add_argument("--status-digest", default="", help="the digest without the admin password (status)")
    rc.add_argument("--spec", required=True)
    rc.add_argument("--facts", required=True, help="JSON, or - for standard input")
    rc.add_argument("--run-id", required=True, help="this deploy's lock holder (files/deploy_lock.py)")
    args = parser.parse_args()
    if args.command == "record" and args.facts == "-":
        args.facts = sys.stdin.read()
    try:
        result = {"check": check, "status": status, "record": record}[args.command](args)
    except Exception as err:  # noqa: BLE001 - any doubt means the full deploy, never a failed one
        key = {"check": "converged", "status": "error", "record": "recorded"}[args.command]
        result = {key: args.command == "status", "reason": f"{type(err).__name__}: {err}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
