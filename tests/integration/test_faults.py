"""Issue 13, "faults that must not hurt": signals and kill -9 at a spread of
moments, full host disks and killed restores, injected into the frozen kiwi.

A kill here ends kiwi's whole process group (the one-file launcher and the
Python process doing the work, with its helpers): the worst case."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

from test_limits import cgroup_of  # this process computes the cgroup paths of the kiwi under test

MIB = 1 << 20
GIB = 1 << 30


def signal_midway(kiwi, args, after: float, sig: int) -> subprocess.CompletedProcess:
    """Run `kiwi args` in its own process group and send sig to the whole group after `after` s."""
    proc = subprocess.Popen(kiwi.cmd + [str(a) for a in args], env=kiwi.env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:  # the launcher may die before its child: end the rest of the group too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lease_path(kiwi, cid):
    return kiwi.root / "mounts" / cid / "freeze.json"


# --- 1. frozen containers -------------------------------------------------------------

def test_killed_snap_and_commit_never_leave_the_container_frozen(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "2G")
    # A few hundred MB of changes that compress badly: snap and commit take a while.
    kiwi.sh(cid, "dd if=/dev/urandom of=/root/noise bs=1M count=300 2>/dev/null; "
                 "(while true; do date > /root/clock; sleep 0.1; done) >/dev/null 2>&1 &", timeout=300)
    group = cgroup_of(kiwi, cid)
    plans = ([("snap", signal.SIGKILL, t) for t in (0.2, 0.5, 0.8, 1.1, 1.4)]
             + [("commit", signal.SIGKILL, t) for t in (0.3, 0.7, 1.2)]
             + [(cmd, sig, t) for cmd in ("snap", "commit") for sig in (signal.SIGTERM, signal.SIGHUP)
                for t in (0.5, 1.0)])
    caught_frozen = unwound = 0
    for n, (command, sig, after) in enumerate(plans):
        target = f"s{n}" if command == "snap" else f"img{n}"
        done = signal_midway(kiwi, [command, cid, target], after, sig)
        if sig == signal.SIGKILL:
            caught_frozen += group.is_frozen() and lease_path(kiwi, cid).exists()
        elif done.returncode == 128 + sig:
            unwound += 1
            assert "the container was thawed" in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert not group.is_frozen()
        # No cleanup: the next command must find the container usable at once.
        attached = kiwi("attach", cid, "--", "cat", "/root/clock", timeout=30, check=False)
        assert attached.returncode == 0, (command, sig, after, attached.stderr)
        assert not group.is_frozen(), (command, sig, after)
        assert not lease_path(kiwi, cid).exists()
        assert kiwi.json("list", "containers")[0]["status"] == "running"
    # The faults really hit the frozen window (else this test proves nothing).
    assert caught_frozen >= 2, caught_frozen
    assert unwound >= 2, unwound
    kiwi("cleanup")
    assert not group.is_frozen()
    assert kiwi.sh(cid, "test -s /root/noise && echo ok").stdout == "ok\n"


def test_list_and_cleanup_thaw_an_abandoned_freeze(kiwi, busybox):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    group = cgroup_of(kiwi, cid)
    # A lease whose owner is a zombie: killed, not yet reaped.
    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)
    stat = open(f"/proc/{zombie.pid}/stat").read()
    start = int(stat[stat.rindex(")") + 2:].split()[19])
    for thawer in (("list",), ("cleanup",), ("stop", cid, "--time", "2")):
        lease_path(kiwi, cid).write_text(json.dumps({"pid": zombie.pid, "start_time": start}))
        group.freeze()
        kiwi(*thawer)
        assert not lease_path(kiwi, cid).exists(), thawer
        assert not group.exists() or not group.is_frozen(), thawer
    zombie.wait()
    # A live owner's freeze is left alone by list.
    kiwi("attach", cid, "--", "true")
    group.freeze()
    me = open("/proc/self/stat").read()
    lease_path(kiwi, cid).write_text(json.dumps(
        {"pid": os.getpid(), "start_time": int(me[me.rindex(")") + 2:].split()[19])}))
    try:
        kiwi("list")
        assert group.is_frozen()
    finally:
        group.thaw()
        lease_path(kiwi, cid).unlink()
