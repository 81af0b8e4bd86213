"""Helpers of the OCI tests: a real registry (Debian's docker-registry), a small
Python front (Bearer tokens, hostile answers), and OCI layouts built here."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import io
import json
import lzma
import os
import secrets
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test"))
# bcrypt of PASSWORD (docker-registry's htpasswd reads bcrypt only), made once with crypt(3).
USER, PASSWORD = "kiwi", "kiwi-test-password"
HTPASSWD_HASH = "$2b$04$zQyFaze6Ygx0yvsbN6mLbu0ymqostJUXyOaZ7fMJpYzLSesCbXfkW"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# The application test image's config (conftest.py pushes it as test/app:1).
APP_CONFIG = {
    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the image"],
    "WorkingDir": "/srv/app",
    "Entrypoint": ["/bin/echo", "entry"],
    "Cmd": ["cmd-arg"],
    "User": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the registry exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Registry:
    """docker-registry on 127.0.0.1:<free port>, storage and config in `folder`."""

    def __init__(self, folder: Path, basic_auth: bool = False):
        self.folder = folder
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if basic_auth:
            (folder / "htpasswd").write_text(f"{USER}:{HTPASSWD_HASH}\n")
            config["auth"] = {"htpasswd": {"realm": "kiwi-test", "path": str(folder / "htpasswd")}}
        (folder / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(folder / "registry.log", "wb")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # exactly the pid we started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class Front:
    """A Python HTTP server on 127.0.0.1 in front of a registry (or of nothing).

    bearer: require a token from our own /token endpoint (the Docker Hub flow).
    routes: {path: (status, headers, body)} answered instead of forwarding.
    Records every request (method, path, Authorization)."""

    def __init__(self, upstream: str | None = None, bearer: bool = False):
        self.upstream, self.bearer = upstream, bearer
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.tokens_issued: list[str] = []
        self.headers: list[dict] = []
        self.token = secrets.token_hex(16)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                front.requests.append((self.command, self.path, self.headers.get("Authorization")))
                front.headers.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                if path.startswith("/token"):
                    front.tokens_issued.append(self.path)
                    return self.reply(
                        200, {"Content-Type": "application/json"}, json.dumps({"token": front.token}).encode()
                    )
                if front.bearer and self.headers.get("Authorization") != f"Bearer {front.token}":
                    realm = f"http://127.0.0.1:{front.port}/token"
                    challenge = f'Bearer realm="{realm}",service="kiwi-test"'
                    return self.reply(
                        401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, b"{}"
                    )
                route = front.routes.get(path)
                if route is not None:
                    return self.reply(*route)
                if front.upstream is None:
                    return self.reply(404, {}, b"")
                return self.forward(body)

            def forward(self, body):
                conn = http.client.HTTPConnection(front.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                out = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in ("content-length", "connection", "transfer-encoding")
                }
                self.reply(response.status, out, data)
                conn.close()

            def reply(self, status, headers, body):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                if headers.get("Connection") == "close":
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve_image(self, repository: str, tag: str, layers: list[bytes], config: dict | None = None) -> dict:
        """Routes for a one-platform image of the given layer blobs (tars, as they are);
        returns {digest: path} of its blobs so a test can tamper with them."""
        layer_descs = [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers]
        image_config = {"architecture": host_arch(), "os": "linux", "config": config or {}}
        config_bytes = json.dumps(image_config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)},
            "layers": layer_descs,
        }
        self.routes[f"/v2/{repository}/manifests/{tag}"] = (
            200,
            {"Content-Type": OCI_MANIFEST},
            json.dumps(manifest).encode(),
        )
        paths = {}
        for blob in [config_bytes, *layers]:
            path = f"/v2/{repository}/blobs/{sha256(blob)}"
            self.routes[path] = (200, {"Content-Type": "application/octet-stream"}, blob)
            paths[sha256(blob)] = path
        return paths

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- image building


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_layer_tar() -> bytes:
    """The busybox test rootfs as an uncompressed tar."""
    return lzma.decompress((CACHE / "busybox-rootfs.tar.xz").read_bytes())


def make_tar(entries) -> bytes:
    """entries: (name, kind, payload, mode); kind f=file (payload bytes), d=dir,
    l=symlink / h=hard link (payload = link target)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1700000000
            if kind == "d":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "f":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind in "lh":
                info.type = tarfile.SYMTYPE if kind == "l" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return raw.getvalue()


class Layout:
    """An OCI image layout folder written by hand: blobs, manifests, index.json."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = sha256(data)
        (self.folder / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, layers: list[bytes], config: dict | None = None, arch: str = "amd64") -> dict:
        """A manifest of gzip layers (uncompressed tars given); returns its descriptor."""
        descriptors = [self.blob(gzip.compress(t, 1, mtime=0), OCI_LAYER_GZIP) for t in layers]
        image_config = {
            "architecture": arch,
            "os": "linux",
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]},
        }
        config_desc = self.blob(json.dumps(image_config).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": descriptors,
        }
        desc = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": "linux"}
        return desc

    def tag(self, descriptor: dict, tag: str) -> None:
        entry = dict(descriptor, annotations={"org.opencontainers.image.ref.name": tag})
        self.index.append(entry)
        self.write_index()

    def tag_index(self, manifests: list[dict], tag: str) -> None:
        """An image index of several platforms, tagged."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        desc = self.blob(json.dumps(index).encode(), OCI_INDEX)
        self.tag(desc, tag)

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index}
        (self.folder / "index.json").write_text(json.dumps(index))


def skopeo_push(
    layout: Path, tag: str, dest: str, all_platforms: bool = False, creds: str | None = None
) -> None:
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    cmd += ["--all"] if all_platforms else []
    cmd += [f"--dest-creds={creds}"] if creds else []
    subprocess.run([*cmd, f"oci:{layout}:{tag}", f"docker://{dest}"], check=True, capture_output=True)


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def registry_get(url: str, accept: str = OCI_MANIFEST) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.read()


OTHER_ARCH = "arm64" if host_arch() != "arm64" else "amd64"
