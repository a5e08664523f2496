"""The values the role derives from its public variables, in one place: the filters of
vars/main.yml and the CLI's `render` (cli/mlops_provision/derive.py loads this file by path).

Plain functions on plain values, standard library only, so that the control node's Python
evaluates them the same way for a deploy and for a render. Where a value used to be a Jinja
expression the function reproduces it exactly, including Ansible's filters it relied on:
`urlsplit` (which reads every component, so a bad port is an error) and `urlencode` (quote, '/'
kept, then replaced by %2F); the password is decoded as SQLAlchemy decodes it (a + stays a +).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

# Releases before this one have published server CVEs: preflight refuses them, and so does the
# CLI's --mlflow-version check, unless mlflow_allow_insecure_version / --allow-insecure-version.
MIN_SAFE_MLFLOW_VERSION = "3.14.0"

# A PostgreSQL on these hosts is the MLflow host's own, whatever the URI calls it.
LOCAL_DB_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_POSTGRESQL_PORT = 5432
ARTIFACT_KINDS = ("s3", "wasbs", "gs", "sftp")  # remote stores; anything else is "local"


def _split(uri: str) -> SplitResult:
    parts = urlsplit(str(uri))
    parts.port  # noqa: B018 - raises ValueError for a bad port, as Ansible's urlsplit filter does
    return parts


def min_safe_version(_: Any = None) -> str:
    """The oldest MLflow release a deploy accepts without mlflow_allow_insecure_version."""
    return MIN_SAFE_MLFLOW_VERSION


# --- backend store ---------------------------------------------------------------------------

def postgresql_uri(user: str, password: Any, host: str, port: Any, database: str, *,
                   quote_password: bool = True) -> str:
    """The managed PostgreSQL's URI. The password is percent-encoded, '/' included, so that any
    character survives; quote_password=False puts it in as given (a mask)."""
    secret = quote(str(password), safe="") if quote_password else str(password)
    return f"postgresql://{user}:{secret}@{host}:{port}/{database}"


def sqlite_uri(data_dir: str, name: str = "mlflow.db") -> str:
    return f"sqlite:///{data_dir}/{name}"


def managed_postgresql(stored_uri: str, backend: str) -> bool:
    """True when the backend is the project's own PostgreSQL: no URI given, backend postgresql."""
    return not stored_uri and backend == "postgresql"


def backend_uri(stored_uri: str, backend: str, data_dir: str, managed_uri: str | None = None) -> str:
    """The backend store URI the server gets: the given one verbatim, else the managed
    PostgreSQL's (managed_uri, from postgresql_uri(); needed only when managed_postgresql() is
    true), else SQLite in data_dir."""
    if stored_uri:
        return str(stored_uri)
    if managed_postgresql(stored_uri, backend):
        if managed_uri is None:
            raise ValueError("mlflow_backend_uri: backend postgresql needs the managed PostgreSQL's URI")
        return managed_uri
    return sqlite_uri(data_dir)


def backend_kind(uri: str) -> str:
    """postgresql or sqlite: the backend/ task file and the database tools to use."""
    return "postgresql" if str(uri).startswith("postgresql") else "sqlite"


def db_url_nopass(uri: str) -> str:
    """The URI without its password (for `mlflow db upgrade` and the scripts, which get the
    password in PGPASSWORD); a SQLite URI or one without a password is returned as it is."""
    return re.sub(r"^(postgresql[^:]*://[^:/@]+):[^@]*@", r"\1@", str(uri))


def db_url_psycopg2(uri: str) -> str:
    """The password-less URI with SQLAlchemy's psycopg2 driver named."""
    return re.sub(r"^postgresql://", "postgresql+psycopg2://", db_url_nopass(uri))


def db_password(uri: str) -> str:
    """The password in the URI, percent-decoded the way SQLAlchemy and libpq read it ('+' is a
    literal plus in userinfo, not a space: Ansible's urldecode got that wrong); empty when
    there is none."""
    return unquote(_split(uri).password or "")


