"""Issue 12 item 1: a container cannot rewrite the kiwi binary (the runc CVE-2019-5736 class).

The attack, as a hostile image would run it: the container's shells become
`#!/proc/self/exe` scripts, so whatever process execs them makes the kernel run
that process's own executable again inside the container; watcher.c waits
there, grabs /proc/<pid>/exe of every process it can, and once nothing runs it
any more rewrites it with a script that creates a marker file. The "admin" is a
COPY of the frozen kiwi (the binary under test is never put at risk) that
enters the container the three ways there are: a one-shot command, --direct
and a session. Debian image: the one-file kiwi needs a dynamic loader to start
inside, which is exactly what made the attack work before kiwi-exec.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from .helpers import put_file

MEMFD = "/memfd:kiwi-exec (deleted)"
DASH = "/usr/bin/dash"  # the real shell, kept for the test's own commands
# /usr/bin/sh and bash become the trap; bash stays reachable as bash.real.
SET_TRAPS = (
    "rm /usr/bin/sh && printf '#!/proc/self/exe\\n' > /usr/bin/sh && chmod 755 /usr/bin/sh"
    " && mv /usr/bin/bash /usr/bin/bash.real && cp /usr/bin/sh /usr/bin/bash"
)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def trap(kiwi, debian_tar, static_program, tmp_path):
    """A Debian container with trapped shells and the watcher running; returns (cid, admin, marker)."""
    kiwi("import", "--name", "debian", debian_tar, timeout=600)
    cid = kiwi.create("debian")
    kiwi("attach", cid, "--", "true")
    put_file(kiwi, cid, static_program("watcher"), "/watcher")
    kiwi("attach", cid, "--", DASH, "-c", SET_TRAPS)
    marker = tmp_path / "host-marker"
    kiwi("attach", cid, "--", DASH, "-c", f"/watcher /watch.log {marker} </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: "READY" in watch_log(kiwi, cid))
    admin = tmp_path / "admin-kiwi"
    shutil.copy2(kiwi.cmd[0], admin)
    return cid, admin, marker


def watch_log(kiwi, cid: str) -> str:
    return kiwi("attach", cid, "--", DASH, "-c", "cat /watch.log 2>/dev/null", check=False).stdout


def as_admin(kiwi, admin, *args, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(admin), *args], input=input, capture_output=True, text=True, env=kiwi.env, timeout=120
    )


def test_trapped_shell_cannot_rewrite_the_kiwi_binary(kiwi, trap):
    cid, admin, marker = trap
    before = sha256(admin)
    # The watcher only sees kiwi-exec in the moment between a trapped exec and
    # its first instruction; a few rounds give it that moment.
    for _ in range(40):
        as_admin(kiwi, admin, "attach", cid, "--", "sh", "-c", "true")
        if f"DENIED {MEMFD}" in watch_log(kiwi, cid):
            break
    as_admin(kiwi, admin, "attach", cid, "--direct", input="true\n")  # the shell: bash, trapped
    as_admin(kiwi, admin, "attach", cid, input="exit\n")  # a session's shell, trapped
    time.sleep(1)  # every kiwi process has ended: the watcher's moment to write
    as_admin(kiwi, admin, "list")  # the admin's next command would run the payload

    log = watch_log(kiwi, cid)
    assert sha256(admin) == before, log
    assert not marker.exists(), log
    assert "WROTE" not in log, log
    assert f"SAW {MEMFD}" in log and f"DENIED {MEMFD}" in log, log
    seen = [line.split(" ", 1)[1] for line in log.splitlines() if line.startswith("SAW ")]
    assert all(link == MEMFD or link.startswith("/usr/") for link in seen), log  # never a host file


def kiwi_exec_processes(tag: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if tag.encode() in argv and comm == "kiwi-exec":
            found.append(int(name))
    return found


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_entering_processes_run_from_a_sealed_memfd_outside_the_pid_namespace(kiwi, busybox):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    # sleep's seconds, and this run's alone: kiwi_exec_processes scans the whole host, where
    # another checkout's run of this very test may be entering its own container meanwhile.
    tag = f"31.{os.getpid()}{time.monotonic_ns() % 10**6}"
    proc = subprocess.Popen(
        kiwi.cmd + ["attach", cid, "--", "sleep", tag],
        env=kiwi.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: len(kiwi_exec_processes(tag)) == 1)
        helper = kiwi_exec_processes(tag)[0]
        assert os.readlink(f"/proc/{helper}/exe") == MEMFD
        # The helper's parent is kiwi itself, on the host side: nothing in between
        # (the one-file launcher execs the unpacked kiwi, so the pid is the one we started).
        assert parent_of(helper) == proc.pid
        assert os.readlink(f"/proc/{helper}/ns/pid") == os.readlink("/proc/self/ns/pid")

        def children() -> list[str]:
            return [p for p in os.listdir("/proc") if p.isdigit() and parent_of_safe(int(p)) == helper]

        # kiwi-exec shows its argv before it has forked the command: wait for the fork.
        wait_for(lambda: len(children()) == 1)
        command = children()
        assert len(command) == 1
        assert os.readlink(f"/proc/{command[0]}/ns/pid") != os.readlink("/proc/self/ns/pid")
    finally:
        proc.terminate()  # kiwi passes SIGTERM on through kiwi-exec to the command
        assert proc.wait(timeout=30) == 128 + 15


def parent_of_safe(pid: int) -> int | None:
    try:
        return parent_of(pid)
    except (OSError, IndexError):
        return None
