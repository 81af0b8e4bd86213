"""fstree.copy_file_data: a sparse file's holes stay holes, its data is copied, and the copy
ends at the size given (a source that grows or shrinks meanwhile). fstree.copy_range, the
one copy loop under it and under enter.sealed_copy: in the kernel within a file system and
into a memfd, from the offset given, short at the source's end, and errors it cannot fall
back from raised."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from fresh_import import modules_loaded_by

from kiwi import enter
from kiwi.fstree import copy_file_data, copy_range

MIB = 1 << 20


def sparse_source(path, size: int, data: dict[int, bytes]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    for offset, chunk in data.items():
        os.pwrite(fd, chunk, offset)
    return fd


def copy(tmp_path, src: int, size: int) -> tuple[int, os.stat_result, bytes]:
    dst = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        copied = copy_file_data(src, dst, size)
        return copied, os.fstat(dst), os.pread(dst, size, 0) if size <= 8 * MIB else b""
    finally:
        os.close(dst)


def test_holes_stay_holes(tmp_path):
    size = 16 << 30  # 16 GiB declared, two blocks of data
    src = sparse_source(tmp_path / "src", size, {300 * MIB: b"A" * 10, size - 3: b"XYZ"})
    try:
        copied, st, _ = copy(tmp_path, src, size)
    finally:
        os.close(src)
    assert st.st_size == size and st.st_blocks * 512 <= 64 * 1024 and copied <= 64 * 1024
    with open(tmp_path / "copy", "rb") as f:
        assert os.pread(f.fileno(), 12, 300 * MIB - 1) == b"\0" + b"A" * 10 + b"\0"
        assert os.pread(f.fileno(), 4, size - 4) == b"\0XYZ"


def test_data_without_holes_and_an_empty_file(tmp_path):
    payload = os.urandom(3 * MIB + 17)
    src = sparse_source(tmp_path / "src", len(payload), {0: payload})
    try:
        copied, st, data = copy(tmp_path, src, len(payload))
    finally:
        os.close(src)
    assert copied == len(payload) and data == payload
    os.unlink(tmp_path / "copy")
    empty = sparse_source(tmp_path / "empty", 0, {})
    try:
        assert copy(tmp_path, empty, 0)[:2][0] == 0 and os.stat(tmp_path / "copy").st_size == 0
    finally:
        os.close(empty)


def test_the_copy_ends_at_the_size_given(tmp_path):
    """A source that grew (or shrank) after its size was taken: the size given is the copy's."""
    src = sparse_source(tmp_path / "src", 2 * MIB, {0: b"B" * (2 * MIB)})
    try:
        copied, st, data = copy(tmp_path, src, MIB)
        assert st.st_size == MIB and data == b"B" * MIB and copied == MIB
        os.unlink(tmp_path / "copy")
        copied, st, data = copy(tmp_path, src, 4 * MIB)  # 2 MiB short: the rest reads as a hole
        assert st.st_size == 4 * MIB and data == b"B" * (2 * MIB) + bytes(2 * MIB) and copied == 2 * MIB
    finally:
        os.close(src)


def test_a_file_that_holds_less_than_it_says_ends_there(tmp_path):
    """A sysfs file says 4096 bytes and holds a line: the copy is the line."""
    path = "/sys/kernel/uevent_seqnum"
    src = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(src).st_size
        copied, st, data = copy(tmp_path, src, size)
    finally:
        os.close(src)
    assert size == 4096 and data.endswith(b"\n") and st.st_size == len(data) == copied < size


def test_copy_range_within_a_file_system_and_into_a_memfd(tmp_path):
    """copy_file_range where it works (tmp_path to tmp_path), sendfile where it refuses
    (a file into a memfd: EXDEV), at the offset given, and short when the end comes first."""
    data = os.urandom(3 * MIB) + b"end"
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        for make_dst in (
            lambda: os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC),
            lambda: os.memfd_create("dst"),
        ):
            dst = make_dst()
            try:
                assert copy_range(src, dst, 10, len(data)) == len(data) - 10  # short: the end came first
                assert os.pread(dst, len(data) + 1, 0) == bytes(10) + data[10:]
            finally:
                os.close(dst)
        dst = os.memfd_create("part")
        assert copy_range(src, dst, 0, 5) == 5 and os.pread(dst, 10, 0) == data[:5]
        os.close(dst)
        assert os.lseek(src, 0, os.SEEK_CUR) == 0  # the source's offset is left alone
    finally:
        os.close(src)


def test_copy_range_raises_what_it_cannot_fall_back_from(tmp_path):
    (tmp_path / "src").write_bytes(b"x")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "src", os.O_RDONLY)  # not open for writing
    try:
        with pytest.raises(OSError) as e:
            copy_range(src, dst, 0, 1)
        assert e.value.errno == errno.EBADF
    finally:
        os.close(src)
        os.close(dst)


def test_sealed_copy_is_the_file_and_refuses_changes(tmp_path):
    """What a start and an attach execute kiwi-exec and kiwi-init from (a stand-in here:
    unit tests use no build products)."""
    data = os.urandom(MIB + 3)
    (tmp_path / "helper").write_bytes(data)
    fd = enter.sealed_copy(str(tmp_path / "helper"), "helper")
    try:
        assert os.pread(fd, len(data) + 1, 0) == data
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        for change in (lambda: os.pwrite(fd, b"y", 0), lambda: os.ftruncate(fd, 1)):
            with pytest.raises(PermissionError):
                change()
    finally:
        os.close(fd)


def test_sealed_copy_of_a_file_that_holds_less_than_it_says_fails():
    """A sysfs file says 4096 bytes and holds a line: no half helper is ever executed."""
    with pytest.raises(OSError) as e:
        enter.sealed_copy("/sys/kernel/uevent_seqnum", "short")
    assert e.value.errno == errno.EIO


def test_enter_imports_nothing_heavy():
    """enter (and fstree, for its copy) is on every start and attach (issue 20)."""
    loaded = modules_loaded_by("kiwi.enter")
    assert "kiwi.fstree" in loaded
    assert not {"contextlib", "resource", "pathlib", "json", "re", "kiwi.store", "kiwi._sys"} & loaded


def test_runs_are_copied_one_at_a_time_not_listed_first(tmp_path):
    """A container makes a run of data per 4 KiB of its storage; listed before the copy
    (~150 bytes a run) a 100G container's file was 3.7 GB of kiwi's memory in commit or cp."""
    import tracemalloc

    runs = 4000
    with open(tmp_path / "src", "wb") as f:
        for n in range(runs):
            os.pwrite(f.fileno(), b"R", n * (64 << 10))
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        tracemalloc.start()
        copied = copy_file_data(src, dst, os.fstat(src).st_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(src)
        os.close(dst)
    assert copied >= runs
    assert (tmp_path / "dst").read_bytes() == (tmp_path / "src").read_bytes()
    assert peak < 100 << 10, f"{peak} bytes"
