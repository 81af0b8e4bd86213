"""Issue 19: drop-in replacement for the original Go Kiwi, through the frozen binary.

Fixtures written by the real Go program: ../shared/fixtures/go-kiwi/ (kiwi-data.tar.gz,
s1.kiwi) and tests/fixtures/go-kiwi/ (see its README: a deletion, an opaque folder,
--storage host, memory and shell settings, the older tar.gz snapshot). Hostile squashfs
archives are made here with mksquashfs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from cgroup_readback import limits
from test_limits import cgroup_of

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "go-kiwi"
SHARED = Path(os.environ.get("KIWI_SHARED", "/work/shared")) / "fixtures" / "go-kiwi"
GO_ID = "147b84684f7b20108681b667"
MIB = 1 << 20
GIB = 1 << 30


def unpack_data_folder(kiwi, tarball: Path) -> None:
    """A Go kiwi-data/ folder as the test's KIWI_ROOT."""
    kiwi.root.parent.mkdir(parents=True, exist_ok=True)
    # GNU tar: the upper layer's opaque xattr and 0:0 whiteouts must come back as they were
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xzf", str(tarball), "-C", str(kiwi.root.parent)],
        check=True,
    )


def only_container(kiwi) -> dict:
    rows = kiwi.json("list", "containers")
    assert len(rows) == 1, rows
    return rows[0]


def assert_changes_applied(kiwi, cid: str) -> None:
    """The go-changes fixtures: a new file, a deleted one, and an opaque (replaced) folder."""
    assert kiwi.out("attach", cid, "--", "cat", "/root/hello") == "hello-from-go"
    assert kiwi.sh(cid, "test -e /sbin/arp", check=False).returncode == 1
    assert kiwi.out("attach", cid, "--", "ls", "/usr/sbin") == "only-this"
    assert kiwi.out("attach", cid, "--", "ls", "/bin/busybox") == "/bin/busybox"  # base intact


def assert_nothing_left(kiwi) -> None:
    assert kiwi.json("list", "containers") == []
    assert kiwi.json("list", "images") == []
    tmp = kiwi.root / ".tmp"
    assert not tmp.exists() or os.listdir(tmp) == []
    with open("/proc/self/mountinfo") as f:
        assert "squashfs" not in f.read()


# ------------------------------------------------------------------ data folder


def test_adopt_go_data_folder(kiwi):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    listed = kiwi("list")
    assert "kiwi migrate" in listed.stderr and len(listed.stderr.splitlines()) == 1
    out = kiwi.out("migrate")
    assert f"adopted container {GO_ID} as {GO_ID[:12]}" in out and "adopted image bb" in out
    row = only_container(kiwi)
    assert (row["id"], row["image"], row["memory"], row["cpu"], row["network"]) == (
        GO_ID[:12],
        "bb",
        256 * MIB,
        1,
        "separate",
    )
    assert "kiwi migrate" not in kiwi("list").stderr
    # the old id's prefixes keep working, the full 24-hex id too
    assert kiwi.out("attach", GO_ID[:8], "--", "cat", "/root/hello") == "written-in-go-kiwi"
    assert kiwi.out("ip", GO_ID) == row["ipv4"]
    assert "nothing to adopt" in kiwi.out("migrate")
    # the Go paths were never used: the state stayed where the layout says
    config = json.loads((kiwi.root / "containers" / GO_ID[:12] / "config.json").read_text())
    assert config["go_id"] == GO_ID and "state_path" not in config


def test_adopt_go_data_with_changes_and_host_storage(kiwi):
    unpack_data_folder(kiwi, FIXTURES / "go-data-changes.tar.gz")
    kiwi("migrate")
    row = only_container(kiwi)
    assert (row["memory"], row["storage_limit"]) == (300 * MIB, None)
    assert_changes_applied(kiwi, row["id"])
    assert kiwi.out("attach", row["id"], "--", "sh", "-c", "echo $SHELL") == "/bin/ash"


