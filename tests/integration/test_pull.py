"""pull against a local image server on 127.0.0.1 with the real LXC layout."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from kiwi import archive
from kiwi.errors import KiwiError
from kiwi.pull import normalise_arch, pull
from kiwi.store import Store, read_json

BUSYBOX = Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test")) / "busybox-rootfs.tar.xz"
HOST_ARCH = normalise_arch(os.uname().machine)
BUILD_PATH = f"images/alpine/3.20/{HOST_ARCH}/default/20250102_13:00"


def rootfs_tarball() -> bytes:
    """The busybox test rootfs when it is built, else a tiny real one made here."""
    if BUSYBOX.exists():
        return BUSYBOX.read_bytes()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:xz") as tar:
        for name in ("bin", "etc", "proc", "sys"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def with_extra_file(tarball: bytes, name: str, data: bytes) -> bytes:
    """The same rootfs plus one file: what a newer build looks like."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tarball), mode="r:xz") as src,
        tarfile.open(fileobj=out, mode="w:xz", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


class ImageServer:
    """Serves a folder; counts rootfs downloads; can cut a download in the middle."""

    def __init__(self, root: Path):
        self.root = root
        self.rootfs_requests = 0
        self.drop_next_download = False
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(server.root), **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.endswith("/rootfs.tar.xz"):
                    server.rootfs_requests += 1
                    if server.drop_next_download:
                        server.drop_next_download = False
                        return self.send_half()
                super().do_GET()

            def send_half(self):
                data = (server.root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, tarball: bytes, build_path=BUILD_PATH, sha256=None, extra_index_lines=()):
        folder = self.root / build_path
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rootfs.tar.xz").write_bytes(tarball)
        digest = sha256 or hashlib.sha256(tarball).hexdigest()
        (folder / "SHA256SUMS").write_text(f"{'0' * 64}  meta.tar.xz\n{digest}  rootfs.tar.xz\n")
        distro, release, arch, variant, build = build_path.split("/")[1:]
        lines = [
            index_line("alpine", "3.19", arch, "20240101_13:00"),
            f"{distro};{release};{arch};{variant};{build};/{build_path}/",
            index_line("alpine", "edge", arch, "20250103_13:00"),
            index_line("alpine", "3.20", "s390x", "20250102_13:00"),
            index_line("debian", "bookworm", "amd64", "20250102_05:24"),
            *extra_index_lines,
        ]
        meta = self.root / "meta" / "1.0"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "index-system").write_text("\n".join(lines) + "\n")


def index_line(distro, release, arch, build):
    return f"{distro};{release};{arch};default;{build};/images/{distro}/{release}/{arch}/default/{build}/"


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = ImageServer(tmp_path / "server")
    srv.thread.start()
    monkeypatch.setenv("KIWI_IMAGE_SERVER", srv.url)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "kiwi-data")
    s.ensure_layout()
    return s


def leftovers(store) -> list:
    return sorted(os.listdir(store.tmp_dir)) + sorted(
        n for n in os.listdir(store.exports_dir) if n.startswith(".")
    )


