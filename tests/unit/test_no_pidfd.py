"""Kiwi on a kernel without pidfd_open (before 5.3), made real on this one: each check runs
in a fresh interpreter under no_pidfd.py's seccomp filter, where pidfd_open fails with
ENOSYS as such a kernel's does. The fallbacks keep their promises: enter opens the init's
namespaces only while that process holds the pid (its start time checked after the opens),
stopping.signal_init signals only the process checked to be the init, and a relay learns
of its helper's exit from SIGCHLD, even of an exit before it looked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import kiwi

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(kiwi.__file__)))
TESTS = os.path.join(CHECKOUT, "tests")

PRELUDE = f"""
import errno, os, signal, subprocess, sys
sys.path[:0] = [{CHECKOUT!r}, {TESTS!r}]
from no_pidfd import refuse_pidfd_open
refuse_pidfd_open()
try:
    os.pidfd_open(os.getpid())
except OSError as e:
    assert e.errno == errno.ENOSYS, e
else:
    raise AssertionError("pidfd_open still works")
from kiwi import enter, stdio, stopping
from kiwi.errors import KiwiError
from kiwi.peek import process_start_time
child = subprocess.Popen(["sleep", "60"])
start = process_start_time(child.pid)
"""


def under_old_kernel(code: str) -> str:
    """Runs code after PRELUDE in a fresh interpreter; its stdout. The sleep child is killed."""
    script = (
        PRELUDE + "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") + "\nfinally:\n    child.kill()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_init_namespaces_open_while_it_holds_the_pid():
    out = under_old_kernel("""
        fds = enter.open_init_namespaces(child.pid, start, False)
        mnt = os.readlink(f"/proc/{child.pid}/ns/mnt")
        print(mnt in [os.readlink(f"/proc/self/fd/{fd}") for fd in fds])
    """)
    assert out == "True\n"


def test_another_process_on_the_pid_is_refused_and_nothing_kept_open():
    """The record's start time is not the process's: the pid is another's now."""
    out = under_old_kernel("""
        before = set(os.listdir("/proc/self/fd"))
        try:
            enter.open_init_namespaces(child.pid, start - 1, False)
        except KiwiError as e:
            print(e)
        print(set(os.listdir("/proc/self/fd")) == before)
    """)
    assert out.endswith(") exited while kiwi entered it\nTrue\n") and out.startswith(
        "the container's init (pid "
    )


def test_an_init_that_exits_while_its_namespaces_open_is_refused():
    out = under_old_kernel("""
        real_open = enter.open_namespaces
        def open_then_exit(pid, include_net):
            fds = real_open(pid, include_net)
            child.kill()
            child.wait()
            return fds
        enter.open_namespaces = open_then_exit
        before = set(os.listdir("/proc/self/fd"))
        try:
            enter.open_init_namespaces(child.pid, start, False)
        except KiwiError as e:
            print("refused:", "exited while kiwi entered it" in str(e))
        print(set(os.listdir("/proc/self/fd")) == before)
    """)
    assert out == "refused: True\nTrue\n"


def test_only_the_checked_init_is_signalled():
    out = under_old_kernel("""
        stopping.signal_init(child.pid, start - 1, signal.SIGTERM)  # another process on the pid
        print(child.poll())
        stopping.signal_init(child.pid, start, signal.SIGTERM)
        print(child.wait(timeout=30))
    """)
    assert out == f"None\n{-15}\n"


def test_a_relay_sees_its_helper_exit_by_sigchld():
    """Once while it relays, once when the helper had exited before it looked (that
    SIGCHLD came before the relay's handler: without a look of its own it would wait
    forever)."""
    out = under_old_kernel("""
        for script, early in (("echo out; sleep 0.2; exit 5", False), ("echo early; exit 3", True)):
            with stdio.Relay(os.getpid()) as relay:
                actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(relay.child_fds)]
                helper = os.posix_spawn("/bin/sh", ["sh", "-c", script], dict(os.environ), file_actions=actions)
                relay.started()
                if early:
                    os.waitid(os.P_PID, helper, os.WEXITED | os.WNOWAIT)
                sys.stdout.flush()
                print(relay.run(helper), flush=True)
    """)
    assert out == "out\n5\nearly\n3\n"


def test_a_relay_under_a_seccomp_profile_that_refuses_pidfd_open_with_eperm():
    """Some seccomp profiles (older container engines' defaults) answer pidfd_open with
    EPERM, not ENOSYS: the relay falls back to SIGCHLD there too, as enter and stopping do."""
    script = f"""
import errno, os, sys
sys.path[:0] = [{CHECKOUT!r}, {TESTS!r}]
from no_pidfd import refuse_pidfd_open
refuse_pidfd_open(errno.EPERM)
from kiwi import stdio
with stdio.Relay(os.getpid()) as relay:
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(relay.child_fds)]
    helper = os.posix_spawn("/bin/sh", ["sh", "-c", "echo out; exit 4"], dict(os.environ), file_actions=actions)
    relay.started()
    sys.stdout.flush()
    print(relay.run(helper), flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out\n4\n"