def redact_uri(uri: str) -> str:
    """The URI with each password replaced by ***, for summaries and messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", str(uri))


# --- basic auth ------------------------------------------------------------------------------

def auth_db_uri(uri: str, data_dir: str) -> str:
    """Where basic auth keeps its users: the PostgreSQL backend itself (its tables live beside
    MLflow's), else auth.db beside the tracking data."""
    if backend_kind(uri) == "postgresql":
        return "postgresql+psycopg2://" + str(uri).split("://", 1)[1]
    return sqlite_uri(data_dir, "auth.db")


def schema_auth_db_url(uri: str, auth: str, data_dir: str) -> str:
    """The user database for db_schema.py, without a password: none without basic auth; with
    PostgreSQL the tracking database itself."""
    if auth != "basic":
        return ""
    return db_url_nopass(uri) if backend_kind(uri) == "postgresql" else auth_db_uri(uri, data_dir)


def auth_realm(uri: str, inventory_hostname: str) -> str:
    """The name of the user database, under which the admin password is kept on the control
    node: the host for SQLite or a PostgreSQL on the host itself (however its URI names it),
    else pg-HOST-PORT-DB, so every server sharing one PostgreSQL shares the admin password."""
    if backend_kind(uri) != "postgresql":
        return inventory_hostname
    parts = _split(uri)
    hostname = parts.hostname or ""
    if hostname in LOCAL_DB_HOSTS:
        return inventory_hostname
    database = re.sub(r"^/", "", parts.path)
    realm = f"pg-{hostname}-{parts.port or DEFAULT_POSTGRESQL_PORT}-{database}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", realm)


def auth_config_path(config_dir: str) -> str:
    return f"{config_dir}/basic_auth.ini"


# --- artifact store --------------------------------------------------------------------------

def artifact_store(serve_artifacts: Any, default_artifact_root: str, artifacts_destination: str) -> str:
    """The store the server (serving artifacts) or its clients write to."""
    if serve_artifacts:
        return artifacts_destination
    return default_artifact_root or artifacts_destination


def artifact_kind(store: str) -> str:
    """local, s3, wasbs, gs or sftp: the artifacts/ task file and the credentials needed."""
    match = re.match(rf"({'|'.join(ARTIFACT_KINDS)})://", str(store))
    return match.group(1) if match else "local"


def gcs_credentials_path(config_dir: str) -> str:
    return f"{config_dir}/gcs-credentials.json"


def store_env(config_dir: str, *, s3_access_key_id: Any = "", s3_secret_access_key: Any = "",
              s3_region: Any = "", s3_endpoint_url: Any = "", s3_ca_bundle: Any = "", s3_ignore_tls: Any = False,
              azure_connection_string: Any = "", azure_account_key: Any = "",
              gcs_credentials_file: Any = "", gcs_endpoint_url: Any = "") -> dict[str, Any]:
    """The artifact store's settings and credentials for the environment file, by environment
    variable; empty values are left out. The keyword names are the role variables' without
    their mlflow_ prefix.

    gcs_endpoint_url becomes STORAGE_EMULATOR_HOST, which google-cloud-storage takes with its
    scheme (http://host:port); with it set the client sends no credentials (anonymous, as
    emulators expect) and does not read GOOGLE_APPLICATION_CREDENTIALS."""
    env = {
        "AWS_ACCESS_KEY_ID": s3_access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_secret_access_key,
        "AWS_DEFAULT_REGION": s3_region,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
        "AWS_CA_BUNDLE": s3_ca_bundle,
        "MLFLOW_S3_IGNORE_TLS": "true" if s3_ignore_tls else "",
        "AZURE_STORAGE_CONNECTION_STRING": azure_connection_string,
        "AZURE_STORAGE_ACCESS_KEY": azure_account_key,
        "GOOGLE_APPLICATION_CREDENTIALS": gcs_credentials_path(config_dir) if gcs_credentials_file else "",
        "STORAGE_EMULATOR_HOST": gcs_endpoint_url,
    }
    return {name: value for name, value in env.items() if value}


