"""The session server (issue 20): one host process per data folder serves every
session of every container. The frozen kiwi on real PTYs and real containers.

Clients started here are killed at teardown; the `kiwi` fixture's teardown
stops the containers, which ends their sessions and then the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_sessions import detach, open_session, process_chain, record, states, vm_rss_kib

from conftest import alive, wait_gone

FLOOD = "x=$(printf %0200d 0); while :; do echo $x; done"


@pytest.fixture
def clients(kiwi):
    """Starts `kiwi attach <args>` with piped stdio; kills every one at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        client = subprocess.Popen(
            [*kiwi.cmd, "attach", *args],
            env=kiwi.env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
        started.append(client)
        return client

    yield start
    for client in started:
        if client.poll() is None:
            for pid in reversed(process_chain(client.pid)):
                with_gone_ok(os.kill, pid, signal.SIGKILL)
        client.wait(timeout=30)


def with_gone_ok(fn, *args) -> None:
    try:
        fn(*args)
    except ProcessLookupError:
        pass


def control_socket(kiwi) -> Path:
    return kiwi.root / "mounts" / "session-server.sock"


def session_files(kiwi, cid: str) -> list[str]:
    folder = kiwi.root / "mounts" / cid / "sessions"
    return sorted(os.listdir(folder)) if folder.exists() else []


def live_records(kiwi, cid: str) -> list[dict]:
    folder = kiwi.root / "mounts" / cid / "sessions"
    found = []
    for name in session_files(kiwi, cid):
        if name.endswith(".json"):
            rec = json.loads((folder / name).read_text())
            if rec.get("state") == "live" and (folder / f"{rec['id']}.sock").exists():
                found.append(rec)
    return found


def wait_for_records(kiwi, cid: str, count: int, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := live_records(kiwi, cid)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(found) == count, session_files(kiwi, cid)
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def assert_holds_nothing_of_the_host(kiwi, rec: dict) -> None:
    """The server holds every session's PTY master, socket and log: none of that reaches a
    session's processes. kiwi-exec runs from a memfd; the shell has its own terminal only."""
    exe = os.readlink(f"/proc/{rec['relay_pid']}/exe")
    assert exe.startswith("/memfd:"), exe
    for pid in (rec["relay_pid"], rec["shell_pid"]):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            assert target.startswith("/dev/pts/"), (pid, fd, target)  # no ptmx, socket, log or pipe


def test_one_server_for_two_containers_and_racing_attaches(kiwi, busybox, clients):
    cids = [kiwi.create(busybox) for _ in range(2)]
    for cid in cids:
        kiwi("attach", cid, "--", "true")  # started before the race
    # Four new sessions at once, none with a server yet: the lock makes one server.
    for cid in cids:
        for _ in range(2):
            clients(cid, "--session", "--", "sleep", "1000")
    records = {cid: wait_for_records(kiwi, cid, 2) for cid in cids}
    servers = {r["daemon_pid"] for rs in records.values() for r in rs}
    assert len(servers) == 1, records
    server = servers.pop()
    for rs in records.values():
        for r in rs:
            assert parent_of(r["relay_pid"]) == server  # kiwi-exec is the server's child
            assert_holds_nothing_of_the_host(kiwi, r)
    # Each container lists its own sessions only.
    for cid in cids:
        assert {row["id"] for row in kiwi.json("sessions", cid)} == {r["id"] for r in records[cid]}
    assert control_socket(kiwi).exists()
    assert os.stat(control_socket(kiwi)).st_mode & 0o777 == 0o600

    # Stopping one container ends its sessions only; the server stays for the other's.
    kiwi("stop", cids[0], "--time", "2")
    wait_gone([r["relay_pid"] for r in records[cids[0]]] + [r["shell_pid"] for r in records[cids[0]]])
    assert alive(server)
    assert set(states(kiwi, cids[1]).values()) == {"attached"}
    # With no session left the server ends and takes its control socket along.
    kiwi("stop", cids[1], "--time", "2")
    wait_gone([server])
    assert not control_socket(kiwi).exists()


def test_sigkilled_server_ends_its_sessions_and_cleanup_leaves_nothing(kiwi, busybox, terminals):
    cid = kiwi.create(busybox)
    sids = []
    for _ in range(2):
        child, sid = open_session(terminals, kiwi, cid)
        detach(child, sid)
        sids.append(sid)
    old = [record(kiwi, cid, s) for s in sids]
    server = old[0]["daemon_pid"]
    assert {r["daemon_pid"] for r in old} == {server}
    os.kill(server, signal.SIGKILL)
    wait_gone([server])
    assert states(kiwi, cid) == dict.fromkeys(sids, "dead")

    # The next session starts a new server over the dead one's socket.
    child, sid = open_session(terminals, kiwi, cid)
    new_server = record(kiwi, cid, sid)["daemon_pid"]
    assert new_server != server
    cleaned = kiwi.out("cleanup")
    for s in sids:
        assert f"session {s} of container {cid} (its daemon had died)" in cleaned
    wait_gone([p for r in old for p in (r["relay_pid"], r["shell_pid"])])
    assert states(kiwi, cid) == {sid: "attached"}
    assert session_files(kiwi, cid) == [f"{sid}.json", f"{sid}.sock"]

    # Killed while a client is attached: the client hears its session is gone.
    newest = record(kiwi, cid, sid)
    os.kill(new_server, signal.SIGKILL)
    child.expect("lost the connection to session")
    wait_gone([new_server])
    cleaned = kiwi.out("cleanup")
    assert f"session {sid} of container {cid} (its daemon had died)" in cleaned
    assert "the socket of a session server that had died" in cleaned
    wait_gone([newest["relay_pid"], newest["shell_pid"]])
    assert kiwi.json("sessions", cid) == [] and session_files(kiwi, cid) == []
    assert not control_socket(kiwi).exists()
    again = kiwi.out("cleanup")  # nothing more to tidy
    assert cid not in again and "session server" not in again


def test_a_flooding_session_does_not_stall_another(kiwi, busybox, terminals, clients):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    # A flood whose client reads nothing (its stdout is a pipe nobody drains) ...
    clients(cid, "--session", "--", "sh", "-c", FLOOD, stdout=subprocess.PIPE)
    # ... and one with nobody attached.
    detached = clients(cid, "--session", "--", "sh", "-c", FLOOD)
    floods = wait_for_records(kiwi, cid, 2)
    for pid in reversed(process_chain(detached.pid)):
        os.kill(pid, signal.SIGTERM)
    detached.wait(timeout=30)
    server = floods[0]["daemon_pid"]

    child, sid = open_session(terminals, kiwi, cid)
    for n in range(5):
        child.sendline(f"echo ROUND-$(({n}*11))")
        child.expect(f"ROUND-{n * 11}")
    assert set(states(kiwi, cid)) == {sid, *(r["id"] for r in floods)}
    assert record(kiwi, cid, sid)["daemon_pid"] == server
    assert vm_rss_kib(server) < 64 * 1024  # the queues are bounded
    for r in floods:  # their logs rotate: bounded on disk too
        logs = kiwi.root / "containers" / cid / "logs"
        assert sum(p.stat().st_size for p in logs.glob(f"{r['id']}.log*")) <= 2 << 20
    detach(child, sid)
