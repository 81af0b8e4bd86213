"""Hostile registry answers: each is refused with one line and leaves nothing behind."""

from __future__ import annotations

import gzip
import json
import os
import subprocess

import pytest
from ocifixtures import *  # noqa: F403 - this module's pytest fixtures
from ocitest import OCI_MANIFEST, Front, busybox_layer_tar, make_tar, sha256


def refused(kiwi, ref, *args, expect: str):
    done = kiwi("pull", ref, "--name", "evil", *args, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("kiwi: ") and done.stderr.count("\n") == 1, done.stderr
    assert expect in done.stderr, done.stderr
    assert_nothing_left(kiwi)
    return done


def assert_nothing_left(kiwi):
    images = kiwi.root / "images"
    assert not images.exists() or os.listdir(images) == []
    tmp = kiwi.root / ".tmp"
    assert not tmp.exists() or os.listdir(tmp) == []


def partials(kiwi):
    blobs = kiwi.root / "blobs" / "sha256"
    return (
        [n for n in os.listdir(blobs) if not n[0].isalnum() or n.endswith(".partial")]
        if blobs.exists()
        else []
    )


def test_wrong_digest(kiwi, hostile):
    layer = gzip.compress(make_tar([("a", "f", b"a", 0o644)]))
    paths = hostile.serve_image("x", "1", [layer])
    path = paths[sha256(layer)]
    hostile.routes[path] = (200, {}, layer[:-1] + bytes([layer[-1] ^ 1]))  # same size, one bit off
    refused(kiwi, f"{hostile.host}/x:1", expect="does not match its digest")
    assert partials(kiwi) == []


def test_manifest_not_matching_the_digest_asked_for(kiwi, hostile):
    hostile.serve_image("x", "1", [gzip.compress(make_tar([("a", "f", b"a", 0o644)]))])
    body = hostile.routes["/v2/x/manifests/1"]
    hostile.routes["/v2/x/manifests/sha256:" + "0" * 64] = body
    refused(kiwi, f"{hostile.host}/x@sha256:{'0' * 64}", expect="does not match its digest")


def test_oversized_manifest(kiwi, hostile):
    hostile.routes["/v2/x/manifests/1"] = (200, {"Content-Type": OCI_MANIFEST}, b" " * (5 << 20))
    refused(kiwi, f"{hostile.host}/x:1", expect="larger than 4 MiB")


def test_blob_larger_than_its_descriptor(kiwi, hostile):
    layer = gzip.compress(make_tar([("a", "f", b"a", 0o644)]))
    paths = hostile.serve_image("x", "1", [layer])
    hostile.routes[paths[sha256(layer)]] = (200, {}, layer + b"\0" * 4096)
    refused(kiwi, f"{hostile.host}/x:1", expect="larger than its manifest says")
    assert partials(kiwi) == []


@pytest.mark.parametrize(
    "entries, expect",
    [
        ([("../../escaped", "f", b"x", 0o644)], "climbs out with '..'"),
        ([("/abs", "f", b"x", 0o644)], "absolute path"),
        ([("hl", "h", "../../../etc/passwd", 0o644)], "points outside"),
        ([("out", "l", "{outside}", 0o777), ("out/pwned", "f", b"x", 0o644)], "through the symlink"),
        ([("out", "l", "{outside}", 0o777), ("out/.wh.victim", "f", b"", 0o644)], "through the symlink"),
        ([("out", "l", "{outside}", 0o777), ("out/.wh..wh..opq", "f", b"", 0o644)], "through the symlink"),
        ([("dir", "d", None, 0o755), ("dir/.wh..", "f", b"", 0o644)], "refusing"),
        ([("nothere/.wh.x", "f", b"", 0o644), ("bin/.wh.vi", "f", b"", 0o644)], None),  # fine
    ],
    ids=[
        "dotdot",
        "absolute",
        "hardlink",
        "symlink",
        "whiteout-via-symlink",
        "opaque-via-symlink",
        "wh-dotdot",
        "ok",
    ],
)
def test_layer_escapes(kiwi, hostile, tmp_path, entries, expect):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("still here")
    entries = [
        (n, k, p.replace("{outside}", str(outside)) if isinstance(p, str) else p, m) for n, k, p, m in entries
    ]
    base = gzip.compress(busybox_layer_tar(), 1)
    hostile.serve_image("x", "1", [base, gzip.compress(make_tar(entries))])
    if expect is None:
        kiwi("pull", f"{hostile.host}/x:1", "--name", "fine")
        return
    done = refused(kiwi, f"{hostile.host}/x:1", expect=expect)
    assert "layer 2 of the image" in done.stderr
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "still here"


def test_redirect_to_another_host(kiwi, hostile):
    other = Front()
    try:
        other.serve_image("x", "1", [gzip.compress(make_tar([("a", "f", b"a", 0o644)]))])
        hostile.routes["/v2/x/manifests/1"] = (
            302,
            {"Location": f"http://{other.host}/v2/x/manifests/1"},
            b"",
        )
        refused(kiwi, f"{hostile.host}/x:1", expect="redirected a request to another host")
        assert not other.requests
    finally:
        other.stop()


def test_blob_redirect_drops_credentials(kiwi, hostile):
    """Registries send blobs to a CDN: followed, but the token stays at home."""
    cdn = Front()
    try:
        layer = gzip.compress(make_tar([("a", "f", b"from the cdn", 0o644)]))
        paths = hostile.serve_image("x", "1", [layer])
        cdn.routes["/layer"] = (200, {}, layer)
        hostile.routes[paths[sha256(layer)]] = (307, {"Location": f"http://{cdn.host}/layer"}, b"")
        hostile.bearer = True
        kiwi("pull", f"{hostile.host}/x:1", "--name", "cdn")
        assert (kiwi.root / "images" / "cdn" / "rootfs" / "a").read_bytes() == b"from the cdn"
        assert cdn.requests and all(auth is None for _, _, auth in cdn.requests)
        assert any(auth for _, _, auth in hostile.requests)
    finally:
        cdn.stop()


def test_truncated_blob_is_refused_then_resumed(kiwi, hostile):
    layer = gzip.compress(make_tar([("big", "f", os.urandom(1 << 20), 0o644)]), 0)
    paths = hostile.serve_image("x", "1", [layer])
    path = paths[sha256(layer)]
    hostile.routes[path] = (
        200,
        {"Content-Length": str(len(layer)), "Connection": "close"},
        layer[: len(layer) // 2],
    )
    refused(kiwi, f"{hostile.host}/x:1", expect="run the command again to resume")
    # cleanup keeps the resumable .partial but removes what a dead blob writer left
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = kiwi.root / "blobs" / "sha256" / f".layer-{dead.pid}-0000"
    stale.write_bytes(b"half")
    kiwi("cleanup")
    assert not stale.exists() and len(partials(kiwi)) == 1
    # The verified half waits as .partial; the next pull asks only for the rest.
    hostile.routes[path] = (206, {}, layer[len(layer) // 2 :])
    hostile.headers.clear()
    kiwi("pull", f"{hostile.host}/x:1", "--name", "resumed")
    assert any(h.get("Range") == f"bytes={len(layer) // 2}-" for h in hostile.headers)
    assert partials(kiwi) == []


def test_index_lists_only_other_platforms(kiwi, hostile):
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(b"x"),
                "size": 1,
                "platform": {"os": "windows", "architecture": "amd64"},
            }
        ],
    }
    hostile.routes["/v2/x/manifests/1"] = (
        200,
        {"Content-Type": "application/vnd.oci.image.index.v1+json"},
        json.dumps(index).encode(),
    )
    refused(kiwi, f"{hostile.host}/x:1", expect="none for linux")
