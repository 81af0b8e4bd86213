"""Kiwi's own extractor against GNU tar on the real Debian minbase tarball.

Both trees must agree on every path's type, owner, mode (setuid too), symlink
target, hard link groups, extended attributes, content and mtime. The only
intended difference: tar creates device nodes, Kiwi skips them (FIFOs both create).
"""

import collections
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kiwi import images
from kiwi.store import Store

SPECIAL_TYPES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK)
# security.capability v2: cap_net_raw permitted + effective, as ping carries it
PING_CAPS = bytes.fromhex("0100000200200000000000000000000000000000")


@pytest.fixture
def workdir():
    # Same filesystem as the default pytest tmp dir, removed at once: trees are large.
    path = Path(tempfile.mkdtemp(prefix="kiwi-import-tree-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: str) -> dict:
    st = os.lstat(path)
    entry = {
        "type": stat.S_IFMT(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime_ns": st.st_mtime_ns,
        "xattrs": {
            name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))
        },
    }
    if stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)
        del entry["mode"]  # always 0777 on Linux
    elif stat.S_ISREG(st.st_mode):
        entry["sha256"] = file_sha256(path)
    return entry


def snapshot(root: Path) -> tuple[dict, set]:
    """{relative path: description} and the set of hard link groups."""
    entries = {".": describe(str(root))}
    by_inode = collections.defaultdict(list)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root)
            entries[rel] = describe(full)
            st = os.lstat(full)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                by_inode[st.st_ino].append(rel)
    return entries, {tuple(sorted(group)) for group in by_inode.values() if len(group) > 1}


def extract_with_gnu_tar(archive: Path, dest: Path) -> float:
    dest.mkdir()
    started = time.monotonic()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(archive), "-C", str(dest)],
        check=True,
    )
    return time.monotonic() - started


@pytest.mark.parametrize("suffix", ["tar.xz", "tar.zst"])
def test_import_matches_gnu_tar(test_images, workdir, suffix):
    archive = test_images / f"debian-minbase.{suffix}"
    store = Store(workdir / "kiwi-data")
    started = time.monotonic()
    info = images.import_image(store, "debian", archive)
    kiwi_seconds = time.monotonic() - started
    tar_seconds = extract_with_gnu_tar(archive, workdir / "by-tar")
    print(f"\n{suffix}: kiwi import {kiwi_seconds:.2f}s, GNU tar {tar_seconds:.2f}s")

    ours, our_links = snapshot(store.image_dir("debian") / "rootfs")
    theirs, their_links = snapshot(workdir / "by-tar")
    specials = {p for p, e in theirs.items() if e["type"] in SPECIAL_TYPES}
    assert specials, "the Debian tarball should contain device nodes to skip"
    expected = {p: e for p, e in theirs.items() if p not in specials}

    assert sorted(set(ours) ^ set(expected)) == []
    differing = [(p, ours[p], expected[p]) for p in expected if ours[p] != expected[p]]
    assert differing == []
    assert our_links == their_links and our_links
    assert any(e.get("mode", 0) & stat.S_ISUID for e in ours.values())

    assert info["sha256"] == file_sha256(str(archive))
    assert info["files"] == len(ours) - 1  # every entry except the top folder
    assert images.get_image(store, "debian") == info
    assert os.listdir(store.tmp_dir) == []


def make_source_tree(root: Path) -> None:
    """Everything the Debian tarball lacks: file caps, user xattrs, odd modes."""
    (root / "usr/bin").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF not really ping")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", PING_CAPS)
    tagged = root / "usr/bin/tagged"
    tagged.write_bytes(b"tagged")
    os.setxattr(tagged, "user.kiwi.test", b"\x00\x01binary\xff")
    os.setxattr(root / "usr", "user.kiwi.dir", b"folder")
    for name, mode, owner in (
        ("su", 0o4755, (0, 0)),
        ("wall", 0o2755, (0, 5)),
        ("secret", 0o400, (1000, 1000)),
    ):
        path = root / "usr/bin" / name
        path.write_bytes(name.encode() * 1000)
        os.chown(path, *owner)
        os.chmod(path, mode)
    os.link(root / "usr/bin/su", root / "usr/bin/su-link")
    (root / "usr/bin/sh").symlink_to("busybox")
    os.chown(root / "usr/bin/sh", 7, 8, follow_symlinks=False)
    os.utime(root / "usr/bin/sh", ns=(1, 1_600_000_000_000_000_000), follow_symlinks=False)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "ro/deep").mkdir(parents=True)
    (root / "ro/deep/file").write_text("inside a read-only folder")
    os.chmod(root / "ro/deep", 0o500)
    os.chmod(root / "ro", 0o555)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


@pytest.mark.parametrize("compress", ["--xz", "--zstd", "--gzip", "--bzip2"])
def test_gnu_tar_xattrs_caps_and_modes(workdir, compress):
    source = workdir / "source"
    source.mkdir()
    make_source_tree(source)
    archive = workdir / "tree.tar"
    subprocess.run(
        [
            "tar",
            "--create",
            compress,
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-f",
            str(archive),
            "-C",
            str(source),
            ".",
        ],
        check=True,
    )
    store = Store(workdir / "kiwi-data")
    images.import_image(store, "tree", archive)
    extract_with_gnu_tar(archive, workdir / "by-tar")

    ours, our_links = snapshot(store.image_dir("tree") / "rootfs")
    theirs, their_links = snapshot(workdir / "by-tar")
    del theirs["null"]
    assert ours == theirs
    assert our_links == their_links == {("usr/bin/su", "usr/bin/su-link")}
    assert ours["usr/bin/ping"]["xattrs"] == {"security.capability": PING_CAPS}
    assert ours["usr/bin/tagged"]["xattrs"] == {"user.kiwi.test": b"\x00\x01binary\xff"}
    assert ours["usr"]["xattrs"] == {"user.kiwi.dir": b"folder"}
    assert ours["usr/bin/su"]["mode"] == 0o4755 and ours["usr/bin/wall"]["mode"] == 0o2755
    assert ours["usr/bin/sh"]["mtime_ns"] == 1_600_000_000_000_000_000
