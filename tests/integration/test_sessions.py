"""Managed sessions end to end: the frozen kiwi on real PTYs (pexpect), real containers.

Every terminal a test opens is closed at teardown, and the `kiwi` fixture's
teardown stops the containers (which ends every session daemon)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pexpect
import pytest

from conftest import wait_gone

BOTH_MODES = True  # every test using `kiwi` runs unprivileged and --privileged (conftest)

SESSION_LINE = r"kiwi: session ([0-9a-f]{8}) "
DETACH_KEY = "\x1c"  # Ctrl-\


@pytest.fixture(params=["busybox", "debian"])
def image(request, kiwi, busybox_tar, debian_tar) -> str:
    tar = busybox_tar if request.param == "busybox" else debian_tar
    kiwi("import", "--name", request.param, tar, timeout=600)
    return request.param


def kiwi_terminal(terminals, kiwi, *args, rows: int = 24, cols: int = 80):
    return terminals(kiwi.cmd[0], kiwi.cmd[1:] + list(args), kiwi.env, rows, cols)


def open_session(terminals, kiwi, cid: str, **size) -> tuple:
    child = kiwi_terminal(terminals, kiwi, "attach", cid, **size)
    child.expect(SESSION_LINE)
    sid = child.match.group(1)
    expect_output(child, "echo READY-$((40+2))", "READY-42")
    return child, sid


def expect_output(child, command: str, pattern: str) -> None:
    """Run a command in the session; the pattern must only match its output, not its echo."""
    child.sendline(command)
    child.expect(pattern)


def detach(child, sid: str) -> None:
    child.send(DETACH_KEY)
    child.expect(f"detached from session {sid}; reattach with: kiwi attach --old {sid}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def states(kiwi, cid: str) -> dict:
    return {row["id"]: row["state"] for row in kiwi.json("sessions", cid)}


def wait_for_state(kiwi, cid: str, sid: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (state := states(kiwi, cid).get(sid)) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state == wanted


def record(kiwi, cid: str, sid: str) -> dict:
    return json.loads((kiwi.root / "mounts" / cid / "sessions" / f"{sid}.json").read_text())


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1])


def test_detach_reattach_takeover_and_killed_client(kiwi, terminals, image):
    cid = kiwi.create(image)
    child, sid = open_session(terminals, kiwi, cid)
    expect_output(child, "export X=42; echo MARK-$((6*7))", "MARK-42")
    assert states(kiwi, cid)[sid] == "attached"
    detach(child, sid)
    assert states(kiwi, cid)[sid] == "idle"

    started = time.monotonic()
    child = kiwi_terminal(terminals, kiwi, "attach", "--old", sid)
    child.expect("MARK-42")  # replayed before anything is typed
    replay_seconds = time.monotonic() - started
    expect_output(child, 'echo "X=[$X]"', r"X=\[42\]")

    # A second client is refused; --takeover moves the session to it.
    refused = kiwi("attach", "--old", sid, check=False)
    assert refused.returncode == 1
    assert "attached on another terminal" in refused.stderr and "--takeover" in refused.stderr
    second = kiwi_terminal(terminals, kiwi, "attach", "--old", sid, "--takeover")
    child.expect(f"session {sid} was taken over by another terminal")
    child.expect(pexpect.EOF)
    expect_output(second, 'echo "Y=[$X]"', r"Y=\[42\]")

    # A client killed outright leaves the session alive and reattachable.
    for pid in reversed(process_chain(second.pid)):
        os.kill(pid, signal.SIGKILL)
    wait_for_state(kiwi, cid, sid, "idle")
    third = kiwi_terminal(terminals, kiwi, "attach", "--old", sid)
    expect_output(third, 'echo "Z=[$X]"', r"Z=\[42\]")
    daemon = record(kiwi, cid, sid)["daemon_pid"]
    rss = vm_rss_kib(daemon)
    print(
        f"\n[{image}] attach --old to first replayed byte: {replay_seconds * 1000:.0f} ms; "
        f"session daemon VmRSS: {rss} KiB"
    )
    assert rss < 64 * 1024

    third.sendline("exit 3")
    third.expect(pexpect.EOF)
    third.close()
    assert third.exitstatus == 3
    wait_gone([daemon])
    assert sid not in states(kiwi, cid)  # the client saw the exit: nothing is kept


def test_window_size_follows_the_client(kiwi, terminals, busybox):
    cid = kiwi.create(busybox)
    child, sid = open_session(terminals, kiwi, cid, rows=40, cols=120)
    expect_output(child, "stty size", "40 120")
    child.setwinsize(30, 100)
    expect_output(child, "stty size", "30 100")
    child.setwinsize(45, 132)
    expect_output(child, "stty size", "45 132")
    detach(child, sid)
    child = kiwi_terminal(terminals, kiwi, "attach", "--old", sid, rows=50, cols=90)
    child.expect(r"kiwi: reattached")
    expect_output(child, "stty size", "50 90")
    detach(child, sid)


def test_kill_delete_and_running_state(kiwi, terminals, busybox):
    cid = kiwi.create(busybox)
    first, first_sid = open_session(terminals, kiwi, cid)
    detach(first, first_sid)
    busy, busy_sid = open_session(terminals, kiwi, cid)
    busy.sendline("sleep 1000")
    detach(busy, busy_sid)
    wait_for_state(kiwi, cid, busy_sid, "running")  # once the shell has handed the terminal to sleep
    assert states(kiwi, cid) == {first_sid: "idle", busy_sid: "running"}
    # One session server serves both: a session's own processes are its relay and shell.
    assert record(kiwi, cid, first_sid)["daemon_pid"] == record(kiwi, cid, busy_sid)["daemon_pid"]
    first_pids = [record(kiwi, cid, first_sid)[k] for k in ("relay_pid", "shell_pid")]
    busy_pids = [record(kiwi, cid, busy_sid)[k] for k in ("relay_pid", "shell_pid")]

    assert kiwi.out("sessions", cid, "--kill", first_sid) == f"killed session {first_sid}"
    wait_gone(first_pids)
    rows = {r["id"]: r for r in kiwi.json("sessions", cid)}
    assert rows[first_sid]["state"] == "exited" and rows[busy_sid]["state"] == "running"
    ended = kiwi("attach", "--old", first_sid, check=False)
    assert ended.returncode == 1 and "has ended" in ended.stderr

    assert kiwi.out("sessions", cid, "--delete", busy_sid) == f"deleted session {busy_sid}"
    wait_gone(busy_pids)
    assert states(kiwi, cid) == {}
    assert kiwi.sh(cid, "ps -o comm | grep -c '^sleep$'", check=False).stdout.strip() == "0"
    missing = kiwi("sessions", cid, "--delete", busy_sid, check=False)
    assert missing.returncode == 1 and "no session" in missing.stderr


def test_stop_ends_every_session_daemon(kiwi, terminals, busybox):
    cid = kiwi.create(busybox)
    detached, detached_sid = open_session(terminals, kiwi, cid)
    detach(detached, detached_sid)
    attached, attached_sid = open_session(terminals, kiwi, cid)
    pids = [
        record(kiwi, cid, s)[k]
        for s in (detached_sid, attached_sid)
        for k in ("daemon_pid", "relay_pid", "shell_pid")
    ]
    kiwi("stop", cid, "--time", "2")
    attached.expect(f"container {cid} is stopping; session {attached_sid} ended")
    attached.expect(pexpect.EOF)
    wait_gone(pids)
    assert not (kiwi.root / "mounts" / cid / "sessions").exists()
    assert not kiwi("attach", "--old", detached_sid, check=False).returncode == 0


def test_terminal_is_restored_after_detach_exit_and_sigterm(kiwi, terminals, busybox, tmp_path):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")  # start it outside the timed part
    host = terminals("/bin/bash", ["--norc", "--noprofile"], {**kiwi.env, "PS1": "host$ "})
    host.expect_exact("host$ ")
    kiwi_line = " ".join(kiwi.cmd)

    def stty_snapshot(name: str) -> str:
        host.sendline(f"stty -a > {tmp_path / name}; echo SAVED-$((1+1))")
        host.expect("SAVED-2")
        host.expect_exact("host$ ")
        return (tmp_path / name).read_text()

    before = stty_snapshot("before")
    host.sendline(f"{kiwi_line} attach {cid}")
    host.expect(SESSION_LINE)
    sid = host.match.group(1)
    expect_output(host, "echo IN-$((2+3))", "IN-5")
    detach_line = f"detached from session {sid}"
    host.send(DETACH_KEY)
    host.expect(detach_line)
    host.expect_exact("host$ ")
    assert stty_snapshot("after-detach") == before

    host.sendline(f"{kiwi_line} attach --old {sid}")
    host.expect("reattached")
    expect_output(host, "echo IN-$((3+4))", "IN-7")
    client = client_pid(host.pid)
    os.kill(client, signal.SIGTERM)
    host.expect(f"detached from session {sid}")
    host.expect_exact("host$ ")
    expect_host_status(host, 128 + signal.SIGTERM)
    assert stty_snapshot("after-sigterm") == before

    host.sendline(f"{kiwi_line} attach --old {sid}")
    host.expect("reattached")
    expect_output(host, "echo IN-$((4+4))", "IN-8")
    host.sendline("exit 7")
    host.expect_exact("host$ ")
    expect_host_status(host, 7)
    assert stty_snapshot("after-exit") == before


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def process_chain(pid: int) -> list[int]:
    """The client and, in the frozen build, the Python process below its bootloader."""
    chain = [pid]
    while len(kids := children(chain[-1])) == 1:
        chain.append(kids[0])
    return chain


def client_pid(shell_pid: int) -> int:
    """The kiwi client started by the host shell (its only child)."""
    kids = children(shell_pid)
    assert len(kids) == 1
    return kids[0]


def expect_host_status(host, status: int) -> None:
    host.sendline('echo "STATUS=[$?]"')
    host.expect(re.escape(f"STATUS=[{status}]"))
    host.expect_exact("host$ ")


def test_piped_input_without_a_terminal(kiwi, busybox):
    cid = kiwi.create(busybox)
    done = kiwi("attach", cid, input="echo PIPED-$((20+1))\nexit 5\n", check=False)
    assert done.returncode == 5, done.stderr
    assert "PIPED-21" in done.stdout
    assert kiwi.json("sessions", cid) == []


def test_crashed_daemon_is_cleaned_up(kiwi, terminals, busybox):
    cid = kiwi.create(busybox)
    child, sid = open_session(terminals, kiwi, cid)
    detach(child, sid)
    crashed, crashed_sid = open_session(terminals, kiwi, cid)
    detach(crashed, crashed_sid)
    servers = {record(kiwi, cid, s)["daemon_pid"] for s in (sid, crashed_sid)}
    assert len(servers) == 1  # one session server for both
    server = servers.pop()
    os.kill(server, signal.SIGKILL)
    wait_gone([server])  # kill() returns before the server has ended
    shells = [record(kiwi, cid, s)["shell_pid"] for s in (sid, crashed_sid)]
    assert states(kiwi, cid) == {sid: "dead", crashed_sid: "dead"}

    lost = kiwi("attach", "--old", sid, check=False)
    assert lost.returncode == 1 and "its daemon is no longer running" in lost.stderr
    assert f"session {crashed_sid} of container {cid} (its daemon had died)" in kiwi.out("cleanup")
    assert states(kiwi, cid) == {}
    wait_gone(shells)
