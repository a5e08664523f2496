"""What actually runs on this host, compared with what a deploy wants; and the wait for a
started server to be proven ours, current and healthy.

Runs as root with the system python3 (the role ships it with the `script` module, so it works
before anything is installed). Prints one JSON object and exits 0; the role decides.

  state --port P --venv-link L [--file F ...]
      the unit's state, the main process's venv and start time, the config files written
      after that start (an interrupted deploy), and who listens on port P
  layout [--user U] [--group G] [--ensure SPEC [--dry-run]] PATH ...
      for each path that exists: "dir" or the sha1 of a regular file's content, its octal mode,
      owner and group; the user's primary group, home and shell; the group's gid (the install
      step copies only the helper scripts that differ). With --ensure (JSON: group, user, home,
      shell, dirs of path/owner/group/mode, install_lock, stale_wheelhouses) it first waits for
      an install into this venv that a killed deploy left running, creates or corrects the
      service group, the service user and the install directories, and removes the wheelhouses
      killed deploys left: one module run instead of one per item. It names what it changed
      ("changed"); --dry-run (--check) names it and changes nothing
  wait --port P --timeout S [--version V] [--since EPOCH]
      until /health answers 200 from a process of mlflow.service (not a foreign program on
      the port) running MLflow V, or the unit has failed (systemd gave up), or S seconds;
      with --answers [--auth-config INI] [--probe-url URL], then also the answers the verify
      step checks: /health, /version as the admin of INI, an anonymous call to URL
"""

from __future__ import annotations

import argparse
import base64
import configparser
import fcntl
import glob
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

UNIT = "mlflow.service"


