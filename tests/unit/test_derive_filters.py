"""The role's derivations (roles/mlflow_server/filter_plugins/mlflow_derive.py): the filters of
vars/main.yml and the functions the CLI's `render`, version check and credentials use."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_module

ROLE = ROOT / "roles" / "mlflow_server"
PLUGIN = ROLE / "filter_plugins" / "mlflow_derive.py"


d = load_module(PLUGIN, "mlflow_derive_filters")

PG = "postgresql://mlflow:pw@db.example.com:5432/mlflow"
SQLITE = "sqlite:////var/lib/mlflow/mlflow.db"


# --- the plugin and its two users -------------------------------------------------------------

def test_the_plugin_is_plain_python_without_ansible() -> None:
    tree = ast.parse(PLUGIN.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "collections", "typing", "urllib"}, imported


def test_every_filter_the_role_uses_exists_and_every_filter_is_used() -> None:
    digest = load_module(ROLE / "filter_plugins" / "deploy_digest.py", "deploy_digest_filters")
    lock = load_module(ROLE / "filter_plugins" / "deploy_lock.py", "deploy_lock_filters")
    signing = load_module(ROLE / "filter_plugins" / "archive_signing.py", "archive_signing_filters")
    filters = {**d.FilterModule().filters(), **digest.FilterModule().filters(), **lock.FilterModule().filters(),
               **signing.FilterModule().filters()}
    assert all(name.startswith("mlflow_") for name in filters)
    # the database role sizes its max_connections with the realms' filters too
    database = ROOT / "roles" / "mlflow_postgresql" / "vars" / "main.yml"
    text = "\n".join(path.read_text() for path in [ROLE / "vars" / "main.yml", *(ROLE / "tasks").rglob("*.yml"),
                                                   database])
    used = set(re.findall(r"\|\s*(mlflow_[a-z0-9_]+)", text))
    assert used <= set(filters), used - set(filters)
    assert set(filters) == used, set(filters) - used  # and none is left unwired


def test_the_cli_uses_the_same_file() -> None:
    from mlops_provision import derive, options, render

    assert Path(derive._plugin.__file__) == PLUGIN
    assert options.MIN_SAFE_MLFLOW == d.MIN_SAFE_MLFLOW_VERSION
    assert render.LOCAL_ONLY_HOSTS == ["localhost", "127.0.0.1", "localhost:*", "127.0.0.1:*"]


# --- the minimum safe version ------------------------------------------------------------------

def test_one_minimum_safe_version_for_the_role_and_the_cli() -> None:
    from mlops_provision.errors import UsageError
    from mlops_provision.options import check_version

    assert re.fullmatch(r"\d+\.\d+\.\d+", d.MIN_SAFE_MLFLOW_VERSION)
    assert d.min_safe_version("") == d.MIN_SAFE_MLFLOW_VERSION
    major, minor, _ = (int(p) for p in d.MIN_SAFE_MLFLOW_VERSION.split("."))
    check_version("--mlflow-version", d.MIN_SAFE_MLFLOW_VERSION, {})
    check_version("--mlflow-version", f"{major}.{minor}.7", {})
    check_version("--mlflow-version", f"{major + 1}.0.0", {})
    with pytest.raises(UsageError, match=f"use {re.escape(d.MIN_SAFE_MLFLOW_VERSION)} or newer"):
        check_version("--mlflow-version", f"{major}.{minor - 1}.99", {})
    check_version("--mlflow-version", f"{major}.{minor - 1}.99", {"_allow_insecure": True})
    assert "_mlflow_min_safe_version" in (ROLE / "tasks" / "preflight.yml").read_text()
    assert d.MIN_SAFE_MLFLOW_VERSION not in (ROLE / "vars" / "main.yml").read_text()


# --- backend store URI -------------------------------------------------------------------------

@pytest.mark.parametrize(("stored", "backend", "managed"), [
    ("", "postgresql", True), ("", "sqlite", False), (PG, "postgresql", False), (PG, "sqlite", False),
])
def test_managed_postgresql_only_without_a_given_uri(stored: str, backend: str, managed: bool) -> None:
    assert d.managed_postgresql(stored, backend) is managed


@pytest.mark.parametrize(("password", "encoded"), [
    ("abcXYZ019", "abcXYZ019"),
    ("p@ss:w/rd%", "p%40ss%3Aw%2Frd%25"),  # every URI delimiter, and the percent sign itself
    ("a+b c&d=e?f#g", "a%2Bb%20c%26d%3De%3Ff%23g"),
    ("-._~", "-._~"),  # unreserved characters stay
    ("ä€", "%C3%A4%E2%82%AC"),  # UTF-8
    ("%2F", "%252F"),  # an encoded-looking password is encoded again, not taken as encoded
])
def test_managed_postgresql_uri_percent_encodes_the_whole_password(password: str, encoded: str) -> None:
    uri = d.postgresql_uri("mlflow", password, "10.0.0.5", 5432, "mlflow")
    assert uri == f"postgresql://mlflow:{encoded}@10.0.0.5:5432/mlflow"
    assert d.db_password(uri) == password
    assert d.auth_realm(uri, "vm1") == "pg-10.0.0.5-5432-mlflow"


def test_every_printable_password_survives_the_round_trip() -> None:
    password = string.printable.strip() + " é"
    uri = d.postgresql_uri("u", password, "db", 6543, "d")
    assert d.db_password(uri) == password
    assert d.db_url_nopass(uri) == "postgresql://u@db:6543/d"
    assert d.redact_uri(uri) == "postgresql://u:***@db:6543/d"


def test_managed_postgresql_uri_takes_host_port_and_mask_as_given() -> None:
    assert d.postgresql_uri("mlflow", 12345678, "db", "6543", "ml") == "postgresql://mlflow:12345678@db:6543/ml"
    # An IPv6 address must come bracketed (mlflow_postgresql_host: "[fd00::5]"); it is used verbatim.
    ipv6 = d.postgresql_uri("mlflow", "pw", "[fd00::5]", 5432, "mlflow")
    assert ipv6 == "postgresql://mlflow:pw@[fd00::5]:5432/mlflow"
    assert d.auth_realm(ipv6, "vm1") == "pg-fd00__5-5432-mlflow"
    masked = d.postgresql_uri("mlflow", "********", "127.0.0.1", 5432, "mlflow", quote_password=False)
    assert masked == "postgresql://mlflow:********@127.0.0.1:5432/mlflow"


@pytest.mark.parametrize(("stored", "backend", "expected"), [
    ("", "sqlite", SQLITE),
    ("", "postgresql", "postgresql://mlflow:x@127.0.0.1:5432/mlflow"),
    (PG, "sqlite", PG),  # a given URI is used verbatim, whatever mlflow_backend says
    (PG, "postgresql", PG),
    ("sqlite:////var/lib/mlflow/other.db", "sqlite", "sqlite:////var/lib/mlflow/other.db"),
])
def test_backend_uri(stored: str, backend: str, expected: str) -> None:
    managed = "postgresql://mlflow:x@127.0.0.1:5432/mlflow"
    assert d.backend_uri(stored, backend, "/var/lib/mlflow", managed) == expected


def test_backend_uri_in_another_data_dir_and_without_the_managed_uri() -> None:
    assert d.backend_uri("", "sqlite", "/srv/ml flow") == "sqlite:////srv/ml flow/mlflow.db"
    with pytest.raises(ValueError, match="managed PostgreSQL"):
        d.backend_uri("", "postgresql", "/var/lib/mlflow")


@pytest.mark.parametrize(("uri", "kind"), [
    (PG, "postgresql"), ("postgresql+psycopg2://u:p@h/db", "postgresql"), (SQLITE, "sqlite"),
    ("POSTGRESQL://u@h/db", "sqlite"),  # as the role's `is match('postgresql')`: case-sensitive
])
def test_backend_kind(uri: str, kind: str) -> None:
    assert d.backend_kind(uri) == kind


# --- the password-less URL, the password, the display form ----------------------------------------

@pytest.mark.parametrize(("uri", "nopass"), [
    (PG, "postgresql://mlflow@db.example.com:5432/mlflow"),
    ("postgresql://u:p%40ss%3Aw%2Frd%25@db:5432/m?sslmode=require", "postgresql://u@db:5432/m?sslmode=require"),
    ("postgresql+psycopg2://u:pw@[fd00::1]:5432/m", "postgresql+psycopg2://u@[fd00::1]:5432/m"),
    ("postgresql://u@db:5432/m", "postgresql://u@db:5432/m"),  # no password: unchanged
    ("postgresql://db:5432/m", "postgresql://db:5432/m"),  # no user: the port is not a password
    ("postgresql://u:p@ss@db/m", "postgresql://u@ss@db/m"),  # a raw @ (refused by the CLI) ends the password
    (SQLITE, SQLITE),
])
def test_db_url_nopass(uri: str, nopass: str) -> None:
    assert d.db_url_nopass(uri) == nopass


def test_db_url_psycopg2_names_the_driver_without_the_password() -> None:
    assert d.db_url_psycopg2(PG) == "postgresql+psycopg2://mlflow@db.example.com:5432/mlflow"
    assert d.db_url_psycopg2("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u@h/db"
    assert d.db_url_psycopg2(SQLITE) == SQLITE


@pytest.mark.parametrize(("uri", "password"), [
    (PG, "pw"),
    ("postgresql://u:p%40ss%3Aw%2Frd%25x@db:5432/m", "p@ss:w/rd%x"),
    ("postgresql://u:a+b@db/m", "a+b"),  # a literal plus, as SQLAlchemy reads it (not urldecode's space)
    ("postgresql://u:a%2Bb@db/m", "a+b"),
    ("postgresql://u@db/m", ""),
    ("postgresql://u:@db/m", ""),
    ("postgresql://u:pw@[::1]:5432/m", "pw"),
    (SQLITE, ""),
])
def test_db_password(uri: str, password: str) -> None:
    assert d.db_password(uri) == password


def test_a_bad_port_is_an_error_as_with_ansibles_urlsplit() -> None:
    with pytest.raises(ValueError):
        d.db_password("postgresql://u:pw@db:99999/m")
    with pytest.raises(ValueError):
        d.auth_realm("postgresql://u:pw@db:port/m", "vm1")


@pytest.mark.parametrize(("uri", "shown"), [
    (PG, "postgresql://mlflow:***@db.example.com:5432/mlflow"),
    ("postgresql://u:p%40ss@[fd00::1]/m", "postgresql://u:***@[fd00::1]/m"),
    ("postgresql://u@db/m", "postgresql://u@db/m"),
    (SQLITE, SQLITE),
])
def test_redact_uri(uri: str, shown: str) -> None:
    assert d.redact_uri(uri) == shown


def test_the_clis_messages_redact_the_same_way() -> None:
    from mlops_provision.options import _redact_uri

    assert _redact_uri(PG) == d.redact_uri(PG)


# --- basic auth: the user database and its realm ----------------------------------------------

@pytest.mark.parametrize(("uri", "auth_db"), [
    (PG, "postgresql+psycopg2://mlflow:pw@db.example.com:5432/mlflow"),  # the tracking database itself
    ("postgresql+psycopg2://u:p%25@h/db", "postgresql+psycopg2://u:p%25@h/db"),
    (SQLITE, "sqlite:////var/lib/mlflow/auth.db"),
])
def test_auth_db_uri(uri: str, auth_db: str) -> None:
    assert d.auth_db_uri(uri, "/var/lib/mlflow") == auth_db


@pytest.mark.parametrize(("uri", "auth", "url"), [
    (PG, "basic", "postgresql://mlflow@db.example.com:5432/mlflow"),
    (SQLITE, "basic", "sqlite:////var/lib/mlflow/auth.db"),
    (PG, "none", ""),
    (SQLITE, "none", ""),
])
def test_schema_auth_db_url_has_no_password(uri: str, auth: str, url: str) -> None:
    assert d.schema_auth_db_url(uri, auth, "/var/lib/mlflow") == url


@pytest.mark.parametrize(("uri", "realm"), [
    (SQLITE, "vm1"),
    ("postgresql://u:pw@127.0.0.1:5432/mlflow", "vm1"),  # the host's own PostgreSQL, however named
    ("postgresql://u:pw@localhost/mlflow", "vm1"),
    ("postgresql://u:pw@LocalHost:5433/other", "vm1"),  # host names are compared lower-cased
    ("postgresql://u:pw@[::1]:5432/mlflow", "vm1"),
    (PG, "pg-db.example.com-5432-mlflow"),
    ("postgresql+psycopg2://u:pw@DB.Example.com/mlflow?sslmode=require", "pg-db.example.com-5432-mlflow"),
    ("postgresql://u:pw@db:6543/ml%20flow", "pg-db-6543-ml_20flow"),
    ("postgresql://u:pw@[FD00::1]:5433/mlflow", "pg-fd00__1-5433-mlflow"),
    ("postgresql://u:pw@db:5432/", "pg-db-5432-"),
    ("postgresql://u:pw@db:5432/a/b", "pg-db-5432-a_b"),
])
def test_auth_realm_names_the_user_database(uri: str, realm: str) -> None:
    assert d.auth_realm(uri, "vm1") == realm


def test_servers_sharing_one_postgresql_share_one_realm() -> None:
    assert d.auth_realm(PG, "vm1") == d.auth_realm(PG, "vm2")
    assert d.auth_realm(SQLITE, "vm1") != d.auth_realm(SQLITE, "vm2")


def test_fixed_paths() -> None:
    assert d.auth_config_path("/etc/mlflow") == "/etc/mlflow/basic_auth.ini"
    assert d.gcs_credentials_path("/etc/mlflow") == "/etc/mlflow/gcs-credentials.json"


# --- artifact store ---------------------------------------------------------------------------

@pytest.mark.parametrize(("serve", "root", "destination", "store"), [
    (True, "", "/var/lib/mlflow/artifacts", "/var/lib/mlflow/artifacts"),
    (True, "s3://b/root", "/var/lib/mlflow/artifacts", "/var/lib/mlflow/artifacts"),  # served: the destination
    (False, "wasbs://c@a.blob.core.windows.net/p", "/var/lib/mlflow/artifacts", "wasbs://c@a.blob.core.windows.net/p"),
    (False, "", "/var/lib/mlflow/artifacts", "/var/lib/mlflow/artifacts"),
])
def test_artifact_store(serve: bool, root: str, destination: str, store: str) -> None:
    assert d.artifact_store(serve, root, destination) == store


@pytest.mark.parametrize(("store", "kind"), [
    ("/var/lib/mlflow/artifacts", "local"), ("file:///var/lib/mlflow/a", "local"), ("mlflow-artifacts:/", "local"),
    ("s3://bucket/prefix", "s3"), ("wasbs://c@acct.blob.core.windows.net/p", "wasbs"), ("gs://bucket/p", "gs"),
    ("sftp://user@host/srv/a", "sftp"), ("S3://bucket", "local"), ("https://example/s3://x", "local"), ("", "local"),
])
def test_artifact_kind(store: str, kind: str) -> None:
    assert d.artifact_kind(store) == kind


def test_the_clis_credentials_use_the_same_kind() -> None:
    from mlops_provision.credentials import artifact_kind

    values = {"mlflow_serve_artifacts": False, "mlflow_default_artifact_root": "gs://b/p",
              "mlflow_artifacts_destination": "/var/lib/mlflow/artifacts"}
    assert artifact_kind(values) == "gs"
    assert artifact_kind({**values, "mlflow_serve_artifacts": True}) == "local"


def test_store_env_local_and_sftp_need_nothing() -> None:
    assert d.store_env("/etc/mlflow") == {}
    assert d.store_env("/etc/mlflow", s3_ignore_tls=False, gcs_credentials_file="") == {}


def test_store_env_s3_with_endpoint_and_ca_bundle_in_the_roles_order() -> None:
    env = d.store_env("/etc/mlflow", s3_access_key_id="AK", s3_secret_access_key="se/cr+et",
                      s3_region="eu-west-1", s3_endpoint_url="https://s3.example:8333",
                      s3_ca_bundle="/etc/ssl/private-ca.pem", s3_ignore_tls=True)
    assert list(env.items()) == [  # the order of the JSON the artifact probe reads
        ("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "se/cr+et"), ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("MLFLOW_S3_ENDPOINT_URL", "https://s3.example:8333"), ("AWS_CA_BUNDLE", "/etc/ssl/private-ca.pem"),
        ("MLFLOW_S3_IGNORE_TLS", "true")]


def test_store_env_s3_keys_only() -> None:
    assert d.store_env("/etc/mlflow", s3_access_key_id="AK", s3_secret_access_key="SK") == {
        "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}


def test_store_env_azure_by_connection_string_or_key() -> None:
    conn = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k=="
    assert d.store_env("/etc/mlflow", azure_connection_string=conn) == {"AZURE_STORAGE_CONNECTION_STRING": conn}
    assert d.store_env("/etc/mlflow", azure_account_key="KEY==") == {"AZURE_STORAGE_ACCESS_KEY": "KEY=="}


def test_store_env_gcs_points_at_the_pushed_credentials() -> None:
    env = d.store_env("/etc/ml flow", gcs_credentials_file="/home/op/sa.json")
    assert env == {"GOOGLE_APPLICATION_CREDENTIALS": "/etc/ml flow/gcs-credentials.json"}


def test_store_env_gcs_endpoint_is_the_emulator_host_with_its_scheme() -> None:
    # google-cloud-storage reads STORAGE_EMULATOR_HOST as a base URL: the scheme must stay.
    env = d.store_env("/etc/mlflow", gcs_credentials_file="/home/op/sa.json", gcs_endpoint_url="http://10.0.2.2:4443")
    assert env == {"GOOGLE_APPLICATION_CREDENTIALS": "/etc/mlflow/gcs-credentials.json",
                   "STORAGE_EMULATOR_HOST": "http://10.0.2.2:4443"}


# --- network ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bind", "tls", "address"), [
    ("0.0.0.0", "", "0.0.0.0"), ("::", "", "::"), ("0.0.0.0", "self-signed", "127.0.0.1"),
    ("10.0.0.1", "provided", "127.0.0.1"), ("0.0.0.0", False, "0.0.0.0"),
])
def test_listen_address(bind: str, tls: object, address: str) -> None:
    assert d.listen_address(bind, tls) == address


def test_allowed_hosts() -> None:
    names = ["localhost", "vm1", "10.0.0.1", "fd00::1"]
    expected = ["localhost", "vm1", "10.0.0.1", "fd00::1", "localhost:*", "vm1:*", "10.0.0.1:*", "fd00::1:*"]
    assert d.with_any_port(names) == expected
    assert d.allowed_hosts([], names) == expected
    explicit = ["mlflow.example.com", "mlflow.example.com:*"]
    assert d.allowed_hosts(explicit, names) is explicit  # as given, not extended


def test_the_allowlist_admits_every_address_of_each_load_balancer() -> None:
    lbs = {"lb1": {"all_ipv4_addresses": ["10.89.0.5", "192.168.1.5"],
                   "all_ipv6_addresses": ["fe80::1", "FE80::2", "2001:db8::5"]},
           "lb2": {"all_ipv4_addresses": ["10.89.0.6"], "all_ipv6_addresses": []}}
    assert d.allow_from(["10.0.0.0/8"], lbs) == [
        "10.0.0.0/8", "10.89.0.5/32", "10.89.0.6/32", "192.168.1.5/32", "2001:db8::5/128"]
    # The same addresses on other load balancers, or in another order: the same list.
    moved = {"lb1": {"all_ipv4_addresses": ["10.89.0.6", "10.89.0.5"]},
             "lb2": {"all_ipv4_addresses": ["192.168.1.5"], "all_ipv6_addresses": ["2001:db8::5"]}}
    assert d.allow_from(["10.0.0.0/8"], moved) == d.allow_from(["10.0.0.0/8"], lbs)
    assert d.allow_from(["10.89.0.5/32"], {"lb2": lbs["lb2"]}) == ["10.89.0.5/32", "10.89.0.6/32"]


def test_without_an_allowlist_the_port_stays_open_to_everyone() -> None:
    assert d.allow_from([], {"lb1": {"all_ipv4_addresses": ["10.89.0.5"]}}) == []
    assert d.allow_from(["10.0.0.0/8"], {}) == ["10.0.0.0/8"]


def test_a_load_balancer_of_unknown_address_is_an_error_not_a_silent_lockout() -> None:
    with pytest.raises(ValueError, match="the addresses of load balancer lb1 are not known"):
        d.allow_from(["10.0.0.0/8"], {"lb1": {"all_ipv4_addresses": [], "all_ipv6_addresses": ["fe80::1"]}})


# --- realms: servers sharing one database ---------------------------------------------------------

REALM_DEFAULTS = {
    "mlflow_backend": "sqlite", "mlflow_backend_store_uri": "", "mlflow_postgresql_database": "mlflow",
    "mlflow_postgresql_max_connections": 200, "mlflow_registry_store_uri": "", "mlflow_serve_artifacts": True,
    "mlflow_default_artifact_root": "", "mlflow_artifacts_destination": "/var/lib/mlflow/artifacts",
    "mlflow_workers": 4, "mlflow_db_pool_size": 5, "mlflow_db_max_overflow": 5, "mlflow_auth": "basic",
    "mlflow_job_execution": False,
}
S3 = {"mlflow_artifacts_destination": "s3://bucket/mlflow"}


def test_a_server_counts_a_pool_per_store_in_every_process() -> None:
    assert d.server_connections(4, 5, 5, "basic") == (150, "(4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150")
    assert d.server_connections(4, 3, 2, "none")[0] == 50  # no user database
    assert d.server_connections(2, 5, 5, "basic", job_execution=True) == (
        180, "(2 workers + 1) x 3 stores x (5 pool + 5 overflow) + 9 job processes x 10 = 180")


def test_servers_on_the_mlflow_db_host_are_one_realm_and_sqlite_servers_are_alone() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql", **S3}, "b": {"mlflow_backend": "postgresql", **S3},
                "c": {}, "db": {"mlflow_postgresql_max_connections": 400}}
    found = d.realms(["a", "b", "c"], hostvars, ["db"], REALM_DEFAULTS)
    assert [(r["database"], r["servers"], r["max_connections"]) for r in found] == [
        ("mlflow on db", ["a", "b"], 400), ("SQLite on c", ["c"], None)]
    assert d.realm_problems(found) == []


def test_an_external_database_is_shared_by_address_and_one_on_localhost_is_each_servers_own() -> None:
    shared = {"mlflow_backend_store_uri": "postgresql://u:secret@db.example.com/mlflow", **S3}
    own = {"mlflow_backend_store_uri": "postgresql://u:secret@127.0.0.1:5432/mlflow"}
    found = d.realms(["a", "b", "c", "e"], {"a": shared, "b": shared, "c": own, "e": own}, [], REALM_DEFAULTS)
    assert [(r["database"], r["servers"], r["max_connections"]) for r in found] == [
        ("postgresql://db.example.com:5432/mlflow", ["a", "b"], None),
        ("postgresql://u:***@127.0.0.1:5432/mlflow on c", ["c"], None),
        ("postgresql://u:***@127.0.0.1:5432/mlflow on e", ["e"], None)]
    assert "secret" not in repr(found)
    assert d.realm_problems(found) == []  # an operator's max_connections is read from the server


def test_servers_sharing_a_database_with_artifacts_on_their_own_disks_are_refused() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql"}, "b": {"mlflow_backend": "postgresql", **S3},
                "db": {"mlflow_postgresql_max_connections": 400}}
    found = d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS)
    assert d.realm_problems(found) == [
        "2 servers (a, b) share the database mlflow on db, but keep artifacts on their own disks "
        "(a: /var/lib/mlflow/artifacts): a run logged through one server would have its artifacts on that host "
        "only. Give the servers of a shared database one artifact store: mlflow_artifacts_destination "
        "(--artifacts-destination) s3://, wasbs://, gs:// or sftp://."]
    # One server alone may keep its artifacts locally.
    assert d.realm_problems(d.realms(["a"], hostvars, ["db"], REALM_DEFAULTS)) == []


def test_more_connections_than_the_projects_postgresql_allows_are_refused_with_the_number_to_set() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql", **S3}, "b": {"mlflow_backend": "postgresql", **S3},
                "db": {}}
    problems = d.realm_problems(d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS))
    assert problems == [
        "2 server(s) on PostgreSQL mlflow on db may open 300 connections "
        "(a: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150; "
        "b: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150), but its max_connections 200 leaves 187 "
        "(13 kept for superusers, backups and maintenance). Set mlflow_postgresql_max_connections to 313 or "
        "more, or lower mlflow_workers, mlflow_db_pool_size or mlflow_db_max_overflow."]
    # The defaults fit the project's PostgreSQL (200) on one server (150 <= 187), and 313 fits two;
    # a stock max_connections of 100 does not.
    one = {"a": {"mlflow_backend": "postgresql"}}
    assert d.realm_problems(d.realms(["a"], one, [], REALM_DEFAULTS)) == []
    stock = REALM_DEFAULTS | {"mlflow_postgresql_max_connections": 100}
    assert len(d.realm_problems(d.realms(["a"], one, [], stock))) == 1
    hostvars["db"] = {"mlflow_postgresql_max_connections": 313}
    assert d.realm_problems(d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS)) == []


AUTO_DEFAULTS = REALM_DEFAULTS | {"mlflow_postgresql_max_connections": "auto"}


def test_the_projects_postgresql_sizes_its_max_connections_by_default() -> None:
    import yaml

    common = yaml.safe_load((ROOT / "roles/mlflow_common/defaults/main.yml").read_text())
    assert common["mlflow_postgresql_max_connections"] == d.AUTO == "auto"
    assert (d.auto_max_connections(0), d.auto_max_connections(187), d.auto_max_connections(188)) == (200, 200, 201)


@pytest.mark.parametrize(("count", "expected"), [(1, 200), (2, 313), (5, 763)])
def test_auto_max_connections_fits_any_number_of_servers_at_the_defaults(count: int, expected: int) -> None:
    servers = [f"s{n}" for n in range(1, count + 1)]
    hostvars: dict[str, dict[str, object]] = {s: {"mlflow_backend": "postgresql", **S3} for s in servers}
    hostvars["db"] = {}
    found = d.realms(servers, hostvars, ["db"], AUTO_DEFAULTS)
    assert [(r["servers"], r["db_host"], r["max_connections"]) for r in found] == [(servers, "db", expected)]
    assert d.postgresql_max_connections(found, "db") == expected
    assert d.realm_problems(found) == []  # the realm check accepts what the database host will be given
    # the same number written out is accepted too; one less is refused, where the budget exceeds 187
    for limit, accepted in ((expected, True), (expected - 1, count == 1)):
        hostvars["db"] = {"mlflow_postgresql_max_connections": limit}
        assert (d.realm_problems(d.realms(servers, hostvars, ["db"], AUTO_DEFAULTS)) == []) is accepted


def test_auto_max_connections_counts_workers_jobs_and_every_database_host_on_its_own() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql", "mlflow_workers": 8},  # (8 + 1) x 3 x 10 = 270
                "b": {"mlflow_backend": "postgresql"},
                "c": {"mlflow_backend": "postgresql", "mlflow_job_execution": True, "mlflow_db_pool_size": 10}}
    found = d.realms(["a", "b", "c"], hostvars, [], AUTO_DEFAULTS)  # no mlflow_db: each server's own
    assert [(r["db_host"], r["max_connections"]) for r in found] == [("a", 283), ("b", 200), ("c", 373)]
    assert [d.postgresql_max_connections(found, host) for host in ("a", "b", "c", "elsewhere")] == [283, 200, 373, 200]
    assert d.realm_problems(found) == []
    # " auto " and "AUTO" as an inventory may give them; anything else is the database role's to refuse
    for value, limit in ((" auto ", 283), ("AUTO", 283), ("300", 300), ("many", None)):
        realm = d.realms(["a"], {"a": {**hostvars["a"], "mlflow_postgresql_max_connections": value}}, [],
                         AUTO_DEFAULTS)[0]
        assert realm["max_connections"] == limit, value


def test_an_explicit_max_connections_too_small_for_auto_defaults_is_still_refused() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql", **S3}, "b": {"mlflow_backend": "postgresql", **S3},
                "db": {"mlflow_postgresql_max_connections": 200}}
    assert d.realm_problems(d.realms(["a", "b"], hostvars, ["db"], AUTO_DEFAULTS)) == [
        "2 server(s) on PostgreSQL mlflow on db may open 300 connections "
        "(a: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150; "
        "b: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150), but its max_connections 200 leaves 187 "
        "(13 kept for superusers, backups and maintenance). Set mlflow_postgresql_max_connections to 313 or "
        "more, or lower mlflow_workers, mlflow_db_pool_size or mlflow_db_max_overflow."]


def test_an_operators_postgresql_is_never_sized_here() -> None:
    shared = {"mlflow_backend": "postgresql", "mlflow_backend_store_uri": "postgresql://u:p@pg.example.com/m", **S3}
    found = d.realms(["a", "b"], {"a": shared, "b": shared}, [], AUTO_DEFAULTS)
    assert [(r["db_host"], r["max_connections"]) for r in found] == [(None, None)]
    assert d.postgresql_max_connections(found, "a") == 200  # no database role runs for it anyway


def test_values_that_are_not_numbers_are_left_to_each_hosts_own_validation() -> None:
    found = d.realms(["a"], {"a": {"mlflow_backend": "postgresql", "mlflow_workers": "many"}}, [], REALM_DEFAULTS)
    assert found[0]["connections"]["a"] == (0, "not counted (invalid numbers)") and d.realm_problems(found) == []
    found = d.realms(["a"], {"a": {"mlflow_backend": "postgresql", "mlflow_postgresql_max_connections": "x"}},
                     [], REALM_DEFAULTS)
    assert found[0]["max_connections"] is None and d.realm_problems(found) == []


def test_servers_sharing_a_database_must_all_require_a_login() -> None:
    shared = {"mlflow_backend": "postgresql", **S3}
    hostvars = {"a": shared, "b": {**shared, "mlflow_auth": "none"}, "db": {"mlflow_postgresql_max_connections": 400}}
    assert d.realm_problems(d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS)) == [
        "2 servers (a, b) share the database mlflow on db, but b would serve it without authentication "
        "(mlflow_auth none): anyone reaching it could read and delete what the others protect. Give every server "
        "of a shared database the same mlflow_auth (--auth). A value given on the command line (a flag or -e) "
        "counts for every server of the inventory; set a per-server value in the inventory instead."]
    hostvars["a"] = {**shared, "mlflow_auth": "none"}  # all open: the deploy warns about that, per host
    assert d.realm_problems(d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS)) == []


def test_one_server_of_a_shared_database_at_most_runs_server_side_jobs() -> None:
    shared = {"mlflow_backend": "postgresql", **S3}
    hostvars = {"a": {**shared, "mlflow_job_execution": True}, "b": {**shared, "mlflow_job_execution": "true"},
                "c": shared, "db": {"mlflow_postgresql_max_connections": 1000}}
    assert d.realm_problems(d.realms(["a", "b", "c"], hostvars, ["db"], REALM_DEFAULTS)) == [
        "2 servers (a, b) on the database mlflow on db would run MLflow's server-side jobs: each restart re-queues "
        "the jobs the others are running, so jobs would run twice. Turn mlflow_job_execution (--job-execution) on "
        "for one server of a shared database at most. A value given on the command line (a flag or -e) counts for "
        "every server of the inventory; set a per-server value in the inventory instead."]
    hostvars["b"] = shared
    assert d.realm_problems(d.realms(["a", "b", "c"], hostvars, ["db"], REALM_DEFAULTS)) == []


def test_booleans_arrive_as_strings_from_templates_and_are_read_as_booleans() -> None:
    hostvars = {"a": {"mlflow_backend": "postgresql", "mlflow_job_execution": "False",
                      "mlflow_serve_artifacts": "false", "mlflow_default_artifact_root": "s3://b/p",
                      "mlflow_artifacts_destination": "/var/lib/mlflow/artifacts"}}
    realm = d.realms(["a"], hostvars, [], REALM_DEFAULTS)[0]
    assert realm["jobs"] == [] and realm["connections"]["a"][0] == 150 and realm["artifacts"]["a"] == "s3://b/p"


class _Lazy(dict):  # type: ignore[type-arg]
    """A host's variables as Ansible's HostVars gives them: a template that needs a fact or a
    role variable fails only when it is read."""

    def __getitem__(self, name: str) -> object:
        value = super().__getitem__(name)
        if value == "{{ undefined }}":
            raise RuntimeError("'mlflow_data_dir' is undefined")
        return value


def test_a_host_whose_values_cannot_be_read_here_is_left_to_its_own_checks() -> None:
    hostvars = {"a": _Lazy(mlflow_backend="postgresql", mlflow_artifacts_destination="{{ undefined }}"),
                "b": {"mlflow_backend": "postgresql", **S3}, "db": {}}
    found = d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS)
    assert [(r["servers"], r["unchecked"]) for r in found] == [(["b"], ["a"])]
    assert d.realm_problems(found) == []
    # The host a play runs on passes its own, templated values: they are used instead.
    found = d.realms(["a", "b"], hostvars, ["db"], REALM_DEFAULTS, {"a": REALM_DEFAULTS | S3 | {
        "mlflow_backend": "postgresql"}})
    assert found[0]["servers"] == ["a", "b"] and found[0]["unchecked"] == []


def test_a_uri_that_does_not_parse_or_uses_a_socket_is_the_servers_own_and_shows_no_password() -> None:
    broken = {"mlflow_backend_store_uri": "postgresql://u:s3cr#et@db/mlflow"}
    socket = {"mlflow_backend_store_uri": "postgresql://u:pw@/mlflow?host=/var/run/postgresql"}
    found = d.realms(["a", "b", "c", "e"], {"a": broken, "b": broken, "c": socket, "e": socket}, [], REALM_DEFAULTS)
    assert [r["servers"] for r in found] == [["a"], ["b"], ["c"], ["e"]]
    assert "s3cr" not in repr(found) and "pw@" not in repr(found)


def test_max_connections_is_shared_by_every_database_on_one_postgresql_server() -> None:
    one = {"mlflow_backend_store_uri": "postgresql://u:p@pg.example.com/mlflow_a", **S3}
    other = {"mlflow_backend_store_uri": "postgresql://u:p@pg.example.com:5432/mlflow_b", **S3}
    found = d.realms(["a", "b"], {"a": one, "b": other}, [], REALM_DEFAULTS)
    assert [r["database"] for r in found] == ["postgresql://pg.example.com:5432/mlflow_a",
                                              "postgresql://pg.example.com:5432/mlflow_b"]
    assert d.server_budget(found, found[0]["server"]) == {
        "total": 300, "servers": ["a", "b"],
        "budget": ["a: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150",
                   "b: (4 workers + 1) x 3 stores x (5 pool + 5 overflow) = 150"]}


def test_servers_behind_load_balancers_must_share_one_postgresql_database() -> None:
    shared = {"mlflow_backend": "postgresql", **S3}
    one = d.realms(["a", "b"], {"a": shared, "b": shared, "db": {}}, ["db"], REALM_DEFAULTS)
    assert d.load_balancer_problems(one, ["lb1"]) == []
    assert d.load_balancer_problems(d.realms(["a", "b"], {"a": {}, "b": {}}, [], REALM_DEFAULTS), []) == []
    apart = d.realms(["a", "b"], {"a": shared, "b": {}, "db": {}}, ["db"], REALM_DEFAULTS)
    assert d.load_balancer_problems(apart, ["lb1"]) == [
        "The load balancers (lb1) would spread each client over 2 databases (mlflow on db: a; SQLite on b: b): a run "
        "logged through one server would be missing on the others. Put every server of group mlflow_servers on one "
        "PostgreSQL database (mlflow_backend postgresql with an mlflow_db host, or one mlflow_backend_store_uri)."]
    alone = d.realms(["a"], {"a": {}}, [], REALM_DEFAULTS)  # one server: SQLite is fine
    assert d.load_balancer_problems(alone, ["lb1", "lb2"]) == []
