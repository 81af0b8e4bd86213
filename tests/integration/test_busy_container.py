"""A command kept waiting for a container another kiwi holds says so: `kiwi attach` of a
stopped container behind a `kiwi cp` out of it (held mid-copy, nothing timed) tells in one
line who holds it and that Ctrl-C gives up; Ctrl-C then leaves nothing started, and a
start that waits on goes ahead once the copy is done."""

from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

from held_copy import end_copy, held_copy, resume, stopped_helper

DATA = os.urandom(64 * 1024)


def waiting_attach(kiwi, cid: str) -> tuple[subprocess.Popen, str]:
    """`kiwi attach cid -- true` and the line it says while it waits."""
    attach = subprocess.Popen(
        [*kiwi.cmd, "attach", cid, "--", "true"],
        env=kiwi.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([attach.stderr], [], [], 60)  # a hang guard, not a timing check
    assert ready, "the attach never said what it waits for"
    return attach, attach.stderr.readline()


def end_attach(attach: subprocess.Popen | None) -> None:
    if attach is not None and attach.poll() is None:
        attach.kill()
        attach.wait()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def test_a_start_behind_a_copy_says_why_it_waits(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox, "--name", "web")
    (tmp_path / "data").write_bytes(DATA)
    kiwi("cp", tmp_path / "data", f"{cid}:/data")
    copy, helper, attach = held_copy(kiwi, f"{cid}:/data", str(tmp_path / "out")), None, None
    try:
        _, helper = stopped_helper(kiwi, copy)
        attach, line = waiting_attach(kiwi, cid)
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

        attach, line = waiting_attach(kiwi, cid)  # this one waits on: the copy is done first
        assert "Ctrl-C gives up" in line
        out, err = resume(copy, helper)
        assert copy.returncode == 0, (out, err)
        out, err = attach.communicate(timeout=120)
        assert attach.returncode == 0 and err == "", (out, err)
    finally:
        end_attach(attach)
        end_copy(copy, helper)
    assert (tmp_path / "out").read_bytes() == DATA
    assert kiwi.json("list")[0]["status"] == "running"
    kiwi("stop", cid)