def test_adopt_older_state_img_container(kiwi):
    """Older Go versions kept a container's upper/ and work/ in an ext4 state.img (no
    longer made by the Go program: converted here from the fixture's state/ folder)."""
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    folder = kiwi.root / "containers" / GO_ID
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(folder / "state"), str(folder / "state.img"), "1G"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(folder / "state")
    config = json.loads((folder / "config.json").read_text())
    config.update({"state_backend": "", "state_path": "/etc"})
    (folder / "config.json").write_text(json.dumps(config))
    kiwi("migrate")
    row = only_container(kiwi)
    assert row["storage_limit"] == GIB
    assert kiwi.out("attach", row["id"], "--", "cat", "/root/hello") == "written-in-go-kiwi"


def test_adopt_squashfs_only_image(kiwi):
    """Older Go images were kept as images/<name>/rootfs.squashfs only."""
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    image = kiwi.root / "images" / "bb"
    squash(image / "rootfs", image / "rootfs.squashfs", "-comp", "xz")
    shutil.rmtree(image / "rootfs")
    assert "adopted image bb" in kiwi.out("migrate")
    row = only_container(kiwi)
    assert kiwi.out("attach", row["id"], "--", "cat", "/root/hello") == "written-in-go-kiwi"
    assert sorted(os.listdir(image)) == ["image.json", "manifest.json", "rootfs", "rootfs.squashfs"]


def test_half_migrated_folder_resumes(kiwi):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    for after in (0.05, 0.1, 0.15, 0.2, 0.3):
        kiwi.kill_midway("migrate", after=after)
    kiwi("migrate")
    row = only_container(kiwi)
    assert row["id"] == GO_ID[:12]
    assert kiwi.out("attach", row["id"], "--", "cat", "/root/hello") == "written-in-go-kiwi"
    # One address leased, however often the migration was cut short (host-wide leases).
    leases = json.loads((Path(kiwi.env["KIWI_HOST_DIR"]) / "leases.json").read_text())
    assert len(leases["subnets"][kiwi.env["KIWI_SUBNET"]]["owners"]) == 1


def test_half_migrated_at_each_step(kiwi):
    """Killed after the Go config was kept and the Kiwi config written, before the rename."""
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    folder = kiwi.root / "containers" / GO_ID
    go = (folder / "config.json").read_text()
    (folder / "go-config.json").write_text(go)
    mine = {"id": "aaaaaaaaaaaa", "go_id": GO_ID, "image": "bb"}
    (folder / "config.json").write_text(json.dumps(mine))
    kiwi("migrate")
    row = only_container(kiwi)
    assert row["id"] == "aaaaaaaaaaaa" and row["memory"] == 256 * MIB
    assert kiwi.out("attach", GO_ID[:20], "--", "cat", "/root/hello") == "written-in-go-kiwi"


def test_running_go_container_is_refused(kiwi):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        record = kiwi.root / "mounts" / "containers" / GO_ID / "runtime.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"name": GO_ID, "pid": sleeper.pid, "running": True}))
        done = kiwi("migrate", check=False)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("kiwi: the original Kiwi still runs") and GO_ID in done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert (kiwi.root / "containers" / GO_ID / "config.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "adopted container" in kiwi.out("migrate")
    assert not (kiwi.root / "mounts" / "containers").exists()


def test_hostile_data_folder_touches_nothing_outside(kiwi, tmp_path):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    outside = tmp_path / "outside"
    (outside / "upper").mkdir(parents=True)
    (outside / "work").mkdir()
    os.mknod(outside / "upper" / "null", 0o600 | 0o020000, os.makedev(1, 3))
    (outside / "manifest.json").write_text("{}")
    before = sorted(p.name for p in outside.rglob("*"))
    images = kiwi.root / "images"
    os.symlink(outside, images / "evil")  # an image that is a symlink
    fake = kiwi.root / "containers" / ("ab" * 12)  # a container whose state is a symlink
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"image": "bb", "state_path": str(outside)}))
    os.symlink(outside, fake / "state")
    # device nodes inside the folder: dropped, except the upper layer's 0:0 whiteouts
    rootfs_dev = images / "bb" / "rootfs" / "root" / "disk"
    os.mknod(rootfs_dev, 0o600 | 0o060000, os.makedev(8, 0))
    upper = kiwi.root / "containers" / GO_ID / "state" / "upper"
    os.mknod(upper / "root" / "mem", 0o600 | 0o020000, os.makedev(1, 1))
    os.mknod(upper / "root" / "gone", 0o000 | 0o020000, os.makedev(0, 0))
    done = kiwi("migrate", check=False)
    assert done.returncode == 1 and "1 of the original Kiwi's" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    out = done.stdout
    assert "adopted image bb (1 device nodes dropped)" in out
    assert not os.path.lexists(rootfs_dev)
    adopted_upper = kiwi.root / "containers" / GO_ID[:12] / "state" / "upper" / "root"
    assert sorted(os.listdir(adopted_upper)) == ["gone", "hello"]
    assert f"container {'ab' * 12} skipped" in out
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert os.stat(outside / "upper" / "null").st_rdev == os.makedev(1, 3)
    assert [r["id"] for r in kiwi.json("list", "containers")] == [GO_ID[:12]]
    assert not (outside / "image.json").exists()


