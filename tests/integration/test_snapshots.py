"""Issue 6: snap, create from a .kiwi file, commit and pull through the frozen binary.

Trees are compared through `kiwi mount` of the (stopped) containers: every entry's
type, mode, owner, link target, content hash, link count and xattrs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import stat
import struct
import tarfile
import threading
import time
from pathlib import Path

import pytest
import zstandard

from conftest import Kiwi, fresh_kiwi
from kiwi.pull import normalise_arch

BOTH_MODES = True  # every test using `kiwi` runs unprivileged and --privileged (conftest)

MIB = 1 << 20
GIB = 1 << 30


# ------------------------------------------------------------------ helpers


@pytest.fixture
def kiwi2(tmp_path_factory):
    """A second, independent KIWI_ROOT (own bridge, subnet, cgroup parent), cleaned like the first."""
    yield from fresh_kiwi(tmp_path_factory)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def xattrs_of(path) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def describe(root: Path) -> dict:
    """Every entry below root (root itself as '.'), without following symlinks."""
    tree = {}

    def entry(path):
        st = os.lstat(path)
        info = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "xattrs": xattrs_of(path),
        }
        if stat.S_ISLNK(st.st_mode):
            info["target"] = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            info["sha256"] = sha256_file(path)
            info["nlink"] = st.st_nlink
        return info

    tree["."] = entry(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            tree[os.path.relpath(path, root)] = entry(path)
    return tree


@contextlib.contextmanager
def mounted(kiwi: Kiwi, cid: str, target: Path):
    target.mkdir(parents=True, exist_ok=True)
    kiwi("mount", cid, target)
    try:
        yield target
    finally:
        kiwi("unmount", cid, check=False)


def tree_of(kiwi: Kiwi, cid: str, target: Path) -> dict:
    with mounted(kiwi, cid, target) as m:
        return describe(m)


def rows(kiwi: Kiwi) -> dict:
    return {r["id"]: r for r in kiwi.json("list", "containers")}


def image_names(kiwi: Kiwi) -> list:
    return sorted(i["name"] for i in kiwi.json("list", "images"))


def config_of(kiwi: Kiwi, cid: str) -> dict:
    return json.loads((kiwi.root / "containers" / cid / "config.json").read_text())


def one_line_error(done) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiwi: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def leftovers(kiwi: Kiwi) -> list:
    """After `kiwi cleanup`: staging entries and half-written archives still present."""
    kiwi("cleanup")
    tmp = kiwi.root / ".tmp"
    found = sorted(os.listdir(tmp)) if tmp.exists() else []
    for folder in (kiwi.root, kiwi.root / "exports"):
        if folder.exists():
            found += [n for n in os.listdir(folder) if n.startswith(".kiwi-partial-")]
    return found


# Changes a container makes from inside: edits, a deleted image file (whiteout),
# an image folder removed and made again (opaque), owners, hard and symbolic links,
# setuid, and files in new folders. (FIFOs: tests/integration/test_errors.py.)
CHANGES = """set -e
echo 'kiwi:x:1000:1000::/home/kiwi:/bin/sh' >> /etc/passwd
rm /etc/group
test -n "$(ls /usr/sbin)"
rm -rf /usr/sbin
mkdir /usr/sbin
echo only > /usr/sbin/only
mkdir -p /home/kiwi/deep/er
head -c 300000 /dev/urandom > /home/kiwi/data.bin
ln /home/kiwi/data.bin /home/kiwi/data-again.bin
ln -s /etc/passwd /home/kiwi/passwd-link
echo inner > /home/kiwi/deep/er/file
chown -R 1000:1000 /home/kiwi
chmod 700 /home/kiwi/deep
printf '#!/bin/sh\\necho tool\\n' > /bin/tool
chmod 4755 /bin/tool
"""


def make_changes(kiwi: Kiwi, cid: str, tmp_path: Path) -> None:
    kiwi.sh(cid, CHANGES)
    kiwi("stop", cid, "--time", "2")
    with mounted(kiwi, cid, tmp_path / "edit") as m:  # xattrs through the host-visible mount
        os.setxattr(m / "home" / "kiwi" / "data.bin", "user.note", b"kept")
        os.setxattr(m / "home" / "kiwi" / "deep", "user.dir", b"folder too")


def assert_changes_kept(tree: dict) -> None:
    assert "etc/group" not in tree, "a deleted image file must stay deleted"
    assert sorted(p for p in tree if p.startswith("usr/sbin/")) == ["usr/sbin/only"], (
        "a folder removed and made again must stay opaque"
    )
    assert tree["home/kiwi/data.bin"]["xattrs"] == {"user.note": b"kept"}
    assert tree["home/kiwi/data.bin"]["nlink"] == 2
    assert tree["home/kiwi/data.bin"]["sha256"] == tree["home/kiwi/data-again.bin"]["sha256"]
    assert tree["home/kiwi/deep"]["xattrs"] == {"user.dir": b"folder too"}
    assert tree["home/kiwi/deep"]["mode"] == 0o700
    assert tree["home/kiwi/deep/er/file"]["uid"] == 1000
    assert tree["home/kiwi/passwd-link"]["target"] == "/etc/passwd"
    assert tree["bin/tool"]["mode"] == 0o4755


# ------------------------------------------------- snap -> delete -> create


def test_snap_delete_restore_is_identical_in_both_roots(kiwi, kiwi2, busybox, busybox_tar, tmp_path):
    image_rootfs = kiwi.root / "images" / "busybox" / "rootfs"
    assert (image_rootfs / "etc" / "group").exists() and os.listdir(image_rootfs / "usr" / "sbin")
    cid = kiwi.create(busybox, "--name", "keeper", "--storage", "2G")
    kiwi("set", cid, "--memory", "256M", "--cpu", "1", "--shell", "/bin/ash", "--network", "host")
    make_changes(kiwi, cid, tmp_path)
    before = tree_of(kiwi, cid, tmp_path / "before")
    assert_changes_kept(before)

    snap = Path(kiwi.out("snap", cid, "gen1").splitlines()[-1])
    assert snap == kiwi.root / f"{cid}-gen1.kiwi" and snap.is_file()
    assert stat.S_IMODE(snap.stat().st_mode) == 0o600
    again = kiwi("snap", cid, "gen1", check=False)
    assert "exists already" in one_line_error(again)
    kiwi("delete", cid, "--yes")
    assert rows(kiwi) == {}

    def check_restored(k: Kiwi, new: str, name, network="separate"):
        row = rows(k)[new]
        assert row["name"] == name
        assert row["memory"] == 256 * MIB and row["cpu"] == 1
        assert row["storage_limit"] == 2 * GIB and row["network"] == network
        assert config_of(k, new)["shell"] == "/bin/ash"
        after = tree_of(k, new, tmp_path / f"after-{new}")
        assert after == before
        assert k.out("attach", new, "--", "cat", "/usr/sbin/only") == "only"

    # First root: the identical local image is reused, no second image.
    # The archive's host network is granted only when asked for on the command line.
    new = kiwi.create(snap, "--network", "host")
    assert new != cid
    check_restored(kiwi, new, "keeper", network="host")
    assert image_names(kiwi) == ["busybox"]
    assert rows(kiwi)[new]["image"] == "busybox"

    # Second root: no such image there, so the archive's rootfs becomes the image.
    assert image_names(kiwi2) == []
    other = kiwi2.create(snap)
    check_restored(kiwi2, other, "keeper")
    assert image_names(kiwi2) == ["busybox"]
    restored_rootfs = kiwi2.root / "images" / "busybox" / "rootfs"
    assert describe(restored_rootfs) == describe(image_rootfs)
    # A second restore there reuses that image; the name is taken now, so none.
    third = kiwi2.create(snap)
    assert rows(kiwi2)[third]["name"] is None
    assert image_names(kiwi2) == ["busybox"]
    assert leftovers(kiwi) == [] and leftovers(kiwi2) == []


def test_chained_snaps_keep_both_generations(kiwi, busybox, tmp_path):
    first = kiwi.create(busybox, "--name", "gen")
    kiwi.sh(first, "set -e; echo one > /root/gen1; rm /linuxrc; mkdir /opt; echo a > /opt/a")
    kiwi("stop", first, "--time", "2")
    snap1 = kiwi.out("snap", first, "one").splitlines()[-1]

    second = kiwi.create(snap1)
    assert rows(kiwi)[second]["name"] is None  # "gen" is still taken by the first
    kiwi.sh(
        second,
        "set -e; test ! -e /linuxrc; echo 1b >> /root/gen1; echo two > /root/gen2;"
        " rm /etc/group; rm /opt/a; echo b > /opt/b",
    )
    kiwi("stop", second, "--time", "2")
    before = tree_of(kiwi, second, tmp_path / "before")
    snap2 = kiwi.out("snap", second, "two").splitlines()[-1]
    kiwi("delete", first, "--yes")
    kiwi("delete", second, "--yes")

    third = kiwi.create(snap2)
    after = tree_of(kiwi, third, tmp_path / "after")
    assert after == before
    assert "linuxrc" not in after and "etc/group" not in after and "opt/a" not in after
    with mounted(kiwi, third, tmp_path / "look") as m:
        assert (m / "root" / "gen1").read_text() == "one\n1b\n"
        assert (m / "root" / "gen2").read_text() == "two\n"
        assert (m / "opt" / "b").read_text() == "b\n"
    assert image_names(kiwi) == ["busybox"]


# ---------------------------------------------------- snap of a running container

PAD = "x" * 180
WRITER = 'i=0; while :; do i=$((i+1)); echo "line $i ' + PAD + ' end" >> /root/log; sync; done'
LINE = re.compile(r"line (\d+) " + PAD + " end")


def line_count(kiwi: Kiwi, cid: str) -> int:
    return int(kiwi.out("attach", cid, "--", "sh", "-c", "wc -l < /root/log", timeout=30))


def test_snap_of_a_running_writer_is_consistent_and_it_keeps_running(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox)
    kiwi.sh(cid, f"setsid sh -c '{WRITER}' </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while line_count(kiwi, cid) < 300:
        assert time.monotonic() < deadline, "the writer does not write"
        time.sleep(0.2)

    snaps = [kiwi.out("snap", cid, f"live{n}", timeout=60).splitlines()[-1] for n in range(3)]
    after_snap = line_count(kiwi, cid)
    assert rows(kiwi)[cid]["status"] == "running"
    deadline = time.monotonic() + 30
    while line_count(kiwi, cid) <= after_snap + 50:  # thawed: the writer goes on
        assert time.monotonic() < deadline, "the container stays frozen after snap"
        time.sleep(0.2)

    for n, snap in enumerate(snaps):
        new = kiwi.create(snap)
        with mounted(kiwi, new, tmp_path / f"m{n}") as m:
            data = (m / "root" / "log").read_text()
        assert data.endswith("\n"), "a torn last line"
        lines = data.splitlines()
        assert len(lines) >= 300
        for i, line in enumerate(lines, 1):
            match = LINE.fullmatch(line)
            assert match and int(match.group(1)) == i, f"line {i} is torn or out of order: {line!r}"
    assert image_names(kiwi) == ["busybox"]
    assert leftovers(kiwi) == []


# --------------------------------------------------------------- hostile files


def member(name, data=b"", kind=tarfile.REGTYPE, linkname="", mode=0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, len(data)
    return (
        info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        + data
        + b"\0" * (-len(data) % 512)
    )


ROOT_DIR = member("rootfs", kind=tarfile.DIRTYPE, mode=0o755)
UPPER_DIR = member("upper", kind=tarfile.DIRTYPE, mode=0o755)
HEAD = 64 << 10
GOOD_ROOTFS = [
    ROOT_DIR,
    member("rootfs/bin", kind=tarfile.DIRTYPE, mode=0o755),
    member("rootfs/hello", b"hi\n"),
]


def craft(path, rootfs_members, upper_members=None, manifest_changes=None, sums=None, settings=None) -> Path:
    """A .kiwi file written by hand: sums right unless `sums` overrides them."""
    parts = {"rootfs": b"".join(rootfs_members)}
    if upper_members is not None:
        parts["upper"] = b"".join(upper_members)
    manifest = {
        "format_version": 1,
        "kind": "container" if upper_members is not None else "image",
        "settings": settings or {},
        "image": {"name": "crafted"},
        "parts": {
            n: {
                "sha256": hashlib.sha256(b).hexdigest(),
                "size": len(b),
                "offset": 0,
                "files": 1,
                "data_bytes": 1,
            }
            for n, b in parts.items()
        },
    }
    for name, digest in (sums or {}).items():
        manifest["parts"][name]["sha256"] = digest
    # As kiwi writes them: the manifest frame padded by a skippable frame to HEAD bytes,
    # then one zstd frame per part, so the recorded offsets let a reader seek.
    frames = [zstandard.ZstdCompressor().compress(data) for data in parts.values()]
    offset = HEAD
    for part, frame in zip(manifest["parts"].values(), frames):
        part["offset"], offset = offset, offset + len(frame)
    manifest.update(manifest_changes or {})
    head = zstandard.ZstdCompressor().compress(member("kiwi.json", json.dumps(manifest).encode()))
    gap = HEAD - len(head) - 8
    frames.insert(0, head + struct.pack("<II", 0x184D2A50, gap) + bytes(gap))
    frames.append(zstandard.ZstdCompressor().compress(b"\0" * 1024))
    Path(path).write_bytes(b"".join(frames))
    return Path(path)


def huge_manifest(path) -> Path:
    info = tarfile.TarInfo("kiwi.json")
    info.size = 100 * MIB
    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        w.write(info.tobuf(tarfile.USTAR_FORMAT) + b"{")
        block = b" " * MIB
        for _ in range(100):
            w.write(block)
    return Path(path)


def hostile_files(folder: Path, outside: Path) -> dict:
    upper_ok = [UPPER_DIR, member("upper/x", b"1")]
    return {
        "bad rootfs sum": (
            craft(folder / "sum.kiwi", GOOD_ROOTFS, upper_ok, sums={"rootfs": "0" * 64}),
            "does not match its sha256",
        ),
        "bad upper sum": (
            craft(
                folder / "usum.kiwi",
                GOOD_ROOTFS,
                upper_ok,
                sums={"upper": hashlib.sha256(b"other").hexdigest()},
            ),
            "upper part .* does not match",
        ),
        "unknown version": (
            craft(folder / "v9.kiwi", GOOD_ROOTFS, upper_ok, manifest_changes={"format_version": 9}),
            "format version 9",
        ),
        "dotdot in rootfs": (
            craft(folder / "dd.kiwi", GOOD_ROOTFS + [member("rootfs/../../escaped", b"x")], upper_ok),
            r"\.\.",
        ),
        "dotdot in upper": (
            craft(folder / "ddu.kiwi", GOOD_ROOTFS, [UPPER_DIR, member("upper/../../../escaped", b"x")]),
            r"\.\.",
        ),
        "symlink escape": (
            craft(
                folder / "sym.kiwi",
                GOOD_ROOTFS
                + [
                    member("rootfs/etc", kind=tarfile.SYMTYPE, linkname=str(outside)),
                    member("rootfs/etc/evil", b"owned"),
                ],
                upper_ok,
            ),
            "symlink",
        ),
        "symlink escape in upper": (
            craft(
                folder / "symu.kiwi",
                GOOD_ROOTFS,
                [
                    UPPER_DIR,
                    member("upper/home", kind=tarfile.SYMTYPE, linkname=str(outside)),
                    member("upper/home/evil", b"owned"),
                ],
            ),
            "symlink",
        ),
        "hard link out": (
            craft(
                folder / "hl.kiwi",
                GOOD_ROOTFS,
                [UPPER_DIR, member("upper/shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow")],
            ),
            "outside",
        ),
        "huge kiwi.json": (huge_manifest(folder / "huge.kiwi"), "over the .*limit"),
        "hostile settings": (
            craft(folder / "set.kiwi", GOOD_ROOTFS, upper_ok, settings={"memory": "lots", "shell": "x"}),
            "settings",
        ),
        "not a kiwi file": (folder / "plain.kiwi", "not a Kiwi archive|damaged"),
    }


@pytest.mark.parametrize("with_image", [False, True], ids=["empty-root", "busybox-present"])
def test_hostile_kiwi_files_are_refused_and_leave_nothing(kiwi, busybox_tar, tmp_path, with_image):
    if with_image:
        kiwi("import", "--name", "busybox", busybox_tar)
        keep = kiwi.create("busybox", "--name", "keep")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "plain.kiwi").write_bytes(zstandard.ZstdCompressor().compress(b"\0" * 4096))
    images, containers = image_names(kiwi), sorted(rows(kiwi))
    for what, (path, pattern) in hostile_files(tmp_path, outside).items():
        line = one_line_error(kiwi("create", path, check=False))
        assert re.search(pattern, line), f"{what}: {line}"
        assert image_names(kiwi) == images, f"{what} left an image"
        assert sorted(rows(kiwi)) == containers, f"{what} left a container"
        assert leftovers(kiwi) == [], what
        assert os.listdir(outside) == [], what
        assert not (tmp_path.parent / "escaped").exists() and not (kiwi.root / "escaped").exists()
    if with_image:
        assert rows(kiwi)[keep]["name"] == "keep"


def test_truncated_archives_are_refused_and_leave_nothing(kiwi, kiwi2, busybox, tmp_path):
    cid = kiwi.create(busybox)
    kiwi.sh(cid, "head -c 2000000 /dev/urandom > /root/noise")
    kiwi("stop", cid, "--time", "2")
    data = Path(kiwi.out("snap", cid, "whole").splitlines()[-1]).read_bytes()
    for cut in (len(data) // 3, len(data) - 20):
        path = tmp_path / f"cut-{cut}.kiwi"
        path.write_bytes(data[:cut])
        for k in (kiwi, kiwi2):  # image present (upper read alone) / image restored first
            images, containers = image_names(k), sorted(rows(k))
            line = one_line_error(k("create", path, check=False))
            assert re.search("truncated|damaged", line), line
            assert image_names(k) == images and sorted(rows(k)) == containers
            assert leftovers(k) == []


# ------------------------------------------------------------------ storage


def test_storage_smaller_than_the_archive_is_refused(kiwi, kiwi2, busybox, tmp_path):
    cid = kiwi.create(busybox, "--storage", "2G")
    kiwi.sh(cid, "set -e; head -c 157286400 /dev/urandom > /root/random.bin")
    kiwi("stop", cid, "--time", "2")
    with mounted(kiwi, cid, tmp_path / "m") as m:
        digest = sha256_file(m / "root" / "random.bin")
    snap = kiwi.out("snap", cid, "150m", timeout=300).splitlines()[-1]
    # 150 MiB of changes + the 128 MiB reserve fit in 1G: restored, content intact.
    small = kiwi.create(snap, "--storage", "1G")
    assert rows(kiwi)[small]["storage_limit"] == GIB
    with mounted(kiwi, small, tmp_path / "small") as m:
        assert sha256_file(m / "root" / "random.bin") == digest
    kiwi("delete", small, "--yes")

    # 150 MiB + 900 MiB more data (zeros written, not holes: a snap keeps holes): no longer fits 1G.
    kiwi.sh(cid, "set -e; dd if=/dev/zero of=/root/zeros bs=1M count=900 2>/dev/null")
    kiwi("stop", cid, "--time", "2")
    big = kiwi.out("snap", cid, "1g", timeout=300).splitlines()[-1]
    for k in (kiwi, kiwi2):
        images, containers = image_names(k), sorted(rows(k))
        line = one_line_error(k("create", big, "--storage", "1G", check=False, timeout=300))
        # 1050 MiB of changes + 128 MiB > 1 GiB; the suggestion adds 1 GiB.
        assert re.search(
            r"storage 1G is too small for the archive's 1(\.\d)?G of changes plus 128M "
            r"for the filesystem; give --storage 2(\.\d)?G or more",
            line,
        ), line
        assert image_names(k) == images and sorted(rows(k)) == containers
        assert leftovers(k) == []


# ------------------------------------------------------------------- commit


def inodes(root: Path) -> set:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_dev, st.st_ino))
    return found


def disk_cost(root: Path, shared: set) -> tuple[int, int, int]:
    """(bytes of files not shared with `shared`, bytes of folders, bytes of all files)."""
    files = folders = total = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if stat.S_ISDIR(st.st_mode):
                folders += st.st_blocks * 512
                continue
            total += st.st_blocks * 512
            if key not in shared:
                files += st.st_blocks * 512
    return files, folders, total


def test_commit_of_a_running_container_shares_unchanged_files(kiwi, debian_tar, tmp_path):
    kiwi("import", "--name", "debian", debian_tar, timeout=600)
    cid = kiwi.create("debian", "--name", "dev")
    with mounted(kiwi, cid, tmp_path / "m") as m:  # content under /proc and /sys of the state
        (m / "proc" / "leftover").write_text("never in an image\n")
        (m / "sys" / "leftover").write_text("never in an image\n")
    kiwi.sh(cid, "set -e; head -c 1048576 /dev/urandom > /usr/local/blob; echo changed > /etc/motd")
    digest = kiwi.out("attach", cid, "--", "sha256sum", "/usr/local/blob").split()[0]
    assert rows(kiwi)[cid]["status"] == "running"

    kiwi("commit", cid, "debian-dev", timeout=300)
    # Thawed again: a new process in the container runs at once.
    assert kiwi.out("attach", cid, "--", "echo", "alive", timeout=30) == "alive"
    assert rows(kiwi)[cid]["status"] == "running"
    assert image_names(kiwi) == ["debian", "debian-dev"]
    again = kiwi("commit", cid, "debian-dev", check=False)
    assert "exists already" in one_line_error(again)

    base = kiwi.root / "images" / "debian" / "rootfs"
    new = kiwi.root / "images" / "debian-dev" / "rootfs"
    assert os.lstat(new / "usr" / "bin" / "bash").st_ino == os.lstat(base / "usr" / "bin" / "bash").st_ino
    assert sha256_file(new / "usr" / "local" / "blob") == digest
    assert (new / "etc" / "motd").read_text() == "changed\n"
    assert os.listdir(new / "proc") == [] and os.listdir(new / "sys") == []
    unshared, folders, _ = disk_cost(new, inodes(base))
    _, _, base_bytes = disk_cost(base, set())
    assert base_bytes > 100 * MIB, base_bytes
    # The one new MiB, plus the small files kiwi itself writes (hosts, hostname, resolv.conf).
    assert MIB <= unshared <= MIB + 256 * 1024, unshared
    assert unshared + folders < base_bytes // 10, (unshared, folders, base_bytes)
    assert leftovers(kiwi) == []

    kiwi("stop", cid, "--time", "2")
    child = kiwi.create("debian-dev")
    assert kiwi.out("attach", child, "--", "sha256sum", "/usr/local/blob").split()[0] == digest
    assert kiwi.out("attach", child, "--", "cat", "/etc/motd") == "changed"


# --------------------------------------------------------------------- pull

HOST_ARCH = normalise_arch(os.uname().machine)
BUILD = f"images/alpine/3.20/{HOST_ARCH}/default/20250102_13:00"


@contextlib.contextmanager
def image_server(folder: Path, tarball: bytes, sha256: str | None = None):
    """The LXC layout (index, build folder with rootfs.tar.xz and SHA256SUMS) on 127.0.0.1."""
    build = folder / BUILD
    build.mkdir(parents=True)
    (build / "rootfs.tar.xz").write_bytes(tarball)
    digest = sha256 or hashlib.sha256(tarball).hexdigest()
    (build / "SHA256SUMS").write_text(f"{'0' * 64}  meta.tar.xz\n{digest}  rootfs.tar.xz\n")
    (folder / "meta" / "1.0").mkdir(parents=True)
    (folder / "meta" / "1.0" / "index-system").write_text(
        f"alpine;3.20;{HOST_ARCH};default;20250102_13:00;/{BUILD}/\n"
        f"debian;bookworm;{HOST_ARCH};default;20250102_05:24;/images/debian/bookworm/x/\n"
    )

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=str(folder), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_pull_then_create_from_the_export(kiwi, busybox_tar, tmp_path):
    with image_server(tmp_path / "server", busybox_tar.read_bytes()) as url:
        kiwi("pull", "alpine", env={"KIWI_IMAGE_SERVER": url}, timeout=300)
    assert image_names(kiwi) == ["alpine"]
    export = kiwi.root / "exports" / "alpine.kiwi"
    assert export.is_file()
    cid = kiwi.create(export)
    assert rows(kiwi)[cid]["image"] == "alpine"
    assert image_names(kiwi) == ["alpine"]  # the pulled image is reused
    assert kiwi.out("attach", cid, "--", "sh", "-c", "echo ok") == "ok"
    assert leftovers(kiwi) == []


def test_pull_with_a_wrong_sha256_is_refused(kiwi, busybox_tar, tmp_path):
    with image_server(tmp_path / "server", busybox_tar.read_bytes(), sha256="ab" * 32) as url:
        line = one_line_error(
            kiwi("pull", "alpine", env={"KIWI_IMAGE_SERVER": url}, check=False, timeout=300)
        )
    assert "does not match the sha256" in line
    assert image_names(kiwi) == []
    assert not (kiwi.root / "exports" / "alpine.kiwi").exists()
    assert leftovers(kiwi) == []
