"""Issue 14 item 1: what goes wrong in a process kiwi forked reaches the user the way it
would from kiwi itself (kiwi/proc.py). Frozen binary, real namespaces.

A bug in PID 1's setup is made for real, with no hook in kiwi: a config.json whose
"name" is a number (a hand-edited or damaged record) reaches sethostname() in stage 2,
which fails with an AttributeError there, inside the container's new namespaces.
"""

from __future__ import annotations

import json
import re
import subprocess

from conftest import Kiwi

BUG_LINE = (
    "kiwi: starting the container failed: internal error: AttributeError: "
    "'int' object has no attribute 'encode' (run with KIWI_DEBUG=1 for the traceback)"
)


def set_config(kiwi: Kiwi, cid: str, **fields) -> None:
    path = kiwi.root / "containers" / cid / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def assert_nothing_left_running(kiwi: Kiwi, cid: str) -> None:
    row = next(r for r in kiwi.json("list", "containers") if r["id"] == cid)
    assert row["status"] == "stopped", row  # "stale" if a process were left in its cgroup
    assert not (kiwi.root / "mounts" / cid / "runtime.json").exists()
    with open("/proc/self/mountinfo") as f:
        assert not any(cid in line for line in f), "a mount of the failed start is on the host"


def test_bug_in_pid1_setup_is_one_line_or_its_traceback(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "c")
    set_config(kiwi, cid, name=7)
    try:
        quiet = kiwi("attach", cid, "--", "true", check=False)
        assert quiet.returncode == 1
        assert quiet.stderr.splitlines() == [BUG_LINE]

        for how in ({"env": {"KIWI_DEBUG": "1"}}, {"args": ["--debug"]}):
            loud = kiwi(*how.get("args", []), "attach", cid, "--", "true", check=False, env=how.get("env"))
            assert loud.returncode == 1
            assert loud.stderr.splitlines()[-1] == BUG_LINE
            # The traceback is PID 1's own: the frames of stage 2 down to the failing call.
            tb = loud.stderr[loud.stderr.index("In a helper process kiwi forked:") :]
            frames = re.findall(r'File "([^"]+)", line \d+, in (\w+)', tb)
            assert ("kiwi/runtime.py", "stage2") in frames, tb
            assert frames[-1] == ("kiwi/syscalls.py", "sethostname"), tb
            assert "AttributeError: 'int' object has no attribute 'encode'" in tb
    finally:
        set_config(kiwi, cid, name="c")
    assert_nothing_left_running(kiwi, cid)
    # The record repaired, the same container starts.
    assert kiwi.out("attach", cid, "--", "hostname") == "c"
    kiwi("stop", cid, "--time", "2")


def test_session_daemon_error_arrives_as_one_line(kiwi, busybox):
    """A KiwiError raised in the session daemon (no shell in the container) is the
    client's one line, and no session record or socket is left behind."""
    cid = kiwi.create(busybox, "--name", "c")
    kiwi("attach", cid, "--", "/bin/busybox", "rm", "/bin/sh", "/bin/ash")
    done = kiwi("attach", cid, "--session", check=False, input="")
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        "kiwi: starting the session failed: no shell (bash, zsh, fish, ash, sh) found in the container; "
        "give a command after --"
    ]
    assert kiwi.json("sessions", cid) == []
    kiwi("stop", cid, "--time", "2")


def test_network_failure_while_stage_1_runs_leaves_nothing(kiwi, busybox):
    """The bridge and NAT are made while stage 1 makes the namespaces (issue 20): when that
    fails, the start ends as any failed start does, its stages gone with it."""
    cid = kiwi.create(busybox, "--name", "c")
    bridge = kiwi.env["KIWI_BRIDGE"]
    subprocess.run(["ip", "link", "add", bridge, "type", "veth", "peer", "name", bridge + "p"], check=True)
    try:
        failed = kiwi("attach", cid, "--", "true", check=False)
        assert failed.returncode == 1
        assert failed.stderr.splitlines() == [
            f"kiwi: {bridge} exists and is not a bridge; set KIWI_BRIDGE to another name"
        ]
        assert_nothing_left_running(kiwi, cid)
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)
    assert kiwi.out("attach", cid, "--", "hostname") == "c"
    kiwi("stop", cid, "--time", "2")
