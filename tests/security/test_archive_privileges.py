"""Issue 12 item 5: a downloaded .kiwi file must not grant privileges or impossible limits.

A real snap is rewritten the way an attacker would (kiwi.json changed, every sum still
right). `network: host` from a file is never honoured: the container gets its own network
(so the host's 127.0.0.1 is out of its reach) unless the user asks on the command line.
Limits this host cannot give, unknown settings and ill-typed values are refused at create
in one line, leaving nothing behind.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from archive_attacks import rewrite_kiwi

from conftest import fresh_kiwi


@pytest.fixture(scope="module")
def snap_file(kiwi_module, busybox_tar) -> Path:
    """A real snap of a busybox container, written by kiwi itself (once per module)."""
    kiwi_module("import", "--name", "busybox", busybox_tar)
    cid = kiwi_module.create("busybox")
    return Path(kiwi_module.out("snap", cid, "real"))


@pytest.fixture
def elsewhere(tmp_path_factory):
    """A second, empty Kiwi: the machine the downloaded file lands on."""
    yield from fresh_kiwi(tmp_path_factory)


class HostService:
    """A TCP service on the host's 127.0.0.1 that records who connected."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.sendall(b"host-secret\n")
            conn.close()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def host_service():
    service = HostService()
    yield service
    service.close()


def reach(kiwi, cid: str, port: int):
    return kiwi.sh(cid, f"nc -w 3 127.0.0.1 {port} </dev/null", check=False)


def leftovers(kiwi) -> list[str]:
    found = []
    for folder in ("images", "containers", ".tmp"):
        if (kiwi.root / folder).exists():
            found += [f"{folder}/{e}" for e in os.listdir(kiwi.root / folder)]
    return found


def test_host_network_from_an_archive_is_not_granted(elsewhere, snap_file, tmp_path, host_service):
    evil = rewrite_kiwi(snap_file, tmp_path / "evil.kiwi", settings={"network": "host"})
    done = elsewhere("create", evil)
    cid = done.stdout.split()[-1]
    assert done.stderr.count("\n") == 1 and "host's network" in done.stderr, done.stderr
    [row] = elsewhere.json("list", "containers")
    assert row["id"] == cid and row["network"] == "separate" and row["ipv4"]
    attempt = reach(elsewhere, cid, host_service.port)
    assert "host-secret" not in attempt.stdout and attempt.returncode != 0
    assert host_service.connections == 0

    # Control: asked for on the command line, the same file does get the host's network.
    granted = elsewhere.create(str(evil), "--network", "host")
    assert "host-secret" in reach(elsewhere, granted, host_service.port).stdout
    assert host_service.connections == 1


def test_network_flag_on_image_create(kiwi, busybox):
    cid = kiwi.create(busybox, "--network", "host", "--cpu", "1", "--memory", "64M")
    [row] = kiwi.json("list", "containers")
    assert row["id"] == cid and row["network"] == "host" and row["cpu"] == 1
    assert row["memory"] == 64 << 20


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"cpu": 999}, "cpu 999"),
        ({"memory": 1 << 50}, "memory 1024T"),
        ({"storage": 1 << 60}, "storage"),
        ({"privileged": True}, "unknown setting 'privileged'"),
        ({"cpu": "2"}, "invalid settings"),
        ({"memory": -5}, "invalid settings"),
        ({"network": "bridge0"}, "invalid settings"),
        ({"shell": "bin/sh"}, "invalid shell"),
    ],
)
def test_impossible_or_invalid_settings_are_refused(elsewhere, snap_file, tmp_path, settings, words):
    evil = rewrite_kiwi(snap_file, tmp_path / "evil.kiwi", settings=settings)
    done = elsewhere("create", evil, check=False)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiwi: ") and words in lines[0], done.stderr
    assert leftovers(elsewhere) == []
    assert elsewhere.json("list", "all") == {"containers": [], "images": [], "exports": []}


def test_command_line_replaces_what_the_host_cannot_give(elsewhere, snap_file, tmp_path):
    evil = rewrite_kiwi(snap_file, tmp_path / "big.kiwi", settings={"cpu": 999, "memory": 1 << 50})
    cid = elsewhere.create(str(evil), "--cpu", "1", "--memory", "128M")
    [row] = elsewhere.json("list", "containers")
    assert row["id"] == cid and row["cpu"] == 1 and row["memory"] == 128 << 20


def test_unlimited_storage_from_an_archive_is_not_granted(elsewhere, snap_file, tmp_path):
    evil = rewrite_kiwi(snap_file, tmp_path / "unlimited.kiwi", settings={"storage": None})
    done = elsewhere("create", evil)
    assert done.stderr.count("\n") == 1 and "unlimited storage" in done.stderr, done.stderr
    granted = elsewhere.create(str(evil), "--storage", "host")
    limits = {r["id"]: r["storage_limit"] for r in elsewhere.json("list", "containers")}
    assert limits == {done.stdout.split()[-1]: 1 << 30, granted: None}


def go_kiwi_file(tmp_path: Path, config: dict) -> Path:
    """A container snap in the Go program's squashfs layout (meta, manifest, config, rootfs,
    state/upper): anyone can make one with mksquashfs."""
    import json
    import subprocess

    tree = tmp_path / "go-tree"
    (tree / "rootfs").mkdir(parents=True)
    cache = Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test"))
    subprocess.run(
        ["tar", "-xJf", str(cache / "busybox-rootfs.tar.xz"), "-C", str(tree / "rootfs")], check=True
    )
    (tree / "state" / "upper" / "root").mkdir(parents=True)
    (tree / "state" / "upper" / "root" / "hello").write_text("hi\n")
    (tree / "meta.json").write_text(json.dumps({"kind": "container", "image_name": "t"}))
    (tree / "manifest.json").write_text(json.dumps({"name": "t", "format": "dir"}))
    (tree / "config.json").write_text(json.dumps({"image": "t", "state_backend": "dir", **config}))
    out = tmp_path / "go.kiwi"
    subprocess.run(
        ["mksquashfs", str(tree), str(out), "-noappend", "-no-progress", "-quiet", "-comp", "zstd"],
        check=True,
        capture_output=True,
    )
    return out


def test_unlimited_storage_from_a_go_archive_is_not_granted(elsewhere, tmp_path):
    # Red-team pass 7: the Go format's `state_size_host` gave a container unlimited storage
    # (a folder on the host's disk, with no bound) though the command line never asked.
    evil = go_kiwi_file(tmp_path, {"state_size_bytes": 1 << 30, "state_size_host": True})
    done = elsewhere("create", evil)
    cid = done.stdout.split()[-1]
    assert done.stderr.count("\n") == 1 and "unlimited storage" in done.stderr, done.stderr
    assert elsewhere.out("attach", cid, "--", "cat", "/root/hello") == "hi"
    granted = elsewhere.create(str(evil), "--storage", "host")
    limits = {r["id"]: r["storage_limit"] for r in elsewhere.json("list", "containers")}
    assert limits == {cid: 1 << 30, granted: None}