def test_damaged_go_config_is_skipped_alone(kiwi):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    bad = kiwi.root / "containers" / ("cd" * 12)
    (bad / "state" / "upper").mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"image": "bb", "memory": "-5"}))
    done = kiwi("migrate", check=False)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert f"container {'cd' * 12} skipped: " in done.stdout and "invalid memory" in done.stdout
    assert [r["id"] for r in kiwi.json("list", "containers")] == [GO_ID[:12]]
    assert (bad / "config.json").exists()  # left as it was, for the user to fix


def test_symlinked_containers_folder_is_refused(kiwi, tmp_path):
    unpack_data_folder(kiwi, SHARED / "kiwi-data.tar.gz")
    real = tmp_path / "elsewhere"
    shutil.move(kiwi.root / "containers", real)
    os.symlink(real, kiwi.root / "containers")
    done = kiwi("migrate", check=False)
    assert done.returncode == 1 and "is a symlink" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert (real / GO_ID / "config.json").exists() and not (real / GO_ID / "go-config.json").exists()


# ------------------------------------------------------------------ archives


def test_create_from_go_squashfs(kiwi):
    cid = kiwi.create(SHARED / "s1.kiwi")
    row = only_container(kiwi)
    assert (row["image"], row["memory"], row["cpu"], row["storage_limit"]) == ("bb", 256 * MIB, 1, GIB)
    assert kiwi.out("attach", cid[:6], "--", "cat", "/root/hello") == "written-in-go-kiwi"
    # the same Go image again: reused, not restored twice
    kiwi.create(SHARED / "s1.kiwi")
    assert [i["name"] for i in kiwi.json("list", "images")] == ["bb"]


def test_create_from_go_squashfs_with_changes(kiwi):
    cid = kiwi.create(FIXTURES / "go-changes.kiwi")
    row = only_container(kiwi)
    # Its `--storage host` is not granted from the file (as for a .kiwi file): the default.
    assert (row["memory"], row["storage_limit"], row["network"]) == (300 * MIB, GIB, "separate")
    assert_changes_applied(kiwi, cid)
    assert kiwi.out("attach", cid, "--", "sh", "-c", "echo $SHELL") == "/bin/ash"
    # the settings are applied by the kernel, not only listed
    assert limits(cgroup_of(kiwi, cid))["memory"] == 300 * MIB
    assert kiwi.out("attach", cid, "--", "nproc") == "1"


def test_create_from_older_go_targz(kiwi, busybox_tar):
    # this Go version wrote no rootfs into its snapshots: the image must be here
    done = kiwi("create", FIXTURES / "go-old-changes.kiwi", check=False)
    assert done.returncode == 1 and "import that image first" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert_nothing_left(kiwi)
    kiwi("import", "--name", "bb", busybox_tar)
    cid = kiwi.create(FIXTURES / "go-old-changes.kiwi")
    assert kiwi.out("attach", cid, "--", "cat", "/root/hello") == "hello-from-go"
    assert kiwi.sh(cid, "test -e /sbin/arp", check=False).returncode == 1


def test_go_archive_network_host_not_granted(kiwi, tmp_path):
    tree = go_tree(tmp_path, config={"network": "host", "memory": "64"})
    cid = kiwi.create(squash(tree, tmp_path / "net.kiwi", "-comp", "zstd"))
    row = only_container(kiwi)
    assert (row["network"], row["memory"]) == ("separate", 64 * MIB)
    assert kiwi.out("attach", cid, "--", "cat", "/root/hello") == "hi"


