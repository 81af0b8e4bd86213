"""kiwi logs: a session's output read without attaching (issue 17 item 4), on real PTYs."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pexpect

SESSION_LINE = r"kiwi: session ([0-9a-f]{8}) "
DETACH_KEY = "\x1c"  # Ctrl-\


def open_detached_session(terminals, kiwi, cid: str, script: str) -> str:
    """A session that runs `script` in its shell, then detached from."""
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid], kiwi.env)
    child.expect(SESSION_LINE)
    sid = child.match.group(1)
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    child.sendline(script)
    child.send(DETACH_KEY)
    child.expect(f"detached from session {sid}")
    child.expect(pexpect.EOF)
    child.close()
    return sid


def lines(text: str) -> list[str]:
    return [line.rstrip("\r") for line in text.splitlines()]


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_logs_of_a_detached_session_tail_and_follow(kiwi, busybox, terminals):
    cid = kiwi.create(busybox, "--name", "logged")
    sid = open_detached_session(
        terminals,
        kiwi,
        cid,
        "for i in 1 2 3 4 5; do echo line-$((i*11)); done; sleep 3; echo LATE-$((6*7)); exit 3",
    )
    # Read while detached: the lines the loop printed, not just the echo of the command.
    wait_for(lambda: "line-55" in kiwi.out("logs", sid))
    assert "line-11" in kiwi.out("logs", sid[:4])  # a unique prefix names the session

    # -f prints what comes later and returns when the shell ends.
    follow = kiwi("logs", "-f", sid, timeout=30)
    assert "line-33" in follow.stdout and "LATE-42" in follow.stdout

    # After the session ended, and after the container stopped, the log is still there.
    assert lines(kiwi.out("logs", "logged", "--tail", "3")) == ["line-44", "line-55", "LATE-42"]
    kiwi("stop", cid)
    assert lines(kiwi.out("logs", cid, "--tail", "1")) == ["LATE-42"]
    assert kiwi.out("logs", cid, "--tail", "0") == ""

    folder = kiwi.root / "containers" / cid / "logs"
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(folder / f"{sid}.log").st_mode) == 0o600

    # A stopped container has no sessions left, but `sessions --delete` still takes the log.
    assert kiwi.out("sessions", cid, "--delete", sid[:3]) == f"deleted session {sid}"
    missing = kiwi("logs", sid, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("kiwi: no container or session")
    assert os.listdir(folder) == []


def test_delete_takes_the_logs_along(kiwi, busybox, terminals):
    cid = kiwi.create(busybox)
    sid = open_detached_session(terminals, kiwi, cid, "echo GONE-$((5+5))")
    wait_for(lambda: "GONE-10" in kiwi.out("logs", sid))
    kiwi("stop", cid)
    kiwi("delete", cid, "--yes")
    missing = kiwi("logs", sid, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("kiwi: no container or session")


def test_logs_all_sessions_and_delete_removes_one(kiwi, busybox, terminals):
    cid = kiwi.create(busybox)
    first = open_detached_session(terminals, kiwi, cid, "echo FIRST-$((1+1))")
    second = open_detached_session(terminals, kiwi, cid, "echo SECOND-$((2+2))")
    wait_for(lambda: "SECOND-4" in kiwi.out("logs", cid))
    assert "FIRST-2" not in kiwi.out("logs", cid)  # the newest session only
    both = kiwi.out("logs", cid, "--all")
    assert f"==> session {first} <==" in both and f"==> session {second} <==" in both
    assert both.index("FIRST-2") < both.index(f"==> session {second} <==") < both.index("SECOND-4")

    kiwi("sessions", cid, "--delete", first)
    assert not (kiwi.root / "containers" / cid / "logs" / f"{first}.log").exists()
    assert "FIRST-2" not in kiwi.out("logs", cid, "--all")


def test_logs_refusals(kiwi, busybox):
    cid = kiwi.create(busybox)
    none = kiwi("logs", cid, check=False)
    assert (
        none.returncode == 1
        and none.stderr
        == f"kiwi: container {cid} has no session logs; sessions start with: kiwi attach {cid}\n"
    )
    bad = kiwi("logs", cid, "--tail", "-2", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("kiwi: --tail takes")
    unknown = kiwi("logs", "../etc", check=False)
    assert unknown.returncode == 1 and unknown.stderr.startswith("kiwi: no container or session")


def test_log_reader_gets_no_terminal_queries(kiwi, busybox, terminals):
    """A container's output asking the reader's terminal for its cursor position is dropped."""
    cid = kiwi.create(busybox)
    sid = open_detached_session(terminals, kiwi, cid, "printf 'Q\\033[6nZ-%s\\n' $((3*3))")
    wait_for(lambda: "Z-9" in kiwi.out("logs", sid))
    raw = subprocess.run(kiwi.cmd + ["logs", sid], env=kiwi.env, capture_output=True, timeout=30).stdout
    assert b"\x1b[6n" not in raw  # a terminal query would make the reader's terminal type an answer