# --- servers that share a database (a realm) -------------------------------------------------

# Every process keeps a pool per store: tracking, model registry (its own engine even on the same
# URI) and basic auth's user database (the same PostgreSQL). The `mlflow server` parent keeps its
# stores' pools too; server-side jobs add 9: the job runner, its 7 huey consumers and the
# periodic consumer's tracking store (docs/scale-out-research.md, section 5).
JOB_PROCESSES = 9
# PostgreSQL keeps superuser_reserved_connections (3) for superusers; 10 more stay free for
# backups, psql and monitoring.
RESERVED_CONNECTIONS = 13


# mlflow_postgresql_max_connections "auto" (its default): the project's own PostgreSQL allows
# what its servers may open together plus the reserve, and never fewer than this (a stock-sized
# server, enough for one server at the defaults: 150 + 13).
AUTO = "auto"
MIN_AUTO_MAX_CONNECTIONS = 200


def reserved_connections(_: Any = None) -> int:
    return RESERVED_CONNECTIONS


def auto_max_connections(total: Any) -> int:
    """max_connections "auto" for servers that may open `total` connections together."""
    return max(MIN_AUTO_MAX_CONNECTIONS, int(total) + RESERVED_CONNECTIONS)


def server_connections(workers: Any, pool_size: Any, max_overflow: Any, auth: str,
                       job_execution: Any = False) -> tuple[int, str]:
    """The most PostgreSQL connections one server may hold, and how that number is made. The
    registry store counts even when it is elsewhere (an overcount is the safe side)."""
    per_store = int(pool_size) + int(max_overflow)
    stores = 2 + (1 if auth == "basic" else 0)
    total = (int(workers) + 1) * stores * per_store
    shown = (f"({int(workers)} workers + 1) x {stores} stores x "
             f"({int(pool_size)} pool + {int(max_overflow)} overflow)")
    if job_execution:
        total += JOB_PROCESSES * per_store
        shown += f" + {JOB_PROCESSES} job processes x {per_store}"
    return total, f"{shown} = {total}"


def _true(value: Any) -> bool:
    """A boolean variable as YAML, -e or a template may give it (True, "true", "yes", 1, ...)."""
    return str(value).strip().lower() in ("true", "yes", "on", "1")


def _database_server(uri: str) -> tuple[str, str]:
    """(scheme://host:port, database) of a database server the URI reaches over the network;
    ("", "") for SQLite, a database on the MLflow host itself (loopback or a Unix socket: its
    own, whatever it is called) and a URI that does not parse (preflight names that one)."""
    kind = backend_kind(uri)
    try:
        parts = _split(uri)
    except ValueError:  # its text may hold part of a password: not shown here
        return "", ""
    if kind == "sqlite" or (parts.hostname or "") in ("", *LOCAL_DB_HOSTS):
        return "", ""
    port = parts.port or (DEFAULT_POSTGRESQL_PORT if kind == "postgresql" else "")
    return f"{kind}://{parts.hostname}:{port}", re.sub(r"^/", "", parts.path)


# What realms() reads of each server, and of the database host.
REALM_VARIABLES = ("mlflow_backend", "mlflow_backend_store_uri", "mlflow_auth", "mlflow_job_execution",
                   "mlflow_serve_artifacts", "mlflow_default_artifact_root", "mlflow_artifacts_destination",
                   "mlflow_workers", "mlflow_db_pool_size", "mlflow_db_max_overflow")
DB_HOST_VARIABLES = ("mlflow_postgresql_database", "mlflow_postgresql_max_connections")


