"""lockwait.wait_telling: a lock another process holds past a moment is told once, naming that
process from /proc/locks; a free lock is taken without a word. Real flocks, a real holder."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from kiwi import lockwait

HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_busy_lock_is_told_with_its_holder(tmp_path):
    path = tmp_path / "c.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    told = []

    def notice(text: str) -> None:
        told.append(text)
        holder.stdin.close()  # told: the holder lets go, and the wait ends

    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert holder.stdout.readline() == "held\n"
        lockwait.wait_telling(fd, "container web", notice)
        other = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # this fd holds it now
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        os.close(fd)
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert len(told) == 1, told
    command = f"{os.path.basename(sys.executable)} -c import fcntl, os, sys"
    assert told[0].startswith(f"container web is busy: {command}"), told
    assert told[0].endswith(f"(pid {holder.pid}) holds it; waiting for it to finish (Ctrl-C gives up)")


def test_a_free_lock_is_taken_without_a_word(tmp_path):
    def notice(text: str) -> None:
        raise AssertionError(text)

    fd = os.open(tmp_path / "c.lock", os.O_RDWR | os.O_CREAT)
    try:
        lockwait.wait_telling(fd, "container web", notice)
        assert lockwait.lock_holder(fd).endswith(f"(pid {os.getpid()})")  # ours, as /proc/locks says
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "c.lock", os.O_RDWR)
    try:
        assert lockwait.lock_holder(fd) == "another kiwi"  # nobody's: the kernel names no one
    finally:
        os.close(fd)


def test_a_lock_its_taker_left_to_a_child_names_no_one(tmp_path):
    """The process that took it has exited; a child it left (as resize2fs is) holds it on:
    no pid that may be reused is named."""
    path = tmp_path / "c.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD.replace("sys.stdin.read()", "os.fork() and os._exit(0); sys.stdin.read()"),
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert holder.wait(timeout=60) == 0  # the taker is gone; its child holds the fd
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert lockwait.lock_holder(fd) == "another kiwi"
        finally:
            os.close(fd)
    finally:
        holder.stdin.close()  # the child reads to the end of this pipe, then exits
