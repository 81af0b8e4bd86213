"""kiwi push / export --format oci: round trips through a real registry, skopeo and umoci."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from ocifixtures import *  # noqa: F403 - this module's pytest fixtures

CHANGES = """
set -e
echo new > /root/new.txt
echo changed > /etc/hostname
rm /bin/vi
rm -rf /usr/sbin
mkdir -p /srv/data/sub
echo deep > /srv/data/sub/file
ln -s /srv/data/sub/file /srv/link
ln /root/new.txt /root/hard.txt
chmod 4755 /root/new.txt
rm -rf /usr/bin && mkdir /usr/bin && echo fresh > /usr/bin/only
"""


def tree(root: Path) -> dict:
    """relpath -> what matters of it (type, mode, owner, content or link target)."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return found


def skopeo(*args) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def changed_container(kiwi, busybox):
    cid = kiwi.create("busybox")
    kiwi.sh(cid, CHANGES)
    kiwi("stop", cid)
    return cid


@pytest.fixture
def merged_view(kiwi, changed_container, tmp_path):
    target = tmp_path / "view"
    target.mkdir()
    kiwi("mount", changed_container, target)
    try:
        yield tree(target)
    finally:
        kiwi("unmount", changed_container)


def test_push_round_trip_skopeo_umoci_and_fresh_pull(
    kiwi, registry, changed_container, merged_view, tmp_path
):
    ref = f"{registry.host}/test/roundtrip:1"
    assert "usr/bin/only" in merged_view and "usr/bin/[" not in merged_view and "usr/sbin" not in merged_view
    assert merged_view["root/new.txt"][1] == 0o4755 and "srv/data/sub/file" in merged_view
    out = kiwi.out("push", changed_container, ref)
    assert "2 uploaded" in out
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert len(info["Layers"]) == 2 and info["Os"] == "linux"

    layout = tmp_path / "layout"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:rt")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:rt", str(tmp_path / "bundle")], check=True)
    assert tree(tmp_path / "bundle" / "rootfs") == merged_view

    fresh = tmp_path / "fresh-kiwi-data"
    kiwi("pull", ref, "--name", "back", env={"KIWI_ROOT": str(fresh)})
    assert tree(fresh / "images" / "back" / "rootfs") == merged_view
    assert not (fresh / "images" / "back" / "rootfs" / "bin" / "vi").exists()

    # The same content again: the registry has every blob, nothing is uploaded.
    assert "2 exists" in kiwi.out("push", changed_container, ref)


def test_export_oci_archive_imports_back(kiwi, changed_container, merged_view, tmp_path):
    archive = tmp_path / "c.oci.tar"
    kiwi("export", "--format", "oci", changed_container, archive, "--tag", "v1")
    assert archive.stat().st_mode & 0o777 == 0o600
    info = json.loads(skopeo("inspect", f"oci-archive:{archive}:v1"))
    assert len(info["Layers"]) == 2
    kiwi("import", "--name", "imported", archive)
    assert tree(kiwi.root / "images" / "imported" / "rootfs") == merged_view
    again = kiwi("export", changed_container, archive, check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    missing = kiwi("export", "nothere", tmp_path / "n.tar", check=False)
    assert (
        missing.returncode == 1
        and missing.stderr == "kiwi: no container or image named nothere; see 'kiwi list all'\n"
    )


def test_push_shares_the_pulled_base_layers(kiwi, registry, oci_images):
    kiwi("pull", f"{registry.host}/test/app:1", "--name", "app")
    cid = kiwi.create("app")
    kiwi.sh(cid, "echo mine > /srv/app/mine")
    out = kiwi.out("push", cid, f"{registry.host}/test/derived:1")
    assert "2 mounted" in out and "1 uploaded" in out, out
    config = json.loads(
        skopeo("inspect", "--tls-verify=false", "--config", f"docker://{registry.host}/test/derived:1")
    )
    assert config["config"]["WorkingDir"] == "/srv/app" and config["config"]["Cmd"] == ["cmd-arg"]
