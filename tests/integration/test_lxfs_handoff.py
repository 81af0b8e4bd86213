"""kiwi-lxfs takes the FUSE connection from the container's PID 1 over a socket pair
(lxfs.mount_connection -> cffi_build/lxfs.c receive_connection): exactly a /dev/fuse
device and a PID namespace; anything else, or the other end closed without a word, ends
it with a line that says so, before it serves or forks anything. Its sysinfo handler
(kiwi-sysinfo) takes seccomp listeners from the socket on fd 4 and never spins on it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
import subprocess
import time

import pytest

from conftest import alive, wait_gone, wait_until
from kiwi import lxfs, security
from kiwi.enter import HELPER_FD_BASE, spawn_helper
from kiwi.proc import read_to_end, wait_exit_code


def start(tmp_path, notify: int | None = None, nofile: int | None = None):
    """kiwi-lxfs as spawn_server lays it out, over stand-in cgroup files; returns (pid,
    our end of its socket pair, its stderr). notify: its fd 4, the socket its sysinfo
    handler takes listeners on (else /dev/null); nofile: its RLIMIT_NOFILE."""
    for name in ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "cpuset.effective_cpus"):
        (tmp_path / name).write_text("0\n")
    (tmp_path / "root").mkdir()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    memfd = security.helper_memfd(lxfs.NAME)
    argv = [lxfs.NAME, "-v", "1", "-p", "0", "-u", "65534", "-r", str(tmp_path / "root"), "-j", "pid"]
    argv += ["-m", str(tmp_path), "-s", str(tmp_path)]
    layout = [null, null, err_w, theirs.fileno(), null if notify is None else notify, null, null]
    try:
        if nofile is None:
            pid = spawn_helper(memfd, layout, argv, {})
        else:
            pid = spawn_limited(memfd, layout, argv, nofile)
    finally:
        for fd in (memfd, null, err_w):
            os.close(fd)
        theirs.close()
    return pid, ours, err_r


def spawn_limited(memfd: int, layout: list[int], argv: list[str], nofile: int) -> int:
    """spawn_helper's layout, with RLIMIT_NOFILE lowered to nofile for the helper (this
    process has no CAP_SYS_RESOURCE to lower the limit of another uid's process later)."""
    pid = os.fork()
    if pid == 0:
        try:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HELPER_FD_BASE) for fd in [memfd, *layout]]
            for target, fd in enumerate(high[1:]):
                os.dup2(fd, target)
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )
            os.execve(f"/proc/self/fd/{high[0]}", argv, {})
        finally:
            os._exit(127)
    return pid


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


# --- the sysinfo handler's socket ---------------------------------------------------


@pytest.fixture
def pid_namespace():
    """An fd of a new PID namespace whose init is a sleep (what a container's would be):
    the handler lives there, and ends with it."""
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        children = f"/proc/{holder.pid}/task/{holder.pid}/children"
        while not open(children).read().strip():
            assert time.monotonic() < deadline, "unshare made no PID namespace"
            time.sleep(0.01)
        init = int(open(children).read().split()[0])
        fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def start_handler(tmp_path, pidns: int, notify: int, nofile: int | None = None) -> int:
    """kiwi-lxfs given a real (unmounted) FUSE connection, so it goes on to start its sysinfo
    handler in pidns with notify as its socket; returns the handler's host pid. (Its FUSE
    server ends at once: the connection is mounted nowhere.)"""
    pid, ours, err_r = start(tmp_path, notify, nofile)
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        socket.send_fds(ours, [b"F"], [fuse, pidns])
    finally:
        os.close(fuse)
        ours.close()
    status, message = outcome(pid, err_r)
    assert status == 0, message
    handler, rest = lxfs.handler_pid(message)
    assert handler is not None and not rest, message
    return handler


def cpu_ticks(pid: int) -> int:
    """utime + stime of pid, in clock ticks (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])


def busy_share(pid: int, seconds: float = 1.0) -> float:
    """The share of one CPU pid used over the next `seconds`."""
    before = cpu_ticks(pid)
    time.sleep(seconds)
    return (cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / seconds


@pytest.mark.parametrize("kind", ["/dev/null", "a connected socket"])
def test_a_socket_that_can_never_accept_ends_the_handler(tmp_path, pid_namespace, kind):
    """accept4 failing for good (ENOTSOCK, EINVAL) once spun at 100% CPU forever: with no
    listener to serve and none that can ever come, the handler ends instead."""
    pair = socket.socketpair()
    notify = (
        os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if kind == "/dev/null" else os.dup(pair[0].fileno())
    )
    try:
        pair[1].send(b"x")  # readable: poll says POLLIN, accept4 says EINVAL
        handler = start_handler(tmp_path, pid_namespace, notify)
    finally:
        os.close(notify)
        pair[0].close()
    try:
        wait_gone([handler], timeout=5)
    finally:
        assert busy_share(handler, 0.5) < 0.2
        pair[1].close()


def open_fds(pid: int) -> set[int]:
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


NOFILE = 32  # the handler's RLIMIT_NOFILE in the test below: room for its own fds and a few more


def test_out_of_fds_the_handler_backs_off_and_accepts_later(tmp_path, pid_namespace):
    """EMFILE (or ENFILE) leaves the connection in the backlog, so poll says POLLIN again at
    once: the handler pauses accepting instead of spinning, and takes the connection once
    it has fds again."""
    path = str(tmp_path / "sysinfo.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    server.bind(path)
    server.listen(64)
    try:
        handler = start_handler(tmp_path, pid_namespace, server.fileno(), NOFILE)
    finally:
        server.close()
    idle, clients = [], []
    try:
        # Connections that send nothing stay open in the handler: they use up its fds.
        while len(open_fds(handler)) < NOFILE:
            before = len(open_fds(handler))
            idle.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
            idle[-1].connect(path)
            assert wait_until(lambda before=before: len(open_fds(handler)) > before)
        # Out of fds: this one waits in the backlog.
        clients.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
        clients[-1].connect(path)
        clients[-1].send(b"x")  # no listener in it: the handler drops it once it has it
        assert busy_share(handler) < 0.2
        assert alive(handler)
        idle.pop().close()  # one fd free again
        clients[-1].settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert clients[-1].recv(1) == b""  # accepted, read and closed
        assert alive(handler)
    finally:
        for connection in idle + clients:
            connection.close()
