"""kiwi-lxfs takes the FUSE connection from the container's PID 1 over a socket pair
(lxfs.mount_connection -> cffi_build/lxfs.c receive_connection): exactly a /dev/fuse
device and a PID namespace; anything else, or the other end closed without a word, ends
it with a line that says so, before it serves or forks anything."""

from __future__ import annotations

import os
import socket

import pytest

from kiwi import lxfs, security
from kiwi.enter import spawn_helper
from kiwi.proc import read_to_end, wait_exit_code


def start(tmp_path):
    """kiwi-lxfs as spawn_server lays it out, over stand-in cgroup files; returns (pid,
    our end of its socket pair, its stderr)."""
    for name in ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "cpuset.effective_cpus"):
        (tmp_path / name).write_text("0\n")
    (tmp_path / "root").mkdir()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    memfd = security.helper_memfd(lxfs.NAME)
    argv = [lxfs.NAME, "-v", "1", "-p", "0", "-u", "65534", "-r", str(tmp_path / "root"), "-j", "pid"]
    argv += ["-m", str(tmp_path), "-s", str(tmp_path)]
    try:
        pid = spawn_helper(memfd, [null, null, err_w, theirs.fileno(), null, null, null], argv, {})
    finally:
        for fd in (memfd, null, err_w):
            os.close(fd)
        theirs.close()
    return pid, ours, err_r


def outcome(pid: int, err_r: int) -> tuple[int, str]:
    try:
        message = read_to_end(err_r).decode()
    finally:
        os.close(err_r)
    return wait_exit_code(pid), message


def assert_refused(tmp_path, device: str, flags: int) -> None:
    """Hand kiwi-lxfs `device` (opened with flags) and our PID namespace: it must refuse them."""
    pid, ours, err_r = start(tmp_path)
    fd = os.open(device, flags | os.O_CLOEXEC)
    pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        socket.send_fds(ours, [b"F"], [fd, pidns])
    finally:
        os.close(fd)
        os.close(pidns)
        ours.close()
    status, message = outcome(pid, err_r)
    assert status == 1
    assert "kiwi-lxfs: no FUSE connection from the container: Protocol error" in message


def test_other_fds_than_a_fuse_device_and_a_pid_namespace_are_refused(tmp_path):
    assert_refused(tmp_path, os.devnull, os.O_RDONLY)  # /dev/null where the FUSE device goes


def test_an_end_closed_without_a_connection_ends_the_server(tmp_path):
    pid, ours, err_r = start(tmp_path)
    ours.close()  # the container's PID 1 had no FUSE (or died first)
    status, message = outcome(pid, err_r)
    assert status == 1
    assert "kiwi-lxfs: no FUSE connection from the container: Broken pipe" in message


@pytest.mark.parametrize("flags", [os.O_PATH, os.O_RDONLY], ids=["O_PATH", "read-only"])
def test_a_fuse_device_not_open_for_reading_and_writing_is_refused(tmp_path, flags):
    """The right device, but no connection: only stage 2's own O_RDWR open of /dev/fuse is one."""
    assert_refused(tmp_path, "/dev/fuse", flags)
