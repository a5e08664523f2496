"""Secure by default, end to end on the shared sandbox (tests/e2e/conftest.py), in order: basic
auth and the user commands, the admin password kept out of every log, --auth none, the firewall
allowlist against a real nftables ruleset, and TLS through nginx with a self-signed certificate.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.conftest import VM, admin_env, cli, ensure_deployed, mlflow_client, places_where_secrets_must_not_be

pytestmark = pytest.mark.e2e
SHARED_SERVER = True

PROTECTED = "/api/2.0/mlflow/experiments/search?max_results=1"
OUTPUTS: list[str] = []  # every CLI output of this module, searched for secrets at the end
ADMIN_PASSWORDS: list[str] = []  # the generated one and the rotated one


@pytest.fixture(scope="module")
def vm(shared_server: VM) -> VM:
    return ensure_deployed(shared_server)


def deploy(vm: VM, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli("deploy", "--host", vm.name, *args)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def status(url: str, user: str = "", password: str = "", host: str = "", cafile: str = "",
           timeout: float = 10) -> int:
    """The HTTP status of a GET, or 0 when no answer came (refused, dropped, TLS refused)."""
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host:
        req.add_header("Host", host)
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _refused_by_every_worker(vm: VM, logins: list[tuple[str, str]], since: float,
                             limit: float = 60) -> tuple[float, float]:
    """Rounds of 16 concurrent requests per login (spread over every worker) until three rounds
    in a row all got 401. Returns the seconds from since to the start of the last round in
    which an old login was still accepted (0 if none) and to the start of the first clean round.
    The bound is about the former: a round takes a few seconds under load (each refusal costs
    the password hash), so the first clean round may start well after the cache expired."""
    from concurrent.futures import ThreadPoolExecutor

    clean, first_clean, last_dirty = 0, 0.0, since
    with ThreadPoolExecutor(16) as pool:
        while time.monotonic() - since < limit:
            began = time.monotonic()
            codes = list(pool.map(lambda login: status(vm.url + PROTECTED, *login), logins * 16))
            if set(codes) == {401}:
                clean, first_clean = clean + 1, first_clean if clean else began
            else:
                clean, last_dirty = 0, began
            if clean == 3:
                return last_dirty - since, first_clean - since
            time.sleep(0.5)
    raise AssertionError(f"{logins[0][0]}'s old login still accepted {limit} s after the change")


def admin_password(vm: VM) -> str:
    return admin_env(vm)["MLFLOW_TRACKING_PASSWORD"]


def test_basic_auth_is_on_by_default(vm: VM) -> None:
    proc = deploy(vm)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  auth       basic: admin user admin, password kept on this machine" in proc.stdout
    assert "  firewall   port 5000 open to everyone (no host firewall active;" in proc.stdout
    password = admin_password(vm)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    ADMIN_PASSWORDS.append(password)
    assert status(vm.url + PROTECTED) == 401  # anonymous
    assert status(vm.url + PROTECTED, "admin", "password1234") == 401  # MLflow's old default never works
    assert status(vm.url + PROTECTED, "admin", password) == 200
    assert status(vm.url + "/health") == 200  # load balancers and monitoring need no password
    assert vm.sh("stat -c '%a %U %G' /etc/mlflow/basic_auth.ini").strip() == "640 root mlflow"
    assert vm.sh("stat -c '%U' /var/lib/mlflow/auth.db").strip() == "mlflow"
    assert "--app-name basic-auth" in vm.sh("systemctl show -p ExecStart --value mlflow.service")
    proc = cli("health", "--host", vm.name, "--deep")  # logs in with the kept password
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_user_commands_manage_real_users(vm: VM) -> None:
    proc = cli("user", "add", "--host", vm.name, "alice")
    assert proc.returncode == 0, proc.stderr
    alice = re.search(r"password \(shown once, not kept\): (\S+)", proc.stdout).group(1)  # type: ignore[union-attr]
    result = mlflow_client(f"""
