"""The sysinfo handler writes its answer into the caller's memory. Root inside can hold it
between its check that the caller still waits (SECCOMP_IOCTL_NOTIF_ID_VALID) and its write
(a SIGSTOP lands at the end of that ioctl), kill the caller, and cycle pids until another
process of the container has the caller's pid: the write must not reach that process.
To leave nothing to luck the test holds the handler there with ptrace and hands the pid
over with ns_last_pid, both from the host. --privileged: there the handler's
CAP_SYS_PTRACE is the host's (it reaches every process of the container's PID namespace),
and host root can trace it (an unprivileged container's handler refuses ptrace here with
EPERM, even to host root)."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from .helpers import put_file


def handler_pid(kiwi, cid: str) -> int:
    for pid in json.loads(kiwi.out("inspect", cid))["pids"]:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "kiwi-sysinfo":
                return pid
    pytest.fail("no kiwi-sysinfo in the container")


def expect(proc: subprocess.Popen, prefix: str) -> str:
    line = proc.stdout.readline()
    assert line.startswith(prefix), (prefix, line, proc.stderr.read() if proc.poll() is not None else "")
    return line


def say(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def set_last_pid(init_pid: int, pid: int) -> None:
    """The next process of the container's PID namespace gets pid + 1 (what cycling does)."""
    script = f"echo {pid} > /proc/sys/kernel/ns_last_pid"  # the writer's own PID namespace
    subprocess.run(
        ["nsenter", f"--pid=/proc/{init_pid}/ns/pid", "--", "sh", "-c", script], check=True, timeout=30
    )


def test_a_reused_pid_gets_no_answer(kiwi, busybox, static_program):
    cid = kiwi.create(busybox, "--privileged", "--memory", "256M")
    kiwi("start", cid)
    put_file(kiwi, cid, static_program("pid_reuse"), "/pid_reuse")
    hold = static_program("hold")
    inside = subprocess.Popen(
        [*kiwi.cmd, "attach", cid, "--", "/pid_reuse"], env=kiwi.env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    holder = None
    watchdog = threading.Timer(300, lambda: [p.kill() for p in (inside, holder) if p is not None])
    watchdog.start()  # a step that never comes: readline gets EOF and the test fails
    try:
        expect(inside, "ready")
        holder = subprocess.Popen(
            [str(hold), str(handler_pid(kiwi, cid))], text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        expect(holder, "attached")
        say(inside, "go")
        caller = int(expect(inside, "caller").split()[1])
        expect(holder, "held")  # the handler checked the caller, and waits before writing
        say(inside, "kill")
        expect(inside, "reaped")
        set_last_pid(json.loads(kiwi.out("inspect", cid))["init_pid"], caller - 1)
        say(inside, "fork")
        victim = int(expect(inside, "victim").split()[1])
        assert victim == caller
        say(holder, "go on")
        expect(holder, "answered")
        say(inside, "check")
        assert expect(inside, "") == "intact\n"
        assert inside.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        for proc in (holder, inside):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kiwi.sh(cid, "free -k | grep Mem:").stdout.split()[1] == str(256 * 1024)  # still answers