@pytest.mark.parametrize("comp", ["gzip", "xz", "lz4", "zstd"])
def test_go_squashfs_compressors(kiwi, tmp_path, comp):
    tree = go_tree(tmp_path)
    cid = kiwi.create(squash(tree, tmp_path / f"{comp}.kiwi", "-comp", comp))
    assert kiwi.out("attach", cid, "--", "cat", "/root/hello") == "hi"


# ------------------------------------------------------------------ hostile archives


def go_tree(tmp_path: Path, config: dict | None = None) -> Path:
    """A Go-layout container tree: a busybox rootfs and a small upper layer."""
    tree = tmp_path / "tree"
    rootfs = tree / "rootfs"
    rootfs.mkdir(parents=True)
    subprocess.run(
        [
            "tar",
            "-xJf",
            str(Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test")) / "busybox-rootfs.tar.xz"),
            "-C",
            str(rootfs),
        ],
        check=True,
    )
    (tree / "state" / "upper" / "root").mkdir(parents=True)
    (tree / "state" / "upper" / "root" / "hello").write_text("hi\n")
    (tree / "meta.json").write_text(json.dumps({"kind": "container", "image_name": "t"}))
    (tree / "manifest.json").write_text(json.dumps({"name": "t", "format": "dir"}))
    (tree / "config.json").write_text(
        json.dumps({"image": "t", "state_backend": "dir", "state_size_bytes": GIB, **(config or {})})
    )
    return tree


def squash(tree: Path, out: Path, *options) -> Path:
    subprocess.run(
        ["mksquashfs", str(tree), str(out), "-noappend", "-no-progress", "-quiet", "-xattrs", *options],
        check=True,
        capture_output=True,
    )
    return out


def assert_refused(kiwi, archive: Path, words: str) -> None:
    done = kiwi("create", archive, check=False)
    assert done.returncode == 1, done
    assert done.stderr.startswith("kiwi: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert words in done.stderr, done.stderr
    assert_nothing_left(kiwi)


def test_hostile_symlinked_rootfs(kiwi, tmp_path):
    tree = go_tree(tmp_path)
    shutil.rmtree(tree / "rootfs")
    os.symlink("/etc", tree / "rootfs")
    assert_refused(kiwi, squash(tree, tmp_path / "evil.kiwi"), "unsafe")


def test_hostile_symlinked_upper(kiwi, tmp_path):
    tree = go_tree(tmp_path)
    shutil.rmtree(tree / "state" / "upper")
    os.symlink("/etc", tree / "state" / "upper")
    assert_refused(kiwi, squash(tree, tmp_path / "evil.kiwi"), "unsafe")


def crafted_name(tmp_path, name: bytes) -> Path:
    """A squashfs whose upper layer has an entry named `name` (mksquashfs refuses such
    names, so the two bytes of a file called 'qq' are replaced in its directory table)."""
    tree = go_tree(tmp_path)
    (tree / "state" / "upper" / "root" / "qq").write_text("x\n")
    out = squash(tree, tmp_path / "evil.kiwi", "-noI", "-noD", "-noF", "-noX")
    data = bytearray(out.read_bytes())
    dir_start, frag_start = struct.unpack_from("<qq", data, 72)  # directory, fragment table starts
    spot = data.find(b"qq", dir_start, frag_start)
    assert spot > 0
    data[spot : spot + 2] = name
    out.write_bytes(bytes(data))
    return out


def test_hostile_slash_name(kiwi, tmp_path):
    assert_refused(kiwi, crafted_name(tmp_path, b"q/"), "damaged or hostile")


def test_hostile_dotdot_name_is_never_followed(kiwi, tmp_path):
    """readdir's own '..' hides a crafted one: it is dropped, never followed or created."""
    cid = kiwi.create(crafted_name(tmp_path, b".."))
    assert kiwi.out("attach", cid, "--", "ls", "-a", "/root") == ".\n..\nhello"
    assert kiwi.out("attach", cid, "--", "cat", "/root/hello") == "hi"


def test_hostile_device_node_in_changes(kiwi, tmp_path):
    tree = go_tree(tmp_path)
    out = squash(tree, tmp_path / "evil.kiwi", "-p", "state/upper/sda b 600 0 0 8 0")
    assert_refused(kiwi, out, "device node")


def test_device_nodes_in_rootfs_are_not_created(kiwi, tmp_path):
    tree = go_tree(tmp_path)
    out = squash(tree, tmp_path / "dev.kiwi", "-p", "rootfs/root/sda b 600 0 0 8 0")
    cid = kiwi.create(out)
    assert kiwi.sh(cid, "test -e /root/sda", check=False).returncode == 1


def test_hostile_huge_declared_size(kiwi, tmp_path):
    tree = go_tree(tmp_path)
    with open(tree / "state" / "upper" / "root" / "huge", "wb") as f:
        f.truncate(3 * GIB)  # sparse: 3G declared, almost nothing stored
    assert_refused(kiwi, squash(tree, tmp_path / "evil.kiwi"), "too small")


def test_damaged_squashfs_superblock(kiwi, tmp_path):
    out = squash(go_tree(tmp_path), tmp_path / "evil.kiwi")
    data = bytearray(out.read_bytes())
    struct.pack_into("<q", data, 40, len(data) * 4)  # bytes_used beyond the file
    out.write_bytes(bytes(data))
    assert_refused(kiwi, out, "not a valid squashfs")


def go_targz(out: Path, evil: tarfile.TarInfo, data: bytes = b"") -> Path:
    """An older-form Go archive (meta, manifest, config, rootfs) plus one hostile member."""

    def add(tar, name, payload, kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(payload) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)

    with tarfile.open(out, "w:gz") as tar:
        add(tar, "meta.json", json.dumps({"kind": "container", "image_name": "t"}).encode())
        add(tar, "manifest.json", json.dumps({"name": "t"}).encode())
        add(tar, "config.json", json.dumps({"image": "t", "state_backend": "dir"}).encode())
        add(tar, "rootfs", b"", tarfile.DIRTYPE)
        add(tar, "rootfs/hello", b"hi\n")
        add(tar, "state/upper", b"", tarfile.DIRTYPE)
        tar.addfile(evil, io.BytesIO(data) if data else None)
    return out


def member(name, kind=tarfile.REGTYPE, size=0, linkname="", dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    info.devmajor, info.devminor = dev
    return info


@pytest.mark.parametrize(
    "evil, data, words",
    [
        (member("state/upper/../../x", size=3), b"hi\n", "'..'"),
        (member("/etc/kiwi-go-evil", size=3), b"hi\n", "absolute"),
        (member("rootfs/../../x", size=3), b"hi\n", "'..'"),
        (member("state/upper/sda", tarfile.BLKTYPE, dev=(8, 0)), b"", "device node"),
        (member("state/upper/x", tarfile.LNKTYPE, linkname="/etc/shadow"), b"", "unsafe"),
        (member("state/upper/x", tarfile.LNKTYPE, linkname="rootfs/hello"), b"", "outside its part"),
    ],
)
def test_hostile_older_targz(kiwi, tmp_path, evil, data, words):
    assert_refused(kiwi, go_targz(tmp_path / "evil.kiwi", evil, data), words)
    assert not os.path.exists("/etc/kiwi-go-evil")


def test_older_targz_symlink_then_write_through(kiwi, tmp_path):
    out = tmp_path / "evil.kiwi"
    with tarfile.open(out, "w:gz") as tar:
        for name, payload in (
            ("meta.json", {"kind": "container"}),
            ("manifest.json", {"name": "t"}),
            ("config.json", {"image": "t"}),
        ):
            raw = json.dumps(payload).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        tar.addfile(member("rootfs", tarfile.DIRTYPE))
        tar.addfile(member("rootfs/etc", tarfile.SYMTYPE, linkname="/etc"))
        tar.addfile(member("rootfs/etc/kiwi-go-evil", size=3), io.BytesIO(b"hi\n"))
    assert_refused(kiwi, out, "through the symlink")
    assert not os.path.exists("/etc/kiwi-go-evil")