def show(*props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", UNIT, *(f"--property={p}" for p in props)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def started_at(monotonic_usec: str) -> float | None:
    """The main process's start as epoch seconds (microsecond precision, unlike /proc/stat)."""
    usec = int(monotonic_usec or 0)
    if not usec:
        return None
    return time.time() - (time.monotonic() - usec / 1e6)


def venv_of(pid: int) -> str:
    """The venv a process runs from: its interpreter (argv[0], the console script's shebang)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""
    return str(Path(argv0).parent.parent) if argv0.endswith(("/bin/python", "/bin/python3")) else ""


def mlflow_version_in(venv: str) -> str:
    for meta in Path(venv).glob("lib/python3*/site-packages/mlflow-*.dist-info/METADATA"):
        match = re.search(r"^Version: (\S+)$", meta.read_text(errors="replace"), re.M)
        if match:
            return match.group(1)
    return ""


def _ours(pid: int) -> bool:
    try:
        return any(line.endswith("/" + UNIT) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    except OSError:
        return False


def _masked_cmdline(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    text = " ".join(a.decode(errors="replace") for a in args)
    return re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", text)[:300]


def _listening_uids(port: int) -> list[int]:
    """Owners of the sockets listening on port, from /proc/net (needs no access to other
    processes' file descriptors, which a container without CAP_SYS_PTRACE lacks)."""
    uids = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                uids.append(int(fields[7]))
    return uids


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# Programs that only start another: `sh -c "mlflow server ..."` names the port in the shell's
# command line too, but the server is its child.
WRAPPERS = {"sh", "bash", "dash", "zsh", "ksh", "busybox", "env", "nohup", "setsid", "sudo", "su", "runuser",
            "screen", "tmux", "timeout", "nice", "ionice", "stdbuf"}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _guess_pid(uid: int, port: int) -> int:
    """A process of that user whose command line names the port (cmdlines are world-readable):
    the first that is not a shell or another wrapper, else the first."""
    found = []
    for proc in sorted((p for p in Path("/proc").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            if proc.stat().st_uid == uid and str(port) in _masked_cmdline(int(proc.name)).split(":")[-1]:
                found.append(int(proc.name))
        except OSError:
            continue
    return next((pid for pid in found if _comm(pid) not in WRAPPERS), found[0] if found else 0)


def _past_wrappers(pid: int) -> int:
    """The program a shell or wrapper started (`sh -c "mlflow server ..."`): its first
    descendant that is not itself a wrapper; pid itself when it is none."""
    if _comm(pid) not in WRAPPERS:
        return pid
    for child in _descendants(pid):
        if _comm(child) not in WRAPPERS:
            return child
    return pid


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _parent(pid: int) -> int:
    try:
        return int(re.findall(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[0])
    except (OSError, IndexError):
        return 0


def _absolute(uri: str, cwd: str) -> str:
    """A store as the server resolved it: sqlite:///rel and ./dir are relative to its directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.normpath(os.path.join(cwd, uri[len("sqlite:///"):]))
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri or ":/" in uri.split("/", 1)[0] + "/":  # another scheme: s3://, mlflow-artifacts:/
        return uri
    return os.path.normpath(os.path.join(cwd, uri))


def _cwd(pid: int) -> str:
    """A process's working directory. Root without CAP_SYS_PTRACE (a container) may not read
    another user's; that user may."""
    path = f"/proc/{pid}/cwd"
    try:
        return os.readlink(path)
    except OSError:
        pass
    try:
        info = Path(f"/proc/{pid}").stat()
        return subprocess.run(["readlink", path], user=info.st_uid, group=info.st_gid, capture_output=True,
                              text=True, check=False, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _family(pid: int) -> list[int]:
    """pid, its descendants (the `mlflow server` CLI listens itself and starts the workers; a
    shell may have started the CLI), then its ancestors."""
    ancestors, up = [], _parent(pid)
    while up > 1 and len(ancestors) < 4:
        ancestors.append(up)
        up = _parent(up)
    return [pid, *_descendants(pid), *ancestors]


def _descendants(pid: int, depth: int = 3) -> list[int]:
    """Children, then grandchildren, ... down to depth generations (a shell that started the
    `mlflow server` CLI that started its workers is three), each generation in pid order."""
    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            parents[int(proc.name)] = _parent(int(proc.name))
    found, generation = [], [pid]
    for _ in range(depth):
        generation = sorted(child for child, parent in parents.items() if parent in generation)
        found += generation
    return found


def mlflow_stores(pid: int) -> dict[str, str]:
    """The stores of a hand-started `mlflow server`: its CLI hands them to its workers in
    _MLFLOW_SERVER_* variables, relative to the directory it was started in."""
    for member in _family(pid):  # the first of the family that has them
        env = _environ(member)
        if "_MLFLOW_SERVER_FILE_STORE" in env:
            cwd = _cwd(member) or env.get("PWD", "/")
            backend = _absolute(env["_MLFLOW_SERVER_FILE_STORE"], cwd)
            root = _absolute(env.get("_MLFLOW_SERVER_ARTIFACT_ROOT", ""), cwd)
            # Served artifacts (mlflow-artifacts:/) live in the destination; otherwise the clients
            # wrote them to the artifact root.
            served = root.startswith("mlflow-artifacts:")
            where = (_absolute(env.get("_MLFLOW_SERVER_ARTIFACT_DESTINATION", "./mlartifacts"), cwd)
                     if served else root)
            return {"backend": re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", backend),
                    "artifacts": where, "sqlite": backend[len("sqlite:///"):] if backend.startswith("sqlite:///") else "",
                    "local_artifacts": where if where.startswith("/") else ""}
    return {}


def port_owner(port: int, service_user: str = "mlflow") -> dict[str, object]:
    """free, ours (a process of mlflow.service), or foreign (with the program, pid and user)."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError:  # no iproute2: /proc/net alone
        out = "LISTEN" if _listening_uids(port) else ""
    if not out.strip():
        return {"state": "free"}
    pids = [int(p) for p in re.findall(r"pid=(\d+)", out)]
    foreign = [p for p in pids if not _ours(p)]
    if pids and not foreign:
        return {"state": "ours"}
    if not pids:  # ss may not see other processes' sockets: judge by the socket's owner
        uids = _listening_uids(port)
        main = int(show("MainPID").get("MainPID") or 0)
        if uids and main and _ours(main) and all(_user(u) == service_user for u in uids):
            return {"state": "ours"}
        uid = next((u for u in uids if _user(u) != service_user), uids[0] if uids else -1)
        pid = _guess_pid(uid, port) if uid >= 0 else 0
        name = _comm(pid) if pid else "unknown"
    else:
        pid = foreign[0]
        name = (re.findall(r'"([^"]+)"', out) or ["unknown"])[0]
        try:
            uid = Path(f"/proc/{pid}").stat().st_uid
        except OSError:
            uid = -1
    if pid and _past_wrappers(pid) != pid:  # name the server, not the shell that started it
        pid = _past_wrappers(pid)
        name = _comm(pid) or name
    cmdline = _masked_cmdline(pid) if pid else ""
    mlflow = " mlflow " in f" {cmdline} " or "/mlflow server" in cmdline or "mlflow.server" in cmdline
    return {"state": "foreign", "program": name, "pid": pid, "user": _user(uid) if uid >= 0 else "",
            "cmdline": cmdline, "mlflow": mlflow, "stores": mlflow_stores(pid) if mlflow else {}}


def state(args: argparse.Namespace) -> dict[str, object]:
    props = show("ActiveState", "SubState", "Result", "MainPID", "ExecMainStartTimestampMonotonic",
                 "NeedDaemonReload", "NRestarts", "LoadState", "UnitFileState")
    pid = int(props.get("MainPID") or 0)
    start = started_at(props.get("ExecMainStartTimestampMonotonic", "0")) if pid else None
    newer = []
    present = [name for name in args.file if os.path.exists(name)]
    for name in args.file:
        try:
            mtime = os.lstat(name).st_mtime
        except OSError:
            continue
        if start is None or mtime > start:
            newer.append(name)
    running_venv = venv_of(pid) if pid else ""
    link = os.path.realpath(args.venv_link) if os.path.islink(args.venv_link) else ""
    active = props.get("ActiveState", "")
    reload_needed = props.get("NeedDaemonReload") == "yes"
    # A server killed mid-verify may run and still be sick: only a healthy one is kept.
    healthy = active == "active" and bool(args.running_port) and _health(args.running_port) == 200
    return {
        "active": active, "sub": props.get("SubState", ""), "result": props.get("Result", ""),
        "loaded": props.get("LoadState", "") == "loaded", "enabled": props.get("UnitFileState") == "enabled",
        "main_pid": pid, "started_at": start,
        "running_venv": running_venv, "running_version": mlflow_version_in(running_venv) if running_venv else "",
        "current_venv": link, "current_version": mlflow_version_in(link) if link else "",
        "newer_files": newer, "present": present, "need_daemon_reload": reload_needed,
        # What runs is exactly what the files on disk describe: safe to keep as the rollback target.
        "in_sync": healthy and bool(running_venv) and not newer and not reload_needed and running_venv == link,
        "healthy": healthy,
        "port": port_owner(args.port, args.user), "now": time.time(),
        "kept_venv": Path(args.kept).read_text().strip() if os.path.isfile(args.kept) else "",
    }


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def ensure(spec: dict, dry_run: bool = False) -> list[str]:
    """Create or correct the service group, user and directories; return what changed."""
    changed: list[str] = []

    def run(what: str, argv: list[str]) -> None:
        changed.append(what)
        if not dry_run:
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    lock = spec.get("install_lock")
    if lock and os.path.exists(lock):  # a killed deploy's venv_install.py may still run: let it finish
        with open(lock) as held:
            deadline = time.monotonic() + 900
            while True:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"an install into {os.path.dirname(lock)} has held {lock} for 15 minutes; "
                                         "stop it (or wait), then deploy again") from None
                    time.sleep(0.5)
    group, user, home, shell = spec["group"], spec["user"], spec["home"], spec["shell"]
    try:
        grp.getgrnam(group)
    except KeyError:
        run(f"group {group} created", ["groupadd", "--system", group])
    try:
        entry = pwd.getpwnam(user)
        if (_group(entry.pw_gid), entry.pw_dir, entry.pw_shell) != (group, home, shell):
            run(f"user {user} corrected", ["usermod", "--gid", group, "--home", home, "--shell", shell, user])
    except KeyError:
        run(f"user {user} created", ["useradd", "--system", "--gid", group, "--home-dir", home,
                                     "--no-create-home", "--shell", shell, user])
    for want in spec["dirs"]:
        path, mode = want["path"], int(want["mode"], 8)
        try:
            st = os.stat(path)  # a symlinked directory (/opt/mlflow -> /data/mlflow) is used as it is
            if not stat.S_ISDIR(st.st_mode):
                raise SystemExit(f"{path} exists and is not a directory: move it away, then deploy again")
            if (_user(st.st_uid), _group(st.st_gid), stat.S_IMODE(st.st_mode)) == (want["owner"], want["group"], mode):
                continue
            changed.append(f"{path} owner or mode corrected")
        except FileNotFoundError:
            changed.append(f"{path} created")
            if not dry_run:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.mkdir(path, mode=0o700)  # its owner and mode are set below, before anyone can use it
        if not dry_run:
            os.chown(path, pwd.getpwnam(want["owner"]).pw_uid, grp.getgrnam(want["group"]).gr_gid)
            os.chmod(path, mode)
    stale = spec.get("stale_wheelhouses")
    if stale:  # pushed by a deploy killed before its venv was complete; this venv's only once it is
        keep = set() if os.path.exists(stale["venv_marker"]) else set(stale["current"])
        for path in sorted(glob.glob(stale["glob"])):
            if path not in keep:
                changed.append(f"{path} removed (left by a deploy that was killed)")
                if not dry_run and os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif not dry_run:
                    Path(path).unlink(missing_ok=True)
    return changed


def layout(paths: list[str], user: str = "", group: str = "") -> dict[str, str]:
    found = {}
    if user:
        try:
            entry = pwd.getpwnam(user)
            found[f"user {user}"] = f"{_group(entry.pw_gid)} {entry.pw_dir} {entry.pw_shell}"
        except KeyError:
            pass
    if group:
        try:
            found[f"group {group}"] = str(grp.getgrnam(group).gr_gid)
        except KeyError:
            pass
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            kind = "dir"
        elif stat.S_ISREG(st.st_mode):
            kind = hashlib.sha1(Path(path).read_bytes()).hexdigest()  # noqa: S324 - a content check, not security
        else:
            kind = "other"
        found[path] = f"{kind} {stat.S_IMODE(st.st_mode):o} {_user(st.st_uid)} {_group(st.st_gid)}"
    return found


def _journal(since: float) -> str:
    # Only on a failure: let journald take in what the dying process wrote last (on a loaded
    # host its error line can lag its first lines by a moment), then flush it.
    time.sleep(1)
    subprocess.run(["journalctl", "--sync"], capture_output=True, check=False)
    out = subprocess.run(["journalctl", "--unit", UNIT, "--since", f"@{int(since)}", "--lines", "40",
                          "--no-pager", "--output", "cat"], capture_output=True, text=True, check=False).stdout
    return out.strip()


def _let_a_failing_start_finish(pid: int, limit: float = 10.0) -> None:
    """A start that is failing when the window closes (on a loaded host it may have printed
    only the first line of its error) gets up to `limit` seconds to exit, so its whole error
    is in the journal we show. A server that is merely slow costs the failure path this long."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        props = show("ActiveState", "MainPID")
        if int(props.get("MainPID") or 0) != pid or props.get("ActiveState") not in ("active", "activating"):
            return
        time.sleep(0.5)


# The server on this host's loopback, never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 3, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """HTTP status and body of a GET (0 when nothing answered)."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        # Never carried on to where a redirect points.
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, ""


def _health(port: int) -> int:
    return _get(f"http://127.0.0.1:{port}/health")[0]


def _answers(port: int, auth_config: str, probe_url: str) -> dict[str, object]:
    """What the verify step reads from a healthy server, in this one run instead of a module run
    each: /health and /version (as the admin whose password this deploy rendered into the
    basic-auth file, read here so it is never in argv), and with basic auth, the status an
    anonymous call to a protected endpoint gets (401 expected)."""
    base = f"http://127.0.0.1:{port}"
    admin = None
    answers: dict[str, object] = {}
    if auth_config:
        ini = configparser.ConfigParser()  # the template doubles %, which interpolation undoes
        try:
            if not ini.read(auth_config):
                raise OSError
            admin = (ini.get("mlflow", "admin_username"), ini.get("mlflow", "admin_password"))
        except (OSError, configparser.Error) as exc:
            # The error's text could quote the file's lines: name only its kind.
            answers["auth_config_error"] = f"{auth_config} cannot be read ({type(exc).__name__})"
    health_status, health = _get(base + "/health", timeout=30)
    version_status, version = _get(base + "/version", timeout=30, auth=admin)
    answers.update({"health_status": health_status, "health": health.strip(),
                    "version_status": version_status, "version_answer": version.strip()})
    if probe_url:
        answers["anonymous_status"] = _get(probe_url, timeout=30)[0]
    return answers


def wait(args: argparse.Namespace) -> dict[str, object]:
    since = args.since or time.time()
    begin = time.monotonic()
    note = ""
    while True:
        props = show("ActiveState", "SubState", "Result", "MainPID")
        active = props.get("ActiveState", "")
        # systemd gave up (start limit, or a failure with no restart left): stop waiting now.
        if active == "failed" or (active == "inactive" and time.monotonic() - begin > 2):
            return {"ok": False, "reason": f"{UNIT} is {active} (Result={props.get('Result', '')}): it exited "
                    "and systemd stopped restarting it", "journal": _journal(since),
                    "elapsed": round(time.monotonic() - begin, 1)}
        pid = int(props.get("MainPID") or 0)
        if active == "active" and pid and _health(args.port) == 200:
            owner = port_owner(args.port, args.user)
            version = mlflow_version_in(venv_of(pid))
            if owner["state"] != "ours":
                note = (f"port {args.port} answers /health but belongs to {owner.get('program')} "
                        f"(pid {owner.get('pid')}), not to {UNIT}")
            elif args.version and version != args.version:
                note = f"{UNIT} runs MLflow {version or 'unknown'}, not {args.version}"
            else:
                return {"ok": True, "reason": "", "journal": "", "version": version, "venv": venv_of(pid),
                        "elapsed": round(time.monotonic() - begin, 1),
                        **(_answers(args.port, args.auth_config, args.probe_url) if args.answers else {})}
        if time.monotonic() - begin > args.timeout:
            elapsed = round(time.monotonic() - begin, 1)
            _let_a_failing_start_finish(pid)
            return {"ok": False, "reason": note or f"{UNIT} did not answer http://127.0.0.1:{args.port}/health "
                    f"within {args.timeout} s", "journal": _journal(since), "timeout": True, "elapsed": elapsed}
        time.sleep(0.5)


def ensure_and_read_layout(args: argparse.Namespace) -> dict:
    changed = ensure(json.loads(args.ensure), args.dry_run) if args.ensure else []
    return {"layout": layout(args.path, args.user, args.group), "changed": changed}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("state")
    st.add_argument("--port", type=int, required=True)
    st.add_argument("--venv-link", required=True)
    st.add_argument("--file", action="append", default=[])
    st.add_argument("--user", default="mlflow")
    st.add_argument("--running-port", type=int, default=0, help="the port the running server listens on")
    st.add_argument("--kept", default="/etc/mlflow/previous/venv", help="the rollback target's venv file")
    lay = sub.add_parser("layout")
    lay.add_argument("path", nargs="*")
    lay.add_argument("--user", default="", help="also: this user's primary group, home and shell")
    lay.add_argument("--group", default="", help="also: whether this group exists (its gid)")
    lay.add_argument("--ensure", default="", help="JSON: the group, user and directories to create or correct first")
    lay.add_argument("--dry-run", action="store_true", help="with --ensure: name what would change, change nothing")
    wt = sub.add_parser("wait")
    wt.add_argument("--port", type=int, required=True)
    wt.add_argument("--timeout", type=int, required=True)
    wt.add_argument("--version", default="")
    wt.add_argument("--since", type=float, default=0.0)
    wt.add_argument("--user", default="mlflow")
    wt.add_argument("--answers", action="store_true", help="once healthy, also read /health, /version and the probe")
    wt.add_argument("--auth-config", default="", help="with --answers: the basic-auth file naming the admin")
    wt.add_argument("--probe-url", default="", help="with --answers: a protected URL an anonymous call must not open")
    args = parser.parse_args()
    commands = {"state": state, "wait": wait, "layout": ensure_and_read_layout}
    json.dump(commands[args.command](args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
