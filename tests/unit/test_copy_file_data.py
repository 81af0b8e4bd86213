"""fstree.copy_file_data: a sparse file's holes stay holes, its data is copied, and the copy
ends at the size given (a source that grows or shrinks meanwhile)."""

from __future__ import annotations

import os

from kiwi.fstree import copy_file_data

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
