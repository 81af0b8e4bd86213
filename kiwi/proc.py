"""Small process helpers: a process's identity (/proc/<pid>/stat) and its exit status.

Below the runtime: the runtime, the runtime records, the stdio relay and the
session daemon all use them, so this module imports nothing of kiwi.
"""

from __future__ import annotations

import os


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (None for a gone or zombie process): tells a live
    process from a recycled pid."""
    fields = stat_fields(pid)
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def pid_alive(pid: int) -> bool:
    """A zombie (killed a moment ago, not yet reaped) is dead too."""
    return process_start_time(pid) is not None


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ...
    (the name itself may hold spaces and parentheses, so split after the last ')')."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def exit_code_of(wstatus: int) -> int:
    """The shell's convention: the exit status, or 128+n when killed by signal n."""
    if os.WIFSIGNALED(wstatus):
        return 128 + os.WTERMSIG(wstatus)
    return os.waitstatus_to_exitcode(wstatus)


def wait_exit_code(pid: int) -> int:
    while True:
        try:
            return exit_code_of(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue
