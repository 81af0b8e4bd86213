"""Archives and flatten on real trees: a real rootfs, changes made through a real overlay mount."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kiwi import archive, extract
from kiwi.flatten import flatten

BUSYBOX = Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test")) / "busybox-rootfs.tar.xz"


@pytest.fixture
def mounts():
    """Mount overlays; every one is unmounted at teardown, even after a failure."""
    made = []

    def mount_overlay(lower, upper, work, merged):
        for d in (upper, work, merged):
            Path(d).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off",
                str(merged),
            ],
            check=True,
        )
        made.append(merged)
        return Path(merged)

    def unmount(merged):
        subprocess.run(["umount", str(merged)], check=True)
        made.remove(merged)

    mount_overlay.unmount = unmount
    yield mount_overlay
    for merged in reversed(made):
        subprocess.run(["umount", "-l", str(merged)], capture_output=True)


def base_image(tmp_path) -> Path:
    """The busybox test rootfs when it is built, else a small tree of our own."""
    lower = tmp_path / "image" / "rootfs"
    if BUSYBOX.exists():
        extract.extract_archive(BUSYBOX, lower)
    else:
        for d in ("bin", "etc", "proc", "sys", "usr/share"):
            (lower / d).mkdir(parents=True)
        (lower / "bin" / "busybox").write_bytes(os.urandom(1 << 20))
        for name in ("sh", "ls", "cat"):
            os.symlink("busybox", lower / "bin" / name)
        (lower / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (lower / "usr" / "share" / "doc").mkdir(parents=True, exist_ok=True)
    (lower / "usr" / "share" / "doc" / "README").write_text("base docs\n")
    (lower / "etc" / "motd").write_text("welcome\n")
    return lower


def change_through_overlay(merged: Path):
    """What a container does: edits, deletes, replaces a folder, adds files."""
    with open(merged / "etc" / "passwd", "a") as f:
        f.write("kiwi:x:1000:1000::/home/kiwi:/bin/sh\n")
    os.unlink(merged / "etc" / "motd")  # -> whiteout
    subprocess.run(["rm", "-rf", str(merged / "usr" / "share" / "doc")], check=True)
    (merged / "usr" / "share" / "doc").mkdir()  # -> opaque dir
    (merged / "usr" / "share" / "doc" / "NEW").write_text("fresh\n")
    home = merged / "home" / "kiwi"
    home.mkdir(parents=True)
    (home / "data.bin").write_bytes(os.urandom(300_000))
    os.chown(home, 1000, 1000)
    os.chown(home / "data.bin", 1000, 1000)
    os.link(home / "data.bin", home / "data-again.bin")
    os.symlink("/etc/passwd", home / "passwd-link")
    os.setxattr(home / "data.bin", "user.note", b"kept")
    (merged / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(merged / "bin" / "tool", 0o4755)
    (merged / "proc" / "leftover").write_text("never in an image\n")


def describe(root: Path, skip=()) -> dict:
    out, inodes = {}, {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            st = os.lstat(path)
            entry = [st.st_mode, st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                entry += [int(st.st_mtime), hashlib.sha256(path.read_bytes()).hexdigest()]
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry += [os.readlink(path)]
            else:
                entry += [sorted(os.listxattr(path))]
            if not stat.S_ISLNK(st.st_mode):
                entry += [{k: os.getxattr(path, k) for k in os.listxattr(path)}]
            out[rel] = entry
    out["<hardlinks>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def test_container_archive_restores_the_same_merged_view(tmp_path, mounts):
    lower = base_image(tmp_path)
    merged = mounts(lower, tmp_path / "upper", tmp_path / "work", tmp_path / "merged")
    change_through_overlay(merged)
    expected = describe(merged)
    mounts.unmount(merged)

    out = tmp_path / "c.kiwi"
    manifest = archive.write_archive(
        out, "container", {"name": "web"}, {"name": "busybox"}, lower, tmp_path / "upper"
    )
    assert manifest["parts"]["upper"]["data_bytes"] < 400_000
    restored = tmp_path / "restored"
    archive.extract_archive(out, restored / "rootfs", restored / "upper")
    assert archive.image_content_hash(restored / "rootfs") == archive.image_content_hash(manifest)
    merged2 = mounts(restored / "rootfs", restored / "upper", restored / "work", restored / "merged")
    assert describe(merged2) == expected
    assert not (merged2 / "etc" / "motd").exists()
    assert os.listdir(merged2 / "usr" / "share" / "doc") == ["NEW"]


def test_flatten_equals_the_merged_view(tmp_path, mounts):
    lower = base_image(tmp_path)
    merged = mounts(lower, tmp_path / "upper", tmp_path / "work", tmp_path / "merged")
    change_through_overlay(merged)
    expected = describe(merged, skip=("proc", "sys"))
    mounts.unmount(merged)

    flat = tmp_path / "flat"
    flatten(lower, tmp_path / "upper", flat)
    assert describe(flat, skip=("proc", "sys")) == expected
    assert os.listdir(flat / "proc") == [] and os.listdir(flat / "sys") == []
    # untouched files are the base image's own inodes; changed ones are not
    assert os.stat(flat / "bin" / "busybox").st_ino == os.stat(lower / "bin" / "busybox").st_ino
    assert os.stat(flat / "etc" / "passwd").st_ino != os.stat(lower / "etc" / "passwd").st_ino
    # and an archive of the flattened image round-trips
    manifest = archive.write_archive(tmp_path / "i.kiwi", "image", None, {}, flat)
    archive.extract_archive(tmp_path / "i.kiwi", tmp_path / "again")
    assert archive.image_content_hash(tmp_path / "again") == manifest["parts"]["rootfs"]["sha256"]


def test_flatten_shares_unchanged_files(tmp_path):
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    for i in range(60):
        (base / "data" / f"blob{i:02}").write_bytes(os.urandom(1 << 20))
    upper = tmp_path / "upper"
    (upper / "data").mkdir(parents=True)
    (upper / "data" / "blob07").write_bytes(b"changed" * 100_000)  # ~700 KB

    started = time.monotonic()
    stats = flatten(base, upper, tmp_path / "flat")
    elapsed = time.monotonic() - started
    assert stats == {"linked": 59, "copied": 1, "copied_bytes": 700_000}
    for i in range(60):
        same = (
            os.stat(base / "data" / f"blob{i:02}").st_ino
            == os.stat(tmp_path / "flat" / "data" / f"blob{i:02}").st_ino
        )
        assert same == (i != 7)
    du = subprocess.run(
        ["du", "-sk", str(base), str(tmp_path / "flat")], check=True, capture_output=True, text=True
    ).stdout.split()
    assert int(du[0]) > 60_000
    assert int(du[2]) < 1_000  # du counts shared inodes once: only the changed file grew
    assert elapsed < 5


def test_flatten_never_follows_the_containers_symlinks(tmp_path):
    base = tmp_path / "base"
    (base / "srv").mkdir(parents=True)
    (base / "srv" / "site").write_text("base")
    outside = tmp_path / "outside"
    outside.mkdir()
    upper = tmp_path / "upper"
    upper.mkdir()
    os.symlink(str(outside), upper / "srv")  # a container replaced /srv by a link to the host
    flatten(base, upper, tmp_path / "flat")
    assert os.readlink(tmp_path / "flat" / "srv") == str(outside)
    assert os.listdir(outside) == []
