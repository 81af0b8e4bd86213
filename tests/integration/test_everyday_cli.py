"""Command line polish (issue 17 item 8): did-you-mean, Docker aliases, prefixes, refusals."""

from __future__ import annotations

import socket
import subprocess

import pexpect

SESSION_LINE = r"kiwi: session ([0-9a-f]{8}) "


def one_line_error(done, code: int = 1) -> str:
    assert done.returncode == code, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("kiwi: "), done.stderr
    return done.stderr


def test_did_you_mean(kiwi):
    assert "did you mean list?" in one_line_error(kiwi("lst", check=False), 2)
    assert "did you mean attach?" in one_line_error(kiwi("atach", "c", check=False), 2)
    assert "did you mean list?" in one_line_error(kiwi("pss", check=False), 2)  # via the ps alias
    plain = one_line_error(kiwi("xyzzy", check=False), 2)
    assert "did you mean" not in plain and len(plain) < 80
    assert "ps" not in kiwi.out("--help").split()  # aliases stay hidden


def test_docker_aliases(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "dock")
    assert kiwi.json("ps") == kiwi.json("list")
    done = kiwi("exec", "-it", "dock", "sh", "-c", "echo EXEC-$((6*7)); exit 4", check=False)
    assert done.returncode == 4 and "EXEC-42" in done.stdout
    assert "exec runs a command" in one_line_error(kiwi("exec", "dock", check=False), 2)
    kiwi("stop", cid)
    assert kiwi.out("rm", "dock", "--yes") == f"deleted {cid} (dock)"
    assert kiwi.json("list") == []
    assert "busybox" in kiwi.out("rmi", "busybox")  # rmi: kiwi delete image
    assert kiwi.json("list", "images") == []


def test_session_prefixes_for_kill_and_delete(kiwi, busybox, terminals):
    cid = kiwi.create(busybox)
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid], kiwi.env)
    child.expect(SESSION_LINE)
    sid = child.match.group(1)
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    child.send("\x1c")
    child.expect(pexpect.EOF)
    assert kiwi.out("sessions", cid, "--kill", sid[:3]) == f"killed session {sid}"
    assert kiwi.json("sessions", cid)[0]["state"] == "exited"
    assert "no session ffff" in one_line_error(kiwi("sessions", cid, "--delete", "ffff", check=False))
    assert "invalid session id" in one_line_error(kiwi("sessions", cid, "--delete", "../x", check=False))
    assert kiwi.out("sessions", cid, "--delete", sid[:2]) == f"deleted session {sid}"
    assert kiwi.json("sessions", cid) == []


def test_set_shell_must_exist_inside(kiwi, busybox):
    cid = kiwi.create(busybox)
    assert "/no/such is not an executable file in image busybox" in one_line_error(
        kiwi("set", cid, "--shell", "/no/such", check=False)
    )
    assert kiwi.json("list")[0]["id"] == cid
    kiwi("set", cid, "--shell", "/bin/sh")
    # Running: looked up beneath the container's root. A symlink to a host path that the
    # container lacks (the host has /usr/bin/bash) resolves inside the container: refused.
    kiwi.sh(cid, "ln -s /../../usr/bin/bash /bin/hostbash; ln -s sh /bin/mysh")
    assert "/bin/hostbash is not an executable file in container" in one_line_error(
        kiwi("set", cid, "--shell", "/bin/hostbash", check=False)
    )
    kiwi("set", cid, "--shell", "/bin/mysh")  # a symlink within the container is fine
    assert kiwi.sh(cid, "echo $SHELL").stdout.strip() == "/bin/mysh"


def test_negative_memory_is_a_real_message(kiwi, busybox):
    cid = kiwi.create(busybox)
    for args in (("set", cid, "--memory", "-5M"), ("create", busybox, "--memory", "-5M")):
        line = one_line_error(kiwi(*args, check=False))
        assert line == "kiwi: invalid memory size '-5M': it cannot be negative; give e.g. 512M or 2G\n"


def test_terminal_shows_a_failing_exit_status(kiwi, busybox, terminals):
    cid = kiwi.create(busybox, "--name", "term")
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["terminal"], kiwi.env)
    child.expect("kiwi> ")
    child.sendline("attach term -- sh -c 'exit 3'")
    child.expect("kiwi: exit status 3")
    child.expect("kiwi> ")
    child.sendline("ip nosuch")
    child.expect(r"kiwi: no container named or starting with 'nosuch'; see 'kiwi list' \(exit status 1\)")
    child.expect("kiwi> ")
    child.sendline("lst")
    child.expect("did you mean list")
    child.expect("kiwi> ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    assert cid


def test_attach_without_terminal_or_input_refuses(kiwi, busybox):
    cid = kiwi.create(busybox)
    ours, theirs = socket.socketpair()
    for stdin in (subprocess.DEVNULL, theirs):
        done = subprocess.run(
            kiwi.cmd + ["attach", cid], stdin=stdin, env=kiwi.env, capture_output=True, text=True, timeout=60
        )
        line = one_line_error(done)
        assert (
            line
            == f"kiwi: a shell needs a terminal or a script on standard input; run a command instead: kiwi attach {cid} -- cmd\n"
        )
        assert done.stdout == ""
    ours.close()
    theirs.close()
    assert kiwi.json("list")[0]["status"] == "stopped"  # refused before anything started
    piped = kiwi("attach", cid, input="echo PIPED-$((2+3))\n")  # a script on stdin still runs
    assert "PIPED-5" in piped.stdout


def test_session_with_a_missing_command_exits_127_like_one_shot(kiwi, busybox, terminals):
    cid = kiwi.create(busybox)
    kiwi("start", cid)
    for argv, code, text in (
        (["/no/such"], 127, "command not found"),
        (["/etc/passwd"], 126, "permission denied"),
    ):
        child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid, "--session", "--", *argv], kiwi.env)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == code, (argv, child.before)
        assert text in child.before and child.before.count("kiwi: ") == 1, child.before
        one_shot = kiwi("attach", cid, "--", *argv, check=False)
        assert one_shot.returncode == code and text in one_shot.stderr
    assert kiwi.json("sessions", cid) == []  # nothing half-made left behind


def test_debug_is_accepted_anywhere(kiwi, busybox):
    cid = kiwi.create(busybox)
    assert kiwi.json("list", "--debug") == kiwi.json("--debug", "list") == kiwi.json("list")
    # Honoured wherever it stands, as KIWI_DEBUG=1: the traceback, then the one line.
    plain = one_line_error(kiwi("stop", "nosuch", check=False))
    for args in (["--debug", "stop", "nosuch"], ["stop", "--debug", "nosuch"], ["stop", "nosuch", "--debug"]):
        done = kiwi(*args, check=False)
        assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr, args
        assert done.stderr.endswith(plain), args
    # After '--' it belongs to the container's command.
    assert kiwi.out("attach", cid, "--debug", "--", "echo", "--debug") == "--debug"
    assert kiwi.out("exec", "--debug", cid, "echo", "--debug") == "--debug"  # the docker alias too
