"""Issue 12 item 6: archives that expand past the disk.

A few hundred bytes of tar can declare a 3 GiB sparse file: it must stay sparse (import and
.kiwi restore). Dense data that cannot fit the data folder's free space is refused with one
line before it fills the disk, and a refused import or restore leaves nothing behind.
"""

from __future__ import annotations

import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from archive_attacks import read_kiwi, rewrite_kiwi, tar_members

from conftest import Kiwi, make_env, teardown_env

GIB = 1 << 30
MIB = 1 << 20


def blocks_below(path: Path) -> int:
    """Bytes really allocated under path (du, not the apparent sizes), leaving out
    .runtime: the one-file launcher's unpacked copy of kiwi itself."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if Path(dirpath) == path:
            dirnames[:] = [d for d in dirnames if d != ".runtime"]
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def leftovers(kiwi: Kiwi) -> list[str]:
    """Images, containers and staging entries of this data folder."""
    found = []
    for folder in ("images", "containers", ".tmp"):
        if (kiwi.root / folder).exists():
            found += [f"{folder}/{e}" for e in os.listdir(kiwi.root / folder)]
    return found


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiwi: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def sparse_bomb(folder: Path, *tar_format: str) -> Path:
    folder.mkdir()
    (folder / "f").touch()
    subprocess.run(["truncate", "-s", "3G", str(folder / "f")], check=True)
    bomb = folder / "bomb.tar.xz"
    subprocess.run(["tar", "--sparse", *tar_format, "-cJf", str(bomb), "-C", str(folder), "f"], check=True)
    return bomb


@pytest.mark.parametrize("tar_format", [[], ["--format=posix"]], ids=["gnu", "pax"])
def test_sparse_bomb_import_stays_sparse(kiwi, tmp_path, tar_format):
    bomb = sparse_bomb(tmp_path / "bomb", *tar_format)
    assert bomb.stat().st_size < 4096
    kiwi("import", "--name", "bomb", bomb)
    f = kiwi.root / "images/bomb/rootfs/f"
    assert f.stat().st_size == 3 * GIB
    assert f.stat().st_blocks * 512 < MIB
    # The whole data folder's real disk use (statvfs of a disk other tests share would be noise).
    assert blocks_below(kiwi.root) < 16 * MIB


@pytest.fixture
def small_kiwi(tmp_path_factory):
    """A Kiwi whose data folder is on a 200M tmpfs (unmounted by teardown_env)."""
    env, _ = make_env(tmp_path_factory)
    mnt = tmp_path_factory.mktemp("small-disk")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200M,mode=0755", "kiwi-test-small", str(mnt)], check=True
    )
    env["KIWI_ROOT"] = str(mnt / "kiwi-data")
    k = Kiwi(env, mnt / "kiwi-data")
    try:
        yield k
    finally:
        teardown_env(k)  # umounts everything below mnt, then removes it


def zeros_archive(path: Path, files: list[tuple[str, int]]) -> Path:
    """A .tar.zst of all-zero files: kilobytes on disk, gigabytes once extracted."""
    chunk = bytes(8 * MIB)
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as out:
        for name, size in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            out.write(info.tobuf(tarfile.GNU_FORMAT))
            for start in range(0, size, len(chunk)):
                out.write(chunk[: min(size - start, len(chunk))])
            out.write(bytes(-size % 512))
        out.write(bytes(1024))
    return path


@pytest.mark.parametrize(
    "files",
    [[("zeros", 2 * GIB)], [(f"part{i}", 50 * MIB) for i in range(10)]],
    ids=["one-2G-file", "ten-50M-files"],
)
def test_zip_bomb_that_cannot_fit_is_refused(small_kiwi, tmp_path, files):
    bomb = zeros_archive(tmp_path / "bomb.tar.zst", files)
    assert bomb.stat().st_size < 4 * MIB
    line = one_error_line(small_kiwi("import", "--name", "bomb", bomb, check=False))
    assert "free" in line, line  # refused before writing, not by ENOSPC half way
    assert leftovers(small_kiwi) == []
    assert blocks_below(small_kiwi.root) < MIB
    assert small_kiwi.json("list", "images") == []


@pytest.fixture
def busybox_snap(kiwi, busybox) -> Path:
    cid = kiwi.create(busybox)
    return Path(kiwi.out("snap", cid, "base"))


def upper_with(*entries) -> bytes:
    top = tarfile.TarInfo("upper")
    top.type, top.mode = tarfile.DIRTYPE, 0o755
    return tar_members([(top, None)]) + b"".join(entries)


def gnu_sparse_member(folder: Path) -> bytes:
    """upper/bomb as GNU tar stores it: a 3 GiB file whose only data is its last byte."""
    (folder / "upper").mkdir(parents=True)
    with open(folder / "upper/bomb", "wb") as f:
        f.seek(3 * GIB - 1)
        f.write(b"x")
    subprocess.run(
        [
            "tar",
            "--sparse",
            "--format=gnu",
            "--numeric-owner",
            "-cf",
            str(folder / "t.tar"),
            "-C",
            str(folder),
            "upper/bomb",
        ],
        check=True,
    )
    with tarfile.open(folder / "t.tar") as tar:
        [member] = tar.getmembers()
        assert member.sparse, "GNU tar did not store it sparse"
        end = tar.offset  # the member's header and stored data, without the end blocks
    return (folder / "t.tar").read_bytes()[:end]


def test_sparse_bomb_in_a_kiwi_file_stays_sparse(kiwi, busybox_snap, tmp_path):
    evil = rewrite_kiwi(
        busybox_snap, tmp_path / "evil.kiwi", parts={"upper": upper_with(gnu_sparse_member(tmp_path / "src"))}
    )
    assert evil.stat().st_size < 16 * MIB
    # --sparse: a reserved state.img holds its whole 1G on the host anyway; a sparse one
    # shows what the restore really wrote.
    cid = kiwi.create(str(evil), "--sparse")
    size, blocks = kiwi.out("attach", cid, "--", "stat", "-c", "%s %b", "/bomb").split()
    assert int(size) == 3 * GIB and int(blocks) * 512 < MIB
    assert kiwi.out("attach", cid, "--", "tail", "-c", "1", "/bomb") == "x"
    assert blocks_below(kiwi.root / "containers" / cid) < 128 * MIB  # the sparse state.img


def test_kiwi_file_that_overflows_the_state_image_is_one_line(kiwi, busybox_snap, tmp_path):
    """70000 empty files: 35 MB of tar, more inodes than a 1G ext4 state.img has."""
    files = []
    for i in range(70000):
        info = tarfile.TarInfo(f"upper/f{i}")
        info.mode = 0o644
        files.append((info, None))
    evil = rewrite_kiwi(
        busybox_snap, tmp_path / "inodes.kiwi", parts={"upper": upper_with(tar_members(files))}
    )
    assert read_kiwi(evil)[0]["parts"]["upper"]["size"] < 64 * MIB
    before = leftovers(kiwi)
    line = one_error_line(kiwi("create", evil, check=False, timeout=600))
    assert "storage" in line, line
    assert leftovers(kiwi) == before
    assert len(kiwi.json("list", "containers")) == 1  # the snapped one only


def metadata_bomb(path: Path, kind: bytes, size: int) -> Path:
    """A member whose metadata (a GNU long name, or a sparse 1.0 map of `size` regions)
    expands from a few KB of xz to hundreds of MB that tarfile held in memory whole."""
    packer = lzma.LZMACompressor()
    if kind == tarfile.GNUTYPE_LONGNAME:
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = kind, size
        head = header._create_header(header.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")  # type: ignore[attr-defined]
        chunk, count = b"a" * (1 << 20), size >> 20
    else:
        info = tarfile.TarInfo("GNUSparseFile.0/f")
        info.size = 4 * size + 512
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f"}
        info.pax_headers["GNU.sparse.realsize"] = "100"
        head = info.tobuf(tarfile.PAX_FORMAT) + f"{size}\n".encode()
        chunk, count = b"0\n0\n" * (1 << 18), size >> 18
    parts = [packer.compress(head)] + [packer.compress(chunk) for _ in range(count)]
    path.write_bytes(b"".join(parts) + packer.compress(b"\0" * 4096) + packer.flush())
    return path


@pytest.mark.parametrize(
    "kind, size",
    [(tarfile.GNUTYPE_LONGNAME, 300 << 20), (b"sparse", 5 << 20)],
    ids=["long-name", "sparse-map"],
)
def test_archive_metadata_bomb_is_one_short_line_in_little_memory(kiwi, tmp_path, kind, size):
    """46 KB of xz made kiwi hold a 300 MB name (1.2 GB of memory) and print it as its error
    line; 3 KB made tarfile build a map of 5 M regions (550 MB). Now refused before it is read."""
    bomb = metadata_bomb(tmp_path / "bomb.tar.xz", kind, size)
    assert bomb.stat().st_size < 64 << 10
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        redirect = [(os.POSIX_SPAWN_DUP2, o.fileno(), 1), (os.POSIX_SPAWN_DUP2, e.fileno(), 2)]
        argv = [*kiwi.cmd, "import", "--name", "bomb", str(bomb)]
        pid = os.posix_spawnp(argv[0], argv, kiwi.env, file_actions=redirect)
        _, status, usage = os.wait4(pid, 0)  # its peak memory, and its children's
    done = subprocess.CompletedProcess(
        argv, os.waitstatus_to_exitcode(status), out.read_text(), err.read_text()
    )
    line = one_error_line(done)
    assert len(line) < 400 and "Kiwi reads at most" in line, line[:400]
    assert usage.ru_maxrss < 300 << 10, f"{usage.ru_maxrss} KiB"
    assert leftovers(kiwi) == []
