"""The busy-container notice names the process holding a container's lock, from /proc/locks
and that process's command line. /proc/locks gives the pid of the process that *took* the
lock; when it has exited and left the lock to a child (as resize2fs is left), that pid is
free for anyone: a container's process, another user's setuid program, each with a command
line of its own making, which the notice must not show as the holder. The test hands the
pid over with the host's ns_last_pid: a PID namespace of its own would not do, /proc/locks
there names a holder through its host pid (freed: no one), only the host's gives it raw.
Another process of the machine may take the pid first: the test tries again a few times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

REUSE = """
import fcntl, os, sys
sys.path.insert(0, sys.argv[2])
from kiwi import lockwait

path = sys.argv[1]
stay_r, stay_w = os.pipe()  # the child holding the lock and the liar wait for its EOF
taker = os.fork()
if taker == 0:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fork() == 0:
        os.close(stay_w)
        os.read(stay_r, 1)
    os._exit(0)
os.waitpid(taker, 0)  # the taker is gone, its child holds the lock on
for attempt in range(50):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(taker - 1))  # the next process made gets the taker's pid
    liar = os.fork()
    if liar == 0:
        os.dup2(stay_r, 0)
        os.execv("/bin/sh", ["kiwi", "-c", "read x", "cp", "web:/etc/shadow", "/tmp"])
    if liar == taker:
        break
    os.kill(liar, 9)
    os.waitpid(liar, 0)
os.close(stay_r)
print("reused", liar == taker, flush=True)
fd = os.open(path, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("holder", lockwait.lock_holder(fd), flush=True)
os.close(stay_w)
os.waitpid(liar, 0)
"""


def test_a_reused_pid_of_the_lock_taker_is_not_named(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", REUSE, str(tmp_path / "c.lock"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "reused True", done.stdout  # the taker's pid is the liar's now
    assert lines[1] == "holder another kiwi", done.stdout