import json, mlflow
mlflow.set_tracking_uri({vm.url!r})
mlflow.set_experiment("alice-exp")
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5)
print(json.dumps({{"metrics": mlflow.get_run(run.info.run_id).data.metrics}}))
""", {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": alice})
    assert result["metrics"] == {"loss": 0.5}

    proc = cli("user", "list", "--host", vm.name)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"(?m)^admin +yes$", proc.stdout) and re.search(r"(?m)^alice +no$", proc.stdout)

    # The login cache (30 s by default): a changed password works at once; the old one is
    # refused by every worker within those 30 s. Both changes first, then one wait.
    proc = subprocess.run([CLI, "user", "passwd", "--host", vm.name, "alice", "--password-stdin"],
                          input="a-new-password-for-alice\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    alice_changed = time.monotonic()
    assert ("the old password is refused from now on by the worker that made the change and by every worker "
            "within 30 s (the login cache, mlflow_auth_cache_ttl_sec)") in proc.stdout
    assert status(vm.url + PROTECTED, "alice", "a-new-password-for-alice") == 200
    old = admin_password(vm)  # rotating the admin password keeps the new one for the tool itself
    proc = cli("user", "passwd", "--host", vm.name, "admin")  # it logs in with the old one until then
    assert proc.returncode == 0, proc.stderr
    admin_changed = time.monotonic()
    assert "kept in the secrets store" in proc.stdout and old not in proc.stdout
    assert status(vm.url + PROTECTED, "admin", admin_password(vm)) == 200
    ADMIN_PASSWORDS.append(admin_password(vm))
    # status logs in with this machine's (new) password at once: it once showed VERSION - and
    # "answered 401", exit 1, until the next deploy.
    proc = cli("status", "--host", vm.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3.17.2" in proc.stdout and "401" not in proc.stdout
    # A taken name is refused before anything changes, with no server error and no password hash.
    proc = subprocess.run([CLI, "user", "add", "--host", vm.name, "alice", "--password-stdin"],
                          input="another-password-for-alice\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"user add: alice already exists on {vm.name}; to change the password use: mlops-provision user "
            f"passwd --host {vm.name} alice") in proc.stderr
    assert not re.search(r"scrypt|pbkdf2|another-password-for-alice", proc.stdout + proc.stderr)
    assert status(vm.url + PROTECTED, "alice", "a-new-password-for-alice") == 200
    # Each bound counts from its own change: a worker cached the old login at the latest then.
    alice_last, alice_clean = _refused_by_every_worker(vm, [("alice", alice)], alice_changed)
    admin_last, admin_clean = _refused_by_every_worker(vm, [("admin", old)], admin_changed)
    print(f"old passwords last accepted in a round starting {alice_last:.1f} s (alice) and {admin_last:.1f} s "
          f"(admin) after the change; refused by every worker from {alice_clean:.1f} s and {admin_clean:.1f} s")
    # No round that began after the 30 s of the cache (+1 s for a request to reach its worker) saw one.
    assert alice_last <= 30 + 1 and admin_last <= 30 + 1
    assert status(vm.url + PROTECTED, "alice", "a-new-password-for-alice") == 200

    proc = cli("user", "remove", "--host", vm.name, "alice")
    assert proc.returncode == 0, proc.stderr
    removed_last, _ = _refused_by_every_worker(vm, [("alice", "a-new-password-for-alice")], time.monotonic())
    assert removed_last <= 30 + 1

    proc = cli("user", "remove", "--host", vm.name, "admin")
    assert proc.returncode == 2
    assert "admin is the admin user this tool logs in with; it cannot be removed here" in proc.stderr
    assert cli("health", "--host", vm.name).returncode == 0
    # The next deploy writes the rotated password into basic_auth.ini (where it would recreate the
    # admin if the user database were ever lost), verifies the login with it, and is healthy.
    proc = deploy(vm)
    assert proc.returncode == 0 and "health     OK" in proc.stdout, proc.stdout + proc.stderr


def test_the_admin_password_and_csrf_key_never_leak(vm: VM) -> None:
    state = Path(os.environ["MLOPS_PROVISION_HOME"])
    secrets = [*ADMIN_PASSWORDS, (state / "secrets" / f"mlflow-flask-{vm.name}.key").read_text().split()[0]]
    assert len(secrets) == 3 and all(len(s) >= 32 for s in secrets)
    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    assert [name for name, text in places.items() if any(s in text for s in secrets)] == []


def test_auth_none_is_an_explicit_opt_out_with_a_warning(vm: VM) -> None:
    proc = deploy(vm, "--auth", "none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  auth       NONE (--auth none): WARNING anyone who reaches the server can read, change" in proc.stdout
    assert status(vm.url + PROTECTED) == 200
    assert vm.sh("test -e /etc/mlflow/basic_auth.ini || echo gone").strip() == "gone"
    # The next test's deploy turns basic auth back on; it checks that the users kept their passwords.


def test_allow_from_limits_the_port_with_nftables(vm: VM) -> None:
    # A host firewall like many servers have: drop by default, SSH allowed.
    vm.sh("apt-get update -q >/dev/null"
          " && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables curl >/dev/null")
    vm.sh("nft -f - <<'EOF'\n"
          "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n"
          "  ct state established,related accept\n  iif lo accept\n  tcp dport 22 accept\n }\n}\nEOF")
    assert status(vm.url + "/health", timeout=3) == 0  # the drop policy holds
    # This machine reaches the VM's published ports from the podman network's gateway.
    gateway = vm.sh("ip -4 route show default | awk '{print $3}'").strip()

    proc = deploy(vm, "--allow-from", f"{gateway}/32", "--allow-from", "2001:db8::/32")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"  firewall   port 5000 open only to {gateway}/32, 2001:db8::/32 (nftables)" in proc.stdout
    assert status(vm.url + "/health") == 200
    chain = vm.sh("nft list chain inet filter input")
    assert f"ip saddr {gateway} tcp dport 5000 accept" in chain
    assert "ip6 saddr 2001:db8::/32 tcp dport 5000 accept" in chain
    # Basic auth is back on (the last test ran with --auth none) and the users kept their passwords.
    assert status(vm.url + PROTECTED) == 401
    assert status(vm.url + PROTECTED, "admin", admin_password(vm)) == 200

    proc = deploy(vm, "--allow-from", "192.0.2.0/24")  # a network this machine is not in
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(vm.url + "/health", timeout=3) == 0
    chain = vm.sh("nft list chain inet filter input")
    assert gateway not in chain and chain.count('comment "mlflow"') == 1  # the old rules were replaced

    proc = deploy(vm)  # no allowlist: open to all, and the summary says so
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  firewall   port 5000 open to everyone (nftables; --allow-from CIDR limits it)" in proc.stdout
    assert status(vm.url + "/health") == 200


def test_tls_self_signed_through_nginx(vm: VM) -> None:
    proc = deploy(vm, "--tls", "self-signed")  # the nftables drop policy of the last test is still on
    assert proc.returncode == 0, proc.stdout + proc.stderr
    url = re.search(r"URL        (https://127\.0\.0\.1:\d+)\n", proc.stdout).group(1)  # type: ignore[union-attr]
    assert "  tls        self-signed (nginx in front; MLflow itself listens on 127.0.0.1 only)" in proc.stdout
    assert "  firewall   port 443 and 80 open to everyone (nftables;" in proc.stdout
    assert "  health     OK" in proc.stdout  # the CLI trusts the certificate it fetched
    ca = str(Path(os.environ["MLOPS_PROVISION_HOME"]) / "tls" / f"{vm.name}.crt")
    assert status(url + "/health", cafile=ca) == 200
    assert status(url + "/health") == 0  # an unknown certificate is not trusted
    assert status(url + "/health", host="evil.example", cafile=ca) == 421  # a forged Host never reaches MLflow
    assert status(url + PROTECTED, cafile=ca) == 401
    assert status(url + PROTECTED, "admin", admin_password(vm), cafile=ca) == 200
    listening = vm.sh("ss -Hltn 'sport = :5000'")
    assert "127.0.0.1:5000" in listening and "0.0.0.0:5000" not in listening and "*:5000" not in listening
    assert status(vm.url + "/health", timeout=3) == 0  # the old plain port is closed
    redirect = vm.sh("curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://localhost/health?x=1")
    assert redirect == "301 https://localhost/health?x=1"
    fqdn = vm.sh("hostname -f").strip()
    assert vm.sh(f"curl -sf --cacert /etc/mlflow/tls/mlflow.crt https://{fqdn}/health").strip() == "OK"
    assert cli("health", "--host", vm.name, "--deep").returncode == 0

    # The real client over HTTPS, trusting the fetched certificate: a run and an 8 MB artifact.
    result = mlflow_client(f"""
