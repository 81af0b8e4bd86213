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
            time.sleep(0.01)  # the lock's release is seen within 10 ms
    notice(f"{what} is busy: {lock_holder(fd)} holds it; waiting for it to finish (Ctrl-C gives up)")
    fcntl.flock(fd, fcntl.LOCK_EX)


def lock_holder(fd: int) -> str:
    """Who holds the flock on fd's file, as /proc/locks and the holder's command line say:
    'kiwi cp web:/srv /tmp (pid 4242)'; 'another kiwi' when the kernel does not tell.
    /proc/locks names the process that took the lock; the caller prints the line through
    errors.printable, so no command line reaches the terminal raw."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pid = flock_taker(key)
    if pid is None:
        return "another kiwi"
    try:
        process = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # the process that took it is gone; a child it left (resize2fs) holds it on
        return "another kiwi"
    try:
        if not holds_flock(process, key):
            return "another kiwi"
        argv = read_cmdline(process)
    except OSError:
        return "another kiwi"
    finally:
        os.close(process)
    command = " ".join([os.path.basename(argv[0]), *argv[1:]]).strip()
    if len(command) > 100:
        command = command[:97] + "..."
    return f"{command or 'another kiwi'} (pid {pid})"


def flock_taker(key: str) -> int | None:
    """The pid /proc/locks gives for the flock on the file dev:ino key; read a line at a time:
    every process on the host, a container's too, adds lines to that file."""
    try:
        with open("/proc/locks") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; a waiter's says "1: -> FLOCK ..."
                w = line.split()
                if len(w) > 5 and w[1] == "FLOCK" and w[5] == key:
                    pid = int(w[4])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


MAX_FDS_LOOKED_AT = 1024  # a kiwi holds a few dozen; past these, we name no one


def holds_flock(process: int, key: str) -> bool:
    """Whether the process of the /proc/PID folder open at `process` has an fd holding the
    flock on key: its fdinfo lists the locks held through each fd. /proc/locks gives the pid
    of the process that took the lock, which may have exited, leaving it to a child, and
    that pid may since name anyone (a container's process, another user's setuid program)
    whose command line would be shown as the holder. The folder stays that process's."""
    fdinfo = os.open("fdinfo", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=process)
    try:
        with os.scandir(fdinfo) as entries:
            for looked, entry in enumerate(entries):
                if looked >= MAX_FDS_LOOKED_AT:
                    return False
                if fdinfo_holds(fdinfo, entry.name, key):
                    return True
    finally:
        os.close(fdinfo)
    return False


def fdinfo_holds(fdinfo: int, name: str, key: str) -> bool:
    """Whether /proc/PID/fdinfo/<name> shows a flock on key ("lock:\t1: FLOCK ... <pid> <key> ...")."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fdinfo)
    except OSError:  # that fd was closed meanwhile
        return False
    try:
        text = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        w = line.split()
        if len(w) > 6 and w[0] == "lock:" and w[2] == "FLOCK" and w[6] == key:
            return True
    return False


def read_cmdline(process: int) -> list[str]:
    fd = os.open("cmdline", os.O_RDONLY | os.O_CLOEXEC, dir_fd=process)
    try:
        return os.read(fd, 4096).decode(errors="replace").split("\0")
    finally:
        os.close(fd)
