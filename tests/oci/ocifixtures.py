"""Fixtures of the OCI tests (star-imported by each test module: a conftest.py here
would shadow tests/conftest.py for `from conftest import ...` elsewhere).

Registries on 127.0.0.1, and the test images pushed into them.

docker-registry (Debian's CNCF Distribution) is started per module with its own
storage and killed by the pid we started; the images are built here (OCI layouts
written in Python from the busybox test rootfs) and pushed with skopeo."""

from __future__ import annotations

import pytest
from ocitest import (
    APP_CONFIG,
    OTHER_ARCH,
    Front,
    Layout,
    Registry,
    busybox_layer_tar,
    host_arch,
    make_tar,
    skopeo_push,
)


def multi_layers() -> list[bytes]:
    """busybox + a layer with files + one with a whiteout and an opaque dir + an update."""
    extra = make_tar(
        [
            ("opt", "d", None, 0o755),
            ("opt/keep", "d", None, 0o755),
            ("opt/keep/base.txt", "f", b"v1\n", 0o644),
            ("opt/gone", "d", None, 0o755),
            ("opt/gone/file", "f", b"doomed\n", 0o644),
            ("opt/opaque", "d", None, 0o755),
            ("opt/opaque/old1", "f", b"old\n", 0o644),
            ("opt/opaque/old2", "f", b"old\n", 0o644),
            ("etc/motd", "f", b"layer two\n", 0o644),
        ]
    )
    deletions = make_tar(
        [
            ("opt", "d", None, 0o755),
            ("opt/.wh.gone", "f", b"", 0o644),
            ("opt/opaque", "d", None, 0o755),
            ("opt/opaque/.wh..wh..opq", "f", b"", 0o644),
            ("opt/opaque/new1", "f", b"new\n", 0o644),
            ("etc/.wh.motd", "f", b"", 0o644),
        ]
    )
    update = make_tar(
        [
            ("opt/keep/base.txt", "f", b"v3\n", 0o600),
            ("opt/keep/link", "h", "opt/keep/base.txt", 0o600),
            ("opt/keep/sym", "l", "base.txt", 0o777),
        ]
    )
    return [busybox_layer_tar(), extra, deletions, update]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def oci_images(registry, tmp_path_factory):
    """Pushes test/multi:1, test/multi2:1 (shares 3 layers), test/index:1 (two platforms),
    test/app:1 into the registry; returns the layout folder."""
    folder = tmp_path_factory.mktemp("layout")
    layout = Layout(folder)
    layers = multi_layers()
    layout.tag(layout.image(layers, arch=host_arch()), "multi")
    more = make_tar([("opt/keep/more.txt", "f", b"more\n", 0o644)])
    layout.tag(layout.image([*layers[:3], more], arch=host_arch()), "multi2")
    here = layout.image([make_tar([("platform", "f", host_arch().encode(), 0o644)])], arch=host_arch())
    there = layout.image([make_tar([("platform", "f", OTHER_ARCH.encode(), 0o644)])], arch=OTHER_ARCH)
    layout.tag_index([here, there], "index")
    app = make_tar(
        [("srv", "d", None, 0o755), ("srv/app", "d", None, 0o755), ("srv/app/data", "f", b"x", 0o644)]
    )
    layout.tag(layout.image([layers[0], app], config=APP_CONFIG, arch=host_arch()), "app")
    for tag in ("multi", "multi2", "app"):
        skopeo_push(folder, tag, f"{registry.host}/test/{tag}:1")
    skopeo_push(folder, "index", f"{registry.host}/test/index:1", all_platforms=True)
    return folder


@pytest.fixture
def counting_front(registry):
    """A plain forwarding front that records requests (to count blob downloads)."""
    front = Front(upstream=registry.host)
    yield front
    front.stop()


@pytest.fixture
def bearer_front(registry):
    front = Front(upstream=registry.host, bearer=True)
    yield front
    front.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("auth-registry"), basic_auth=True)
    yield reg
    reg.stop()


@pytest.fixture
def hostile():
    """A fake registry that answers only what a test puts in its routes."""
    front = Front()
    yield front
    front.stop()
