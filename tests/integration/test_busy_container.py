"""A command kept waiting for a container another kiwi holds says so: `kiwi attach` of a
stopped container behind a `kiwi cp` out of it (held mid-copy, nothing timed) tells in one
line who holds it and that Ctrl-C gives up; Ctrl-C then leaves nothing started, and a
start that waits on goes ahead once the copy is done. The quick `kiwi stop` (its own
flock) tells the same."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from held_copy import end_copy, held_copy, resume, stopped_helper

DATA = os.urandom(64 * 1024)


def waiting_command(kiwi, *args: str) -> tuple[subprocess.Popen, str]:
    """`kiwi args` and the line it says while it waits."""
    command = subprocess.Popen(
        [*kiwi.cmd, *args],
        env=kiwi.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([command.stderr], [], [], 60)  # a hang guard, not a timing check
    assert ready, f"kiwi {args[0]} never said what it waits for"
    return command, command.stderr.readline()


def end_command(command: subprocess.Popen | None) -> None:
    if command is not None and command.poll() is None:
        command.kill()
        command.wait()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def test_a_start_behind_a_copy_says_why_it_waits(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox, "--name", "web")
    (tmp_path / "data").write_bytes(DATA)
    kiwi("cp", tmp_path / "data", f"{cid}:/data")
    copy, helper, attach = held_copy(kiwi, f"{cid}:/data", str(tmp_path / "out")), None, None
    try:
        _, helper = stopped_helper(kiwi, copy)
        attach, line = waiting_command(kiwi, "attach", cid, "--", "true")
        assert line.startswith("kiwi: container web is busy: ") and line.endswith(
            "holds it; waiting for it to finish (Ctrl-C gives up)\n"
        ), line
        holder = int(line.split("(pid ")[1].split(")")[0])
        assert cmdline(holder)[1:3] == ["cp", f"{cid}:/data"], line
        assert f"kiwi cp {cid}:/data {tmp_path / 'out'} (pid {holder})" in line

        attach.send_signal(signal.SIGINT)  # Ctrl-C: it gives up, and nothing was started
        out, err = attach.communicate(timeout=60)
        assert attach.returncode == 130 and err == "kiwi: interrupted\n", (out, err)
        assert kiwi.json("list")[0]["status"] == "stopped"

        attach, line = waiting_command(
            kiwi, "attach", cid, "--", "true"
        )  # this one waits on: the copy is done first
        assert "Ctrl-C gives up" in line
        out, err = resume(copy, helper)
        assert copy.returncode == 0, (out, err)
        out, err = attach.communicate(timeout=120)
        assert attach.returncode == 0 and err == "", (out, err)
    finally:
        end_command(attach)
        end_copy(copy, helper)
    assert (tmp_path / "out").read_bytes() == DATA
    assert kiwi.json("list")[0]["status"] == "running"
    kiwi("stop", cid)


HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_stop_behind_another_kiwi_says_why_it_waits(kiwi, busybox):
    """The quick stop (os alone, its own flock) tells as the Store's lock does; the holder
    here stands in for a long `kiwi snap` or `set --storage` of the running container."""
    cid = kiwi.create(busybox, "--name", "web")
    kiwi("start", cid)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(kiwi.root / ".locks" / f"{cid}.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = None
    try:
        assert holder.stdout.readline() == "held\n"
        stop, line = waiting_command(kiwi, "stop", "web")
        assert line.startswith(f"kiwi: container web is busy: {os.path.basename(sys.executable)} -c ")
        assert line.endswith(f"(pid {holder.pid}) holds it; waiting for it to finish (Ctrl-C gives up)\n")
        stop.send_signal(signal.SIGINT)
        out, err = stop.communicate(timeout=60)
        assert stop.returncode == 130 and err == "kiwi: interrupted\n", (out, err)
        assert kiwi.json("list")[0]["status"] == "running"

        stop, line = waiting_command(kiwi, "stop", "web")
        holder.stdin.close()  # done: the stop goes on
        out, err = stop.communicate(timeout=120)
        assert (stop.returncode, out, err) == (0, f"stopped {cid}\n", ""), (out, err)
    finally:
        end_command(stop)
        holder.kill()
        holder.wait()
    assert kiwi.json("list")[0]["status"] == "stopped"
