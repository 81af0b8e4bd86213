"""A `kiwi cp` held mid-copy, with nothing timed: strace injects SIGSTOP into the copy
helper's first copy_file_range (the file data being copied), once the container's view
is mounted in its work folder; the test resumes it with SIGCONT."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def held_copy(kiwi, source: Path, dest: str) -> subprocess.Popen:
    """`kiwi cp source dest`, its helper stopped once its work folder is mounted."""
    return subprocess.Popen(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range"]
        + ["-e", "inject=copy_file_range:signal=SIGSTOP:when=1"]
        + [*kiwi.cmd, "cp", str(source), dest],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stopped_helper(kiwi, copy: subprocess.Popen) -> tuple[Path, int]:
    """The work folder of the held copy and its helper's pid, once the container's root is
    mounted there: the helper cannot unmount it before its first copy_file_range."""
    deadline = time.monotonic() + 60  # a hang guard, not a timing check
    while time.monotonic() < deadline:
        assert copy.poll() is None, copy.communicate()
        for work in (kiwi.root / ".tmp").glob("cp-*"):
            pid = int(work.name.split("-")[1])
            if state_of(pid) is not None and mounted_in(pid, work / "merged"):
                return work, pid
        time.sleep(0.05)
    raise AssertionError("the copy's helper never mounted its work folder")


def resume(copy: subprocess.Popen, helper: int) -> tuple[str, str]:
    """SIGCONT until the copy ends: one sent before the injected SIGSTOP is lost."""
    deadline = time.monotonic() + 120  # a hang guard
    while copy.poll() is None and time.monotonic() < deadline:
        if state_of(helper) is not None:
            os.kill(helper, signal.SIGCONT)
        time.sleep(0.05)
    return copy.communicate(timeout=60)


def state_of(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def mounted_in(pid: int, path: Path) -> bool:
    return any(
        line.split()[4] == str(path) for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    )


def end_copy(copy: subprocess.Popen, helper: int | None) -> None:
    """On a failure: the held helper killed, the copy and its strace waited for."""
    if copy.poll() is None:
        if helper is not None and state_of(helper) is not None:
            os.kill(helper, signal.SIGKILL)
        try:
            copy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            copy.kill()
            copy.wait()
