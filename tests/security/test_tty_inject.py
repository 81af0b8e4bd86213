"""Issue 12 item 2: a container cannot type into the admin's terminal (TIOCSTI, /dev/tty).

A host-side bash on a real PTY (pexpect) runs kiwi the ways an admin would;
inject.c, in the container, pushes `touch <marker>` into every terminal it can
reach through fds 0-2 and /dev/tty (this host has dev.tty.legacy_tiocsti=1).
Had it reached the admin's terminal, bash would run it once kiwi ended.
"""

from __future__ import annotations

import re

import pexpect
import pytest

from .helpers import put_file

PROMPT = "host$ "


@pytest.fixture
def host_shell(kiwi, busybox, terminals, static_program, tmp_path):
    """(container, a bash on a terminal of its own, the marker its injected line would create)."""
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    put_file(kiwi, cid, static_program("inject"), "/inject")
    shell = terminals("/bin/bash", ["--norc", "--noprofile"], {**kiwi.env, "PS1": PROMPT})
    shell.expect_exact(PROMPT)
    return cid, shell, tmp_path / "host-marker"


def run(shell, line: str) -> str:
    """Run one line in the host shell; returns what it printed before the next prompt."""
    shell.sendline(line)
    shell.expect_exact(PROMPT)
    return shell.before


def settle(shell) -> None:
    """Whatever was pushed into the host terminal's input has run once this returns."""
    shell.sendline("echo SETTLED-$((40+2))")
    shell.expect_exact("SETTLED-42")
    shell.expect_exact(PROMPT)


def stty_state(shell, tmp_path, name: str) -> str:
    run(shell, f"stty -a > {tmp_path / name}")
    return (tmp_path / name).read_text()


def shows_container_tty(out: str) -> bool:
    """A line that is exactly /dev/pts/<n> (terminal control sequences aside)."""
    plain = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", out)
    return any(re.fullmatch(r"/dev/pts/\d+", line.strip()) for line in plain.splitlines())


def kiwi_line(kiwi) -> str:
    return " ".join(kiwi.cmd)


def test_injection_from_a_command_on_the_terminal(kiwi, host_shell, tmp_path):
    cid, shell, marker = host_shell
    before = stty_state(shell, tmp_path, "before")
    out = run(shell, f"{kiwi_line(kiwi)} attach {cid} -- /inject 'touch {marker}'; echo STATUS=$?")
    settle(shell)
    assert not marker.exists(), out
    # It did type: into the container's own PTY, which nobody reads afterwards.
    assert "fd 0: injected" in out and "/dev/tty: injected" in out, out
    assert "STATUS=0" in out
    assert stty_state(shell, tmp_path, "after") == before


def test_injection_with_redirected_stdin(kiwi, host_shell, tmp_path):
    """stdin is no terminal, stdout and stderr are the admin's: they reach the container as pipes."""
    cid, shell, marker = host_shell
    out = run(shell, f"{kiwi_line(kiwi)} attach {cid} -- /inject 'touch {marker}' < /dev/null")
    settle(shell)
    assert not marker.exists(), out
    for target in ("fd 0", "fd 1", "fd 2"):
        assert f"{target}: Inappropriate ioctl for device" in out, out
    assert "/dev/tty: No such device or address" in out, out  # no controlling terminal at all


def test_injection_from_a_direct_shell(kiwi, host_shell, tmp_path):
    cid, shell, marker = host_shell
    before = stty_state(shell, tmp_path, "before")
    shell.sendline(f"{kiwi_line(kiwi)} attach {cid} --direct; echo STATUS=$?")
    shell.expect_exact("# ")  # the container's shell
    shell.sendline(f"/inject 'touch {marker}'; tty; exit 7")
    shell.expect(r"STATUS=(\d+)")
    assert shell.match.group(1) == "7"
    out = shell.before
    shell.expect_exact(PROMPT)
    settle(shell)
    assert not marker.exists(), out
    assert shows_container_tty(out), out
    assert stty_state(shell, tmp_path, "after") == before


def test_terminal_inside_is_the_containers_own(kiwi, host_shell):
    cid, shell, _ = host_shell
    out = run(
        shell, f"{kiwi_line(kiwi)} attach {cid} -- sh -c 'tty; ls -l /proc/self/fd/0; exit 7'; echo STATUS=$?"
    )
    assert shows_container_tty(out), out
    assert "/proc/self/fd/0 -> /dev/pts/" in out, out
    assert "STATUS=7" in out, out


def test_window_size_follows_the_admins_terminal(kiwi, host_shell, terminals):
    cid, _, _ = host_shell
    direct = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid, "--direct"], kiwi.env, rows=21, cols=73)
    direct.expect_exact("# ")
    direct.sendline("stty size")
    direct.expect_exact("21 73")
    direct.setwinsize(33, 101)  # SIGWINCH to kiwi, which copies the size to the container's PTY
    direct.sendline("sleep 1; stty size")
    direct.expect_exact("33 101")
    direct.sendline("exit 5")
    direct.expect(pexpect.EOF)
    direct.close()
    assert direct.exitstatus == 5
