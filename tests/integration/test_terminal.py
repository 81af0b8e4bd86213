"""`kiwi terminal`: the interactive console, driven on a real PTY (pexpect)
against the frozen binary. Every console is closed even when a test fails;
containers are stopped and removed by the `kiwi` fixture's teardown."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

import pexpect
import pytest

from kiwi import terminal
from kiwi.errors import KiwiError

PROMPT = "kiwi> "
CTRL_C, CTRL_D, CTRL_U, CTRL_BACKSLASH = "\x03", "\x04", "\x15", "\x1c"
UP = "\x1b[A"
CTRL_A, CTRL_E = "\x01", "\x05"
CURSOR_UP = "\x1b[A"  # xterm's cursor-up, the same bytes as the Up key


@contextlib.contextmanager
def console(kiwi, timeout: float = 60):
    child = pexpect.spawn(
        kiwi.cmd[0],
        kiwi.cmd[1:] + ["terminal"],
        env={**kiwi.env, "TERM": "xterm"},
        dimensions=(40, 120),
        encoding="utf-8",
        timeout=timeout,
    )
    try:
        child.expect_exact(PROMPT)
        yield child
    finally:
        child.close(force=True)


def leave(child) -> int:
    """Ctrl-D on an empty line; returns the console's exit status."""
    child.send(CTRL_U + CTRL_D)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def run_line(child, line: str) -> str:
    """Type a line, wait for the next prompt, return what was printed in between."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def unique_prefix(cid: str, others: list[str]) -> str:
    for n in range(1, len(cid) + 1):
        if not any(o.startswith(cid[:n]) for o in others):
            return cid[:n]
    raise AssertionError(f"{cid} is not unique among {others}")


# --- start-up -------------------------------------------------------------------------


def test_without_a_terminal_is_a_clear_error(kiwi):
    done = kiwi("terminal", check=False, input="list\n")
    assert done.returncode == 1
    assert "kiwi: kiwi terminal needs an interactive terminal" in done.stderr


def test_not_root_without_sudo_is_a_clear_error(kiwi, tmp_path):
    """As nobody, with no sudo on PATH: one `kiwi:` line about sudo, exit 1."""
    cache = tempfile.mkdtemp(prefix="kiwi-nobody-", dir="/tmp")  # where the launcher unpacks for nobody
    os.chown(cache, 65534, 65534)
    env = {**kiwi.env, "PATH": str(tmp_path), "XDG_CACHE_HOME": cache}  # PATH: an empty folder, no sudo
    child = pexpect.spawn(
        "/usr/bin/setpriv",
        ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *kiwi.cmd, "terminal"],
        env=env,
        dimensions=(40, 120),
        encoding="utf-8",
        timeout=60,
    )
    try:
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1
        assert re.search(r"kiwi: .*sudo", child.before), child.before
        assert PROMPT not in child.before
    finally:
        child.close(force=True)
        shutil.rmtree(cache, ignore_errors=True)


def test_reexec_through_sudo_keeps_kiwi_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(terminal.shutil, "which", lambda name: "/usr/bin/sudo")
    monkeypatch.setattr(terminal.os, "execvp", lambda path, argv: calls.append((path, argv)))
    monkeypatch.setattr(terminal.sys, "frozen", True, raising=False)
    monkeypatch.setattr(terminal.sys, "executable", "/opt/kiwi/kiwi")
    terminal.reexec_with_sudo()
    path, argv = calls[0]
    assert path == "/usr/bin/sudo"
    assert argv[0] == "/usr/bin/sudo" and argv[-2:] == ["/opt/kiwi/kiwi", "terminal"]
    preserved = argv[1].removeprefix("--preserve-env=").split(",")
    assert set(preserved) >= {
        "KIWI_ROOT",
        "KIWI_SUBNET",
        "KIWI_BRIDGE",
        "KIWI_CGROUP_PARENT",
        "KIWI_IMAGE_SERVER",
        "TERM",
    }


def test_missing_sudo_is_a_kiwi_error(monkeypatch):
    monkeypatch.setattr(terminal.shutil, "which", lambda name: None)
    with pytest.raises(KiwiError, match="sudo is not installed"):
        terminal.reexec_with_sudo()


# --- line editing, completion, history -----------------------------------------------------


def test_tab_completes_a_command_name_and_ctrl_d_exits_zero(kiwi):
    with console(kiwi) as child:
        child.send("cre\t")
        child.expect_exact("create ")
        child.send(CTRL_U + "ip --he\t")
        child.expect_exact("--help ")
        child.send(CTRL_U + "sta" + CTRL_C)  # Ctrl-C cancels the line, not the console
        child.expect_exact(PROMPT)
        assert leave(child) == 0


def test_tab_completes_container_ids_and_image_names(kiwi, busybox):
    first, second = kiwi.create("busybox"), kiwi.create("busybox", "--name", "web")
    prefix = unique_prefix(first, [second])
    with console(kiwi) as child:
        child.send(f"set {prefix}\t")
        child.expect_exact(f"{first} ")
        child.send(CTRL_U + "stop we\t")
        child.expect_exact("web ")
        child.send(CTRL_U + "create bu\t")
        child.expect_exact("busybox ")
        child.send(CTRL_U + "set web --net\t")
        child.expect_exact("--network ")
        child.send("se\t")
        child.expect_exact("separate ")
        # The completed line is a real command line.
        child.send(CTRL_U + f"ip {prefix}\t\r")
        child.expect_exact(PROMPT)
        assert kiwi.out("ip", first) in child.before
        assert leave(child) == 0


def test_history_survives_a_restart(kiwi):
    with console(kiwi) as child:
        run_line(child, "list images")
        run_line(child, "help stop")
        assert leave(child) == 0
    history = kiwi.root / ".terminal_history"
    assert history.stat().st_mode & 0o777 == 0o600
    with console(kiwi) as child:
        child.send(UP)
        child.expect_exact("help stop")
        child.send(UP)
        child.expect_exact("list images")
        assert leave(child) == 0


# --- errors do not end the console ----------------------------------------------------------


def test_quoting_error_and_unknown_command_are_reported_not_fatal(kiwi):
    with console(kiwi) as child:
        assert "kiwi: no closing quotation" in run_line(child, 'ip "web')
        assert "kiwi: unknown command 'frobnicate'" in run_line(child, "frobnicate --now")
        assert "kiwi: no container named or starting with" in run_line(child, "ip nosuch")
        assert "kiwi: you are already in the Kiwi terminal" in run_line(child, "terminal")
        assert "usage: kiwi stop" in run_line(child, "stop --help")  # argparse exits; we do not
        assert "kiwi: " in run_line(child, "set")  # usage error
        assert "list containers and images" in run_line(child, "help")
        assert leave(child) == 0


def test_delete_asks_in_the_console_and_the_answer_stays_out_of_history(kiwi, busybox):
    cid = kiwi.create("busybox")
    with console(kiwi) as child:
        child.sendline(f"delete {cid}")
        child.expect_exact("[y/N] ")
        child.sendline("n")
        child.expect_exact("not deleted")
        child.expect_exact(PROMPT)
        assert leave(child) == 0
    lines = (kiwi.root / ".terminal_history").read_text().splitlines()
    assert lines == [f"delete {cid}"]
    assert kiwi.out("ip", cid)  # still there


# --- attach from the console ----------------------------------------------------------------


def test_attach_with_a_command_returns_to_the_prompt(kiwi, busybox):
    cid = kiwi.create("busybox", "--name", "box")
    with console(kiwi) as child:
        out = run_line(child, "attach box -- sh -c 'echo hi-from-$((40+2))'")
        assert "hi-from-42" in out
        # The console still reads, edits and completes lines after the command.
        child.send("ip bo\t")
        child.expect_exact("box ")
        child.send("\r")
        child.expect_exact(PROMPT)
        assert kiwi.out("ip", cid) in child.before
        assert leave(child) == 0


def test_attach_session_detach_returns_to_the_prompt(kiwi, busybox):
    kiwi.create("busybox", "--name", "box")
    with console(kiwi) as child:
        child.sendline("attach box")
        child.expect(r"[#$] ")
        child.sendline("echo in-$((6*7))-session")
        child.expect_exact("in-42-session")
        child.send(CTRL_BACKSLASH)
        child.expect_exact(PROMPT)
        child.send("cre\t")  # readline works again: completion and redraw
        child.expect_exact("create ")
        assert "box" in run_line(child, CTRL_U + "list")
        assert_readline_follows_resize(child)
        assert leave(child) == 0
    sessions = kiwi.out("sessions", "box")
    assert re.search(r"\b(idle|running)\b", sessions), sessions


def assert_readline_follows_resize(child) -> None:
    """The session client saved and restored SIGWINCH; readline must still see a resize:
    a 50-character line in a 30-column window wraps, so going to its start moves up."""
    child.setwinsize(40, 30)
    child.send("x" * 50)
    child.expect_exact("x" * 20)
    child.send(CTRL_A)
    child.expect_exact(CURSOR_UP)
    child.send(CTRL_E + CTRL_U)
    child.setwinsize(40, 120)
