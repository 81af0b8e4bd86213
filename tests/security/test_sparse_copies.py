"""A container's sparse file costs the host no more disk than it costs the container.

Root inside can make a file of terabytes in a few blocks (ext4 allows 16 TiB) within
any storage limit; `commit` (into the host's data folder) and `kiwi cp` out of the
container wrote every hole as zeros (a 1 GiB file of one block became 1 GiB on the
host's disk), and `snap` stored them as zeros, which a restore then wrote back past
the storage limit (the snapshot could not be restored). Their copies keep the holes.
"""

from __future__ import annotations

import os

from kiwi import archive

GIB = 1 << 30
# One byte at 512 MiB and another at the end of 1 GiB: three blocks of data at most.
MAKE_SPARSE = (
    "printf A | dd of=/sparse bs=1 seek=$((512 << 20)) conv=notrunc 2>/dev/null && "
    "printf Z | dd of=/sparse bs=1 seek=$(((1 << 30) - 1)) conv=notrunc 2>/dev/null && "
    "ls -ls /sparse"
)


def check_sparse_copy(path) -> None:
    st = os.stat(path)
    assert st.st_size == GIB
    assert st.st_blocks * 512 <= 1 << 20, f"{st.st_blocks * 512} bytes on the host's disk"
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 1, 512 << 20) == b"A" and os.pread(f.fileno(), 1, GIB - 1) == b"Z"
        assert os.pread(f.fileno(), 4096, 1 << 20) == bytes(4096)


def test_commit_keeps_the_holes(kiwi, busybox):
    cid = kiwi.create(busybox)
    kiwi.sh(cid, MAKE_SPARSE)
    kiwi("commit", cid, "flat", check=True)
    check_sparse_copy(kiwi.root / "images" / "flat" / "rootfs" / "sparse")


def test_cp_out_keeps_the_holes_and_proc_files_still_copy(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox)
    kiwi.sh(cid, MAKE_SPARSE)
    kiwi("cp", f"{cid}:/sparse", str(tmp_path / "sparse"), check=True)
    check_sparse_copy(tmp_path / "sparse")
    # A /proc file says its size is 0 and holds text: it is read to its end.
    kiwi("cp", f"{cid}:/proc/version", str(tmp_path / "version"), check=True)
    assert (tmp_path / "version").read_text() == open("/proc/version").read()


def test_snap_of_a_file_larger_than_the_storage_restores(kiwi, busybox):
    cid = kiwi.create(busybox)  # 1G of storage
    two_gib = 2 * GIB
    kiwi.sh(cid, MAKE_SPARSE + f" && printf E | dd of=/sparse bs=1 seek={two_gib - 1} 2>/dev/null")
    snapshot = kiwi.out("snap", cid, "holes")
    assert archive.read_manifest(snapshot)["parts"]["upper"]["size"] < 1 << 20  # the holes were not stored
    restored = kiwi.create(snapshot)
    size, blocks = kiwi.out("attach", restored, "--", "stat", "-c", "%s %b", "/sparse").split()
    assert int(size) == two_gib and int(blocks) * 512 <= 1 << 20
    script = f"dd if=/sparse bs=1 skip={512 << 20} count=1; dd if=/sparse bs=1 skip={GIB - 1} count=1; tail -c 1 /sparse"
    assert kiwi.out("attach", restored, "--", "sh", "-c", script + " 2>/dev/null") == "AZE"
