"""enter.open_init_namespaces opens the init's namespaces only while that very process
holds the pid: checked before (a pidfd pinned, start time compared) and after the opens."""

import os
import subprocess

import pytest

from kiwi import enter
from kiwi.errors import KiwiError
from kiwi.peek import process_start_time


@pytest.fixture
def child():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_live_init_namespaces_open(child):
    fds = enter.open_init_namespaces(child.pid, process_start_time(child.pid), False)
    try:
        mnt = os.readlink(f"/proc/{child.pid}/ns/mnt")
        assert mnt in [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


def test_another_start_time_is_refused(child):
    before = open_fds()
    with pytest.raises(KiwiError, match="has exited"):
        enter.open_init_namespaces(child.pid, process_start_time(child.pid) - 1, False)
    assert open_fds() == before


def test_an_init_that_exits_between_check_and_opens_is_refused(child, monkeypatch):
    """The init exits (and is reaped) after the start time was checked, while the files
    are opened: what was opened is closed and the entry refused."""
    start_time = process_start_time(child.pid)
    real_open = enter.open_namespaces

    def open_then_exit(pid, include_net):
        fds = real_open(pid, include_net)
        child.kill()
        child.wait()
        return fds

    monkeypatch.setattr(enter, "open_namespaces", open_then_exit)
    before = open_fds()
    with pytest.raises(KiwiError, match="exited while kiwi entered it"):
        enter.open_init_namespaces(child.pid, start_time, False)
    assert open_fds() == before


def test_the_check_comes_after_the_pidfd(child, monkeypatch):
    """A pid reused between a caller's check and the pidfd would pin the wrong process:
    the start time is compared once the pidfd is held, not before."""
    order = []
    real_pidfd_open, real_start_time = os.pidfd_open, enter.process_start_time
    monkeypatch.setattr(enter.os, "pidfd_open", lambda pid: order.append("pidfd") or real_pidfd_open(pid))
    monkeypatch.setattr(
        enter, "process_start_time", lambda pid: order.append("start") or real_start_time(pid)
    )
    fds = enter.open_init_namespaces(child.pid, real_start_time(child.pid), False)
    for fd in fds:
        os.close(fd)
    assert order == ["pidfd", "start"]