def test_pull_imports_verifies_and_exports(server, store):
    tarball = rootfs_tarball()
    server.publish(tarball)
    seen = []
    result = pull(store, "alpine", progress=lambda d, t: seen.append((d, t)))
    assert result["downloaded"] and result["release"] == "3.20"  # newest numbered, not edge
    assert result["build"] == "20250102_13:00" and result["arch"] == HOST_ARCH
    assert (len(tarball), len(tarball)) in seen
    meta = read_json(store.image_dir("alpine") / "image.json")
    assert meta["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert (store.image_dir("alpine") / "rootfs" / "etc" / "passwd").exists()
    export = store.exports_dir / "alpine.kiwi"
    manifest = archive.read_manifest(export)
    assert manifest["kind"] == "image"
    assert meta["rootfs_sha256"] == archive.image_content_hash(manifest)
    assert archive.image_content_hash(store.image_dir("alpine") / "rootfs") == meta["rootfs_sha256"]
    assert leftovers(store) == []


def test_repull_of_an_up_to_date_image_downloads_nothing(server, store):
    server.publish(rootfs_tarball())
    pull(store, "alpine")
    assert server.rootfs_requests == 1
    result = pull(store, "alpine")
    assert result["downloaded"] is False
    assert server.rootfs_requests == 1


def test_newer_build_replaces_the_image(server, store):
    server.publish(rootfs_tarball())
    pull(store, "alpine")
    newer = with_extra_file(rootfs_tarball(), "etc/build-id", b"2\n")
    server.publish(newer, build_path=f"images/alpine/3.20/{HOST_ARCH}/default/20250109_13:00")
    result = pull(store, "alpine")
    assert result["downloaded"] and result["build"] == "20250109_13:00"
    meta = read_json(store.image_dir("alpine") / "image.json")
    assert meta["sha256"] == hashlib.sha256(newer).hexdigest()
    assert (store.image_dir("alpine") / "rootfs" / "etc" / "build-id").read_bytes() == b"2\n"
    assert sorted(os.listdir(store.images_dir)) == ["alpine"]
    assert leftovers(store) == []


def test_wrong_sha256_is_refused_and_leaves_no_image(server, store):
    server.publish(rootfs_tarball(), sha256="ab" * 32)
    with pytest.raises(KiwiError, match="does not match the sha256"):
        pull(store, "alpine")
    assert not store.image_dir("alpine").exists()
    assert not (store.exports_dir / "alpine.kiwi").exists()
    assert leftovers(store) == []


def test_missing_published_sum_is_refused(server, store):
    server.publish(rootfs_tarball())
    (server.root / BUILD_PATH / "SHA256SUMS").write_text("")
    with pytest.raises(KiwiError, match="publishes no sha256"):
        pull(store, "alpine")
    assert not store.image_dir("alpine").exists()


def test_dropped_connection_leaves_nothing_and_next_pull_works(server, store):
    server.publish(rootfs_tarball())
    server.drop_next_download = True
    with pytest.raises(KiwiError, match="stopped after|failed"):
        pull(store, "alpine")
    assert not store.image_dir("alpine").exists()
    assert leftovers(store) == []
    assert pull(store, "alpine")["downloaded"]
    assert store.image_dir("alpine").exists()


def test_unknown_arch_and_release_are_clear_errors(server, store):
    server.publish(rootfs_tarball())
    with pytest.raises(KiwiError, match=f"architecture mips.*{HOST_ARCH}.*s390x"):
        pull(store, "alpine", arch="mips")
    with pytest.raises(KiwiError, match=r"release '9\.9'.*3\.19, 3\.20, edge"):
        pull(store, "alpine", release="9.9")
    with pytest.raises(KiwiError, match="no 'fedora'.*alpine, debian"):
        pull(store, "fedora")
    assert server.rootfs_requests == 0


def test_unreachable_server_is_a_clear_error(store, monkeypatch):
    monkeypatch.setenv("KIWI_IMAGE_SERVER", "http://127.0.0.1:9")
    with pytest.raises(KiwiError, match="cannot reach the image server"):
        pull(store, "alpine")


def test_cli_pulls_any_distribution_the_server_lists(server, kiwi):
    """Not only alpine and debian: a bare name is whatever the index has (issue 16)."""
    server.publish(rootfs_tarball(), build_path=f"images/fedora/40/{HOST_ARCH}/default/20250102_13:00")
    kiwi("pull", "fedora", "--release", "40", env={"KIWI_IMAGE_SERVER": server.url})
    assert (kiwi.root / "images" / "fedora" / "rootfs" / "bin").is_dir()
    unknown = kiwi("pull", "plan9", check=False, env={"KIWI_IMAGE_SERVER": server.url})
    assert unknown.returncode == 1 and "fedora" in unknown.stderr and unknown.stderr.count("\n") == 1