def realms(servers: Sequence[str], hostvars: Mapping[str, Any], db_hosts: Sequence[str],
           defaults: Mapping[str, Any], resolved: Mapping[str, Mapping[str, Any]] | None = None,
           ) -> list[dict[str, Any]]:
    """The servers grouped by the tracking database they use (servers on a database of their own
    are a group each), with what the checks need: the database's name, the database server it
    lives on (`server`, shared max_connections), whether it is PostgreSQL and, for the project's
    own, its max_connections (None for an operator's database: the deploy reads that one from
    the server; "auto" resolved to what every realm on that PostgreSQL may open, plus the
    reserve: auto_max_connections) and the host it runs on (`db_host`), and per server its
    artifact store and the connections it may open.

    A variable a host does not set (a role default) comes from defaults; `resolved` gives
    whole hosts' values instead (the host a play runs on: its own, fully templated). A host
    whose inventory values cannot be read here (a template that needs facts or role variables)
    is left out (`unchecked`): its own deploy checks it."""
    def var(host: str, name: str) -> Any:
        if resolved and host in resolved:
            return resolved[host][name]
        values = hostvars[host]
        return values[name] if name in values else defaults[name]

    def read(host: str, names: Sequence[str]) -> dict[str, Any]:
        return {name: var(host, name) for name in names}

    groups: dict[str, dict[str, Any]] = {}
    unchecked: list[str] = []
    for host in sorted(servers):  # the same message whatever the inventory's order
        try:
            got = read(host, REALM_VARIABLES)
            db_host = db_hosts[0] if db_hosts else host
            db = read(db_host, DB_HOST_VARIABLES) if str(got["mlflow_backend"]) == "postgresql" else {}
        except Exception:  # noqa: BLE001 - Ansible's undefined-variable errors, among others
            unchecked.append(host)
            continue
        uri, max_connections, managed_on = str(got["mlflow_backend_store_uri"] or ""), None, None
        if uri:
            server, name = _database_server(uri)
            database = f"{server}/{name}" if server else f"{redact_uri(uri)} on {host}"
            server = server or database
            postgresql = backend_kind(uri) == "postgresql"
        elif str(got["mlflow_backend"]) == "postgresql":  # the project's own: on the mlflow_db host, else the server
            database = f"{db['mlflow_postgresql_database']} on {db_host}"
            server, postgresql, managed_on = f"PostgreSQL on {db_host}", True, db_host
            limit = str(db["mlflow_postgresql_max_connections"]).strip()
            # anything else: the database role refuses it
            max_connections = int(limit) if limit.isdigit() else AUTO if limit.lower() == AUTO else None
        else:
            database = server = f"SQLite on {host}"
            postgresql = False
        realm = groups.setdefault(database, {"database": database, "server": server, "postgresql": postgresql,
                                             "max_connections": max_connections, "db_host": managed_on,
                                             "servers": [], "artifacts": {}, "connections": {}, "budget": [],
                                             "auth": {}, "jobs": []})
        realm["servers"].append(host)
        realm["auth"][host] = str(got["mlflow_auth"])
        jobs = _true(got["mlflow_job_execution"])
        if jobs:
            realm["jobs"].append(host)
        realm["artifacts"][host] = artifact_store(_true(got["mlflow_serve_artifacts"]),
                                                  str(got["mlflow_default_artifact_root"]),
                                                  str(got["mlflow_artifacts_destination"]))
        try:
            realm["connections"][host] = server_connections(
                got["mlflow_workers"], got["mlflow_db_pool_size"], got["mlflow_db_max_overflow"],
                str(got["mlflow_auth"]), jobs)
        except (TypeError, ValueError):  # not a number: the host's own validation names it
            realm["connections"][host] = (0, "not counted (invalid numbers)")
        realm["budget"].append(f"{host}: {realm['connections'][host][1]}")
    found = list(groups.values())
    for realm in found:
        realm["unchecked"] = unchecked
    for realm in found:  # every server's connections are known now
        if realm["max_connections"] == AUTO:
            realm["max_connections"] = auto_max_connections(server_budget(found, realm["server"])["total"])
    return found


def postgresql_max_connections(found: Sequence[Mapping[str, Any]], db_host: str) -> int:
    """max_connections "auto" of the project's PostgreSQL on db_host (the mlflow_db host, or the
    server itself), from realms() of the servers; the least "auto" gives when none uses it."""
    return max((int(realm["max_connections"]) for realm in found
                if realm.get("db_host") == db_host and isinstance(realm["max_connections"], int)),
               default=MIN_AUTO_MAX_CONNECTIONS)


