"""Issue 15: the stdio of `attach` in an unprivileged container (and as `attach -u`)
belongs to the command's user, as with Docker (its shim's pipes are the container
root's, runc hands them to the exec user): /dev/stdout, /dev/stderr and /dev/stdin
reopen. The caller's own pipe is relayed, never chowned."""

from __future__ import annotations

import os
import subprocess

import pytest

REOPEN = "echo OUT > /dev/stdout; echo ERR > /dev/stderr; cat /dev/stdin; id -u"
USERS = ([], ["-u", "nobody"])


def attach_through_our_pipes(kiwi, cid: str, user: list[str]) -> tuple[subprocess.CompletedProcess, list]:
    """Run REOPEN with stdin, stdout and stderr pipes of this process; returns the
    outcome and the owners of those pipes afterwards."""
    pipes = [os.pipe() for _ in range(3)]
    proc = subprocess.Popen(
        kiwi.cmd + ["attach", cid, *user, "--", "sh", "-c", REOPEN],
        stdin=pipes[0][0],
        stdout=pipes[1][1],
        stderr=pipes[2][1],
        env=kiwi.env,
    )
    os.close(pipes[0][0])
    os.close(pipes[1][1])
    os.close(pipes[2][1])
    os.write(pipes[0][1], b"IN\n")
    owners = [os.fstat(fd).st_uid for fd in (pipes[0][1], pipes[1][0], pipes[2][0])]
    os.close(pipes[0][1])
    with os.fdopen(pipes[1][0]) as out, os.fdopen(pipes[2][0]) as err:
        stdout, stderr = out.read(), err.read()
    code = proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, code, stdout, stderr), owners


@pytest.mark.parametrize("privileged", ["no", "yes"])
def test_stdio_reopens_as_root_and_as_another_user(kiwi, busybox, tmp_path, privileged):
    cid = kiwi.create(busybox)
    kiwi("set", cid, "--privileged", privileged)
    kiwi("start", cid)
    for user in USERS:
        uid = "65534" if user else "0"
        done, owners = attach_through_our_pipes(kiwi, cid, user)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"OUT\nIN\n{uid}\n", "ERR\n"), (user, done)
        assert owners == [0, 0, 0], (user, owners)  # the caller's pipes are never chowned
        # Kiwi's own pipes (output to a file, input from one).
        (tmp_path / "in").write_text("IN\n")
        with open(tmp_path / "in") as stdin, open(tmp_path / "out", "w") as stdout:
            done = subprocess.run(
                kiwi.cmd + ["attach", cid, *user, "--", "sh", "-c", REOPEN],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=kiwi.env,
                text=True,
                timeout=60,
            )
        assert (done.returncode, done.stderr) == (0, "ERR\n"), (user, done)
        assert (tmp_path / "out").read_text() == f"OUT\nIN\n{uid}\n"
