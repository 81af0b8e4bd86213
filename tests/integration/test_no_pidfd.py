"""The frozen kiwi on a kernel without pidfd_open (before 5.3), made real on this one:
tests/no_pidfd.py's seccomp filter makes the syscall fail with ENOSYS for kiwi and all it
starts. A start, `attach -- cmd` (the full path and the quick one, output and input
relayed, the exit status passed through) and `stop` (quick and full, an init that ignores
SIGTERM) still work and leave nothing behind; a runtime record whose init pid another
process now holds (the init gone, its pid reused) gets that process neither entered nor
signalled. Before the relay's SIGCHLD fallback every `attach -- cmd` here said
`kiwi: Function not implemented`. tests/unit/test_no_pidfd.py checks each fallback's own
guard against a reused pid."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_quick_stop import CLEAN, leftovers, record_of

WRAPPER = Path(__file__).parent.parent / "no_pidfd.py"


@pytest.fixture
def old_kernel(kiwi):
    """The test's kiwi, run under the filter."""
    wrapped = copy.copy(kiwi)
    wrapped.cmd = [sys.executable, str(WRAPPER), *kiwi.cmd]
    refused = subprocess.run(
        [*wrapped.cmd[:2], sys.executable, "-c", "import os; os.pidfd_open(os.getpid())"],
        capture_output=True,
        text=True,
    )
    assert "Function not implemented" in refused.stderr, refused  # the filter holds
    return wrapped


def test_attach_and_stop_without_pidfd_open(old_kernel, busybox):
    kiwi = old_kernel
    cid = kiwi.create(busybox, "--name", "old")
    assert kiwi.out("attach", cid, "--", "echo", "started") == "started"  # a start, then cmd_attach
    assert kiwi("attach", cid, "--", "sh", "-c", "exit 7", check=False).returncode == 7  # the quick path
    assert kiwi.out("attach", cid, "--", "cat", input="through\n") == "through"
    assert kiwi.out("attach", "--direct", cid, "--", "hostname") == "old"
    record = record_of(kiwi, cid)
    assert kiwi.out("stop", cid) == f"stopped {cid}"
    assert leftovers(kiwi, cid, record) == CLEAN

    # An init that ignores SIGTERM: its exit is polled for, then it is killed.
    kiwi.sh(cid, "trap '' TERM; (trap '' TERM; sleep 1000) >/dev/null 2>&1 & sleep 0.2; exit 0")
    record = record_of(kiwi, cid)
    assert kiwi.out("stop", cid, "--time", "1") == f"stopped {cid}"
    assert leftovers(kiwi, cid, record) == CLEAN

    # The full stop (session files: only sessions.stop_all ends them).
    kiwi("start", cid)
    record = record_of(kiwi, cid)
    (kiwi.root / "mounts" / cid / "sessions").mkdir(mode=0o700)
    assert kiwi.out("stop", cid) == f"stopped {cid}"
    assert leftovers(kiwi, cid, record) == CLEAN


def test_a_reused_init_pid_is_neither_entered_nor_signalled(old_kernel, busybox):
    kiwi = old_kernel
    cid = kiwi.create(busybox, "--name", "old")
    kiwi("start", cid)
    record = record_of(kiwi, cid)
    other = subprocess.Popen(["sleep", "600"])  # the host process that now holds "the init's" pid
    try:
        path = kiwi.root / "mounts" / cid / "runtime.json"
        path.write_text(json.dumps({**record, "init_pid": other.pid}))  # the recorded start time stays
        assert kiwi.out("stop", cid) == f"{cid} is not running"  # what is left of it goes
        assert leftovers(kiwi, cid, record) == CLEAN
        assert other.poll() is None  # not signalled

        kiwi("start", cid)
        record = record_of(kiwi, cid)
        path.write_text(json.dumps({**record, "init_pid": other.pid}))
        # A new start, and the command in it: never in the namespaces of the pid's new owner.
        assert kiwi.out("attach", cid, "--", "hostname") == "old"
        assert leftovers(kiwi, cid, record)["init alive"] is False
        assert other.poll() is None
        kiwi("stop", cid)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
