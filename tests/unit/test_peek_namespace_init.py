"""peek.is_namespace_init: how a start tells its container's init from a process that took a
dead stage's pid (Starter.identify_init)."""

from __future__ import annotations

import os
import subprocess
import time

from kiwi.peek import is_namespace_init


def children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def test_only_pid_1_of_a_pid_namespace_below_ours_counts():
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while not children_of(outer.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (init,) = children_of(outer.pid)
        assert is_namespace_init(init)
        assert not is_namespace_init(outer.pid)  # the host side of unshare: no namespace of its own
        assert not is_namespace_init(os.getpid())
    finally:
        outer.kill()
        outer.wait()


def test_a_gone_process_is_nobodys_init():
    assert not is_namespace_init(2**22 + 1)  # above any pid_max: no such process
