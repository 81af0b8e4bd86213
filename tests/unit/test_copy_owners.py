"""kiwi cp's owners and modes (copyfiles.copy_mode, Copy.owner): out to the host the
caller's, masked by the umask, as GNU cp without -p and docker cp; --archive keeps them.
And where a file copied out goes when the host already has the name
(copyfiles.existing_host_entry): into a FIFO or character device, never renamed over
them, and a host symlink is replaced, never followed (but the
caller's own /dev/stdout and /dev/stderr)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from kiwi import copyfiles
from kiwi.copyfiles import Copy, copy_mode
from kiwi.errors import KiwiError


def test_modes_out_are_masked_by_the_umask_and_never_set_id():
    assert copy_mode(0o777, to_host=True, archive=False, umask=0o022) == 0o755
    assert copy_mode(0o4755, to_host=True, archive=False, umask=0o022) == 0o755
    assert copy_mode(0o2777, to_host=True, archive=False, umask=0o077) == 0o700
    assert copy_mode(0o1777, to_host=True, archive=False, umask=0o022) == 0o1755  # sticky, as cp
    # --archive: the mode as it was, but never setuid or setgid on the host.
    assert copy_mode(0o777, to_host=True, archive=True, umask=0o077) == 0o777
    assert copy_mode(0o6755, to_host=True, archive=True, umask=0o022) == 0o755


def test_modes_in_are_kept_set_id_only_with_archive():
    assert copy_mode(0o604, to_host=False, archive=False, umask=0o077) == 0o604  # no host umask
    assert copy_mode(0o4755, to_host=False, archive=False, umask=0o022) == 0o755
    assert copy_mode(0o1777, to_host=False, archive=False, umask=0o022) == 0o1777
    assert copy_mode(0o6755, to_host=False, archive=True, umask=0o022) == 0o6755


def ids(uid: int, gid: int) -> os.stat_result:
    return os.stat_result((0o100644, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_owners():
    me = (os.getuid(), os.getgid())
    assert Copy(to_host=True, label="c:/f").owner(ids(1000, 1000)) == me
    assert Copy(to_host=True, label="c:/f", shift=100000).owner(ids(101000, 101000)) == me
    # --archive out: the ids the container sees (a running unprivileged one's shifted back).
    assert Copy(to_host=True, label="c:/f", archive=True).owner(ids(1000, 7)) == (1000, 7)
    assert Copy(to_host=True, label="c:/f", shift=100000, archive=True).owner(ids(101000, 100007)) == (
        1000,
        7,
    )
    # In: the container's root, as the destination stores it; --archive: the host's ids.
    assert Copy(to_host=False, label="f").owner(ids(1000, 1000)) == (0, 0)
    assert Copy(to_host=False, label="f", shift=100000).owner(ids(1000, 1000)) == (100000, 100000)
    assert Copy(to_host=False, label="f", shift=100000, archive=True).owner(ids(1000, 7)) == (101000, 100007)


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert copyfiles.current_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


# --- an existing host destination ---


@pytest.fixture
def folder(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_nothing_a_file_a_folder_or_a_symlink_is_staged_as_before(tmp_path, folder):
    """A symlink is replaced, never followed: a folder copied out brings the container's
    links (to a host FIFO such as /run/initctl, a device, a host file)."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for target, name in (
        ("fifo", "to-fifo"),
        ("/dev/null", "to-null"),
        ("file", "to-file"),
        ("nowhere", "dangling"),
    ):
        os.symlink(target, tmp_path / name)
    for name in ("missing", "file", "dir", "to-fifo", "to-null", "to-file", "dangling"):
        assert copyfiles.existing_host_entry(folder, name, name) is None, name


def read_fifo(path, into: list) -> threading.Thread:
    def read():
        with open(path, "rb") as f:
            into.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    return reader


def test_a_fifo_is_written_into(tmp_path, folder):
    os.mkfifo(tmp_path / "fifo")
    got: list[bytes] = []
    reader = read_fifo(tmp_path / "fifo", got)
    fd = copyfiles.existing_host_entry(folder, "fifo", "fifo")
    assert isinstance(fd, int)
    os.write(fd, b"data")
    os.close(fd)
    reader.join(10)
    assert got == [b"data"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_the_callers_stdout_is_written_into(tmp_path):
    """The host's /dev/stdout (a link saying /proc/self/fd/1) and /dev/fd/1 (1 in this
    process's own fd folder) are fd 1, written where it points (its offset kept). A link
    saying the same anywhere else (a container's, copied out with a folder) is not."""
    (tmp_path / "dev").mkdir()
    os.symlink("/proc/self/fd/1", tmp_path / "dev" / "stdout")
    os.symlink("/proc/self/fd/1", tmp_path / "dev" / "1")
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1)
    os.dup2(out, 1)
    try:
        os.write(1, b"before\n")
        for name in ("stdout", "1"):
            parent = os.open(tmp_path / "dev", os.O_PATH | os.O_DIRECTORY)
            try:
                assert copyfiles.existing_host_entry(parent, name, name) is None
            finally:
                os.close(parent)
        for parent_path, name in (("/dev", "stdout"), ("/dev/fd", "1")):
            parent = os.open(parent_path, os.O_PATH | os.O_DIRECTORY)
            try:
                fd = copyfiles.existing_host_entry(parent, name, name)
            finally:
                os.close(parent)
            assert isinstance(fd, int) and fd > 2
            os.write(fd, f"{name}\n".encode())
            os.close(fd)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(out)
    assert (tmp_path / "out").read_text() == "before\nstdout\n1\n"


def test_refused(tmp_path, folder):
    os.mknod(tmp_path / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    with pytest.raises(KiwiError, match="blk is a block device; kiwi cp does not write into it"):
        copyfiles.existing_host_entry(folder, "blk", "blk")
    assert os.listdir(tmp_path) == ["blk"]


def test_a_terminal_is_refused(tmp_path):
    leader, follower = os.openpty()
    saved = os.dup(2)
    os.dup2(follower, 2)
    try:
        parent = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
        try:
            with pytest.raises(KiwiError, match="/dev/stderr is a terminal; kiwi cp does not write"):
                copyfiles.existing_host_entry(parent, "stderr", "/dev/stderr")
        finally:
            os.close(parent)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(leader)
        os.close(follower)


def test_stream_file_ends_at_the_size_given(tmp_path):
    (tmp_path / "src").write_bytes(b"0123456789")
    os.mkfifo(tmp_path / "fifo")
    got: list[bytes] = []
    reader = read_fifo(tmp_path / "fifo", got)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "fifo", os.O_WRONLY)
    try:
        assert copyfiles.stream_file(src, dst, 4) == 4
    finally:
        os.close(src)
        os.close(dst)
    reader.join(10)
    assert got == [b"0123"]