import hashlib, json, os, tempfile, mlflow
mlflow.set_tracking_uri({url!r})
mlflow.set_experiment("tls")
blob = os.urandom(8 * 1024 * 1024)
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, "w.bin"), "wb").write(blob)
    with mlflow.start_run() as run:
        mlflow.log_artifact(os.path.join(d, "w.bin"))
    back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="w.bin", dst_path=d + "/o")
    print(json.dumps({{"same": hashlib.sha256(open(back, "rb").read()).digest() == hashlib.sha256(blob).digest()}}))
""", {**admin_env(vm), "MLFLOW_TRACKING_SERVER_CERT_PATH": ca})
    assert result["same"] is True
    digest = hashlib.sha256(Path(ca).read_bytes()).hexdigest()
    assert digest == hashlib.sha256(vm.sh("cat /etc/mlflow/tls/mlflow.crt").encode()).hexdigest()


def test_tls_with_a_provided_certificate(vm: VM, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=mlflow.test",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    # An operator's private CA: the CLI's own health check trusts it through MLflow's client variable.
    proc = subprocess.run([CLI, "deploy", "--host", vm.name, "--tls-cert", str(cert), "--tls-key", str(key)],
                          env={**os.environ, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert)},
                          capture_output=True, text=True, timeout=900)
    OUTPUTS.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  tls        provided (nginx in front;" in proc.stdout and "  health     OK" in proc.stdout
    url = re.search(r"URL        (https://127\.0\.0\.1:\d+)\n", proc.stdout).group(1)  # type: ignore[union-attr]
    assert status(url + "/health", cafile=str(cert)) == 200  # nginx serves exactly this certificate
    assert vm.sh("stat -c '%a %U' /etc/mlflow/tls/mlflow.key").strip() == "600 root"
    headers = vm.sh("curl -s -o /dev/null -D - --cacert /etc/mlflow/tls/mlflow.crt https://localhost/health")
    assert "strict-transport-security: max-age=31536000" in headers.lower()  # HSTS only with a real certificate
    body = "".join(key.read_text().splitlines()[1:-1])
    places = places_where_secrets_must_not_be(vm, OUTPUTS)
    assert [name for name, text in places.items() if body[:40] in text] == []
