"""A wait for a lock another kiwi holds, told to the person waiting: after a moment, one
line that names the holder (its command and pid, from /proc/locks) and says that Ctrl-C
gives up. os and fcntl alone: the quick stop waits through it too."""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable

LOCK_PATIENCE = 0.5  # seconds a command waits for a busy container quietly, before it says so


def wait_telling(fd: int, what: str, notice: Callable[[str], None]) -> None:
    """An exclusive flock on fd; when another process still holds it after LOCK_PATIENCE,
    notice says who and that Ctrl-C gives up (nothing is done before the lock is held)."""
    import time

    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    notice(f"{what} is busy: {lock_holder(fd)} holds it; waiting for it to finish (Ctrl-C gives up)")
    fcntl.flock(fd, fcntl.LOCK_EX)


def lock_holder(fd: int) -> str:
    """Who holds the flock on fd's file, as /proc/locks and the holder's command line say:
    'kiwi cp web:/srv /tmp (pid 4242)'; 'another kiwi' when the kernel does not tell.
    /proc/locks names the process that took the lock; the caller prints the line through
    errors.printable, so no command line reaches the terminal raw."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; a waiter's line says "1: -> FLOCK ..."
            lines = [line.split() for line in f]
        pids = [int(w[4]) for w in lines if len(w) > 5 and w[1] == "FLOCK" and w[5] == key]
    except (OSError, ValueError):
        pids = []
    if not pids or pids[0] <= 0:
        return "another kiwi"
    try:
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            argv = f.read(4096).decode(errors="replace").split("\0")
    except OSError:  # the process that took it is gone; a child it left (resize2fs) holds it on
        return "another kiwi"
    command = " ".join([os.path.basename(argv[0]), *argv[1:]]).strip()
    if len(command) > 100:
        command = command[:97] + "..."
    return f"{command or 'another kiwi'} (pid {pids[0]})"