def server_budget(found: Sequence[Mapping[str, Any]], server: str) -> dict[str, Any]:
    """The connections every realm on one database server may open together (max_connections
    is the server's, whatever database each realm uses): total and how it is made."""
    on_server = [realm for realm in found if realm["server"] == server]
    return {"total": sum(count for realm in on_server for count, _ in realm["connections"].values()),
            "budget": [line for realm in on_server for line in realm["budget"]],
            "servers": [host for realm in on_server for host in realm["servers"]]}


# Extra variables (CLI flags, -e) reach every host's variables, also of servers this run does
# not deploy; said where it can be the cause.
_EVERY_SERVER = (" A value given on the command line (a flag or -e) counts for every server of the inventory; "
                 "set a per-server value in the inventory instead.")


def realm_problems(found: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes these realms unsafe to deploy, a sentence each (none: empty): servers sharing
    a database but keeping artifacts on their own disks, or differing in authentication, more
    than one of them running server-side jobs, and more connections than the project's own
    PostgreSQL accepts (counted per PostgreSQL server)."""
    problems = []
    for realm in found:
        servers, artifacts = realm["servers"], realm["artifacts"]
        if len(set(realm["auth"].values())) > 1:
            open_ = [host for host in servers if realm["auth"][host] != "basic"]
            problems.append(
                f"{len(servers)} servers ({', '.join(servers)}) share the database {realm['database']}, but "
                f"{', '.join(open_)} would serve it without authentication (mlflow_auth "
                f"{', '.join(sorted(set(realm['auth'][h] for h in open_)))}): anyone reaching it could read and "
                "delete what the others protect. Give every server of a shared database the same mlflow_auth "
                "(--auth)." + _EVERY_SERVER)
        if len(realm["jobs"]) > 1:
            problems.append(
                f"{len(realm['jobs'])} servers ({', '.join(realm['jobs'])}) on the database {realm['database']} "
                "would run MLflow's server-side jobs: each restart re-queues the jobs the others are running, so "
                "jobs would run twice. Turn mlflow_job_execution (--job-execution) on for one server of a shared "
                "database at most." + _EVERY_SERVER)
        local = [f"{host}: {artifacts[host]}" for host in servers if artifact_kind(artifacts[host]) == "local"]
        if len(servers) > 1 and local:
            problems.append(
                f"{len(servers)} servers ({', '.join(servers)}) share the database {realm['database']}, but "
                f"keep artifacts on their own disks ({', '.join(local)}): a run logged through one server would "
                "have its artifacts on that host only. Give the servers of a shared database one artifact store: "
                "mlflow_artifacts_destination (--artifacts-destination) s3://, wasbs://, gs:// or sftp://.")
    checked: set[str] = set()
    for realm in found:
        limit = realm["max_connections"]
        if not realm["postgresql"] or limit is None or realm["server"] in checked:
            continue
        checked.add(realm["server"])
        total = server_budget(found, realm["server"])
        if total["total"] > limit - RESERVED_CONNECTIONS:
            problems.append(
                f"{len(total['servers'])} server(s) on PostgreSQL {realm['database']} may open {total['total']} "
                f"connections ({'; '.join(total['budget'])}), but its max_connections {limit} leaves "
                f"{limit - RESERVED_CONNECTIONS} "
                f"({RESERVED_CONNECTIONS} kept for superusers, backups and maintenance). Set "
                f"mlflow_postgresql_max_connections to {total['total'] + RESERVED_CONNECTIONS} or more, or lower "
                "mlflow_workers, mlflow_db_pool_size or mlflow_db_max_overflow.")
    return problems


def load_balancer_problems(found: Sequence[Mapping[str, Any]], lb_hosts: Sequence[str]) -> list[str]:
    """Behind load balancers (group mlflow_lb) every server must serve the same data: one shared
    database (a sentence; none: empty list). One server alone may use anything, SQLite too.
    Servers left unchecked by realms() are their own deploys' to check."""
    if not lb_hosts:
        return []
    where = "; ".join(f"{realm['database']}: {', '.join(realm['servers'])}" for realm in found)
    if len(found) > 1:
        return [f"The load balancers ({', '.join(lb_hosts)}) would spread each client over {len(found)} "
                f"databases ({where}): a run logged through one server would be missing on the others. Put every "
                "server of group mlflow_servers on one PostgreSQL database (mlflow_backend postgresql with an "
                "mlflow_db host, or one mlflow_backend_store_uri)."]
    return []


# --- network ---------------------------------------------------------------------------------

def listen_address(bind_address: str, tls: Any) -> str:
    """With TLS nginx is the only way in, so MLflow listens on loopback."""
    return "127.0.0.1" if tls else bind_address


def with_any_port(names: Sequence[str]) -> list[str]:
    """Each name bare and with any port, as MLflow matches the Host header with its port."""
    return [*names, *(f"{name}:*" for name in names)]


def allowed_hosts(explicit: Sequence[str], names: Sequence[str]) -> Sequence[str]:
    """MLflow's Host header allowlist (MLflow >= 3.5 refuses other Host headers): the given one
    as it is, else the names with_any_port(). The role reads the host's names (facts) only
    when no list is given, so it calls with_any_port() itself."""
    return explicit if len(explicit) > 0 else with_any_port(names)


def allow_from(allow: Sequence[str], lb_facts: Mapping[str, Any]) -> list[str]:
    """The sources a server's firewall admits: the operator's allowlist and, when there is one,
    every address of each load balancer in front of it (lb_facts: name -> its gathered facts;
    their health checks and forwarded requests come from those). Without an allowlist the port
    is open to everyone, load balancers included. A load balancer whose addresses are unknown is
    an error: a firewall that shut it out would take the server out of the pool silently."""
    if not allow:
        return []
    found: set[str] = set()
    for name, facts in lb_facts.items():
        v4 = list((facts or {}).get("all_ipv4_addresses") or [])
        v6 = [a for a in (facts or {}).get("all_ipv6_addresses") or [] if not a.lower().startswith("fe80:")]
        if not v4 and not v6:
            raise ValueError(f"the addresses of load balancer {name} are not known (its facts were not gathered)")
        found.update([f"{a}/32" for a in v4] + [f"{a}/128" for a in v6])
    # Sorted: the same addresses in another order (a floating address moved) change nothing.
    return list(dict.fromkeys([*allow, *sorted(found)]))


FILTERS: Mapping[str, Any] = {
    "mlflow_min_safe_version": min_safe_version,
    "mlflow_managed_postgresql": managed_postgresql,
    "mlflow_postgresql_uri": postgresql_uri,
    "mlflow_backend_uri": backend_uri,
    "mlflow_backend_kind": backend_kind,
    "mlflow_db_url_nopass": db_url_nopass,
    "mlflow_db_url_psycopg2": db_url_psycopg2,
    "mlflow_db_password": db_password,
    "mlflow_redact_uri": redact_uri,
    "mlflow_auth_db_uri": auth_db_uri,
    "mlflow_schema_auth_db_url": schema_auth_db_url,
    "mlflow_auth_realm": auth_realm,
    "mlflow_auth_config_path": auth_config_path,
    "mlflow_artifact_store": artifact_store,
    "mlflow_artifact_kind": artifact_kind,
    "mlflow_gcs_credentials_path": gcs_credentials_path,
    "mlflow_store_env": store_env,
    "mlflow_listen_address": listen_address,
    "mlflow_with_any_port": with_any_port,
    "mlflow_allow_from": allow_from,
    "mlflow_realms": realms,
    "mlflow_realm_problems": realm_problems,
    "mlflow_load_balancer_problems": load_balancer_problems,
    "mlflow_server_budget": server_budget,
    "mlflow_reserved_connections": reserved_connections,
    "mlflow_postgresql_auto_max_connections": postgresql_max_connections,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return dict(FILTERS)
