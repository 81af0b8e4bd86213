"""`kiwi stop c` of a running container decides with os alone (quickstop.py), without
commands.py and Store.open, then stops as runtime.stop does; anything unusual goes
through cmd_stop. Both must leave exactly the same state, under the same lock: a concurrent
stop or start of the same container, or a kiwi killed midway, leaves nothing behind.

Which path ran is seen from outside: the full path loads kiwi/commands.pyc from the
bundle, the quick one never does (strace of the frozen kiwi)."""

from __future__ import annotations

import json
import os
import subprocess

from test_runtime import cgroup_dirs_of, loop_devices_of


def record_of(kiwi, cid: str) -> dict:
    return json.loads((kiwi.root / "mounts" / cid / "runtime.json").read_text())


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def leftovers(kiwi, cid: str, record: dict) -> dict:
    """What a stop must have removed, each empty (or False) when it did."""
    bridge = kiwi.env["KIWI_BRIDGE"]
    return {
        "status": kiwi.json("list", "containers")[0]["status"],
        "runtime folder": (kiwi.root / "mounts" / cid).exists(),
        "cgroups": [p for p in record["enter"]["procs"] if os.path.exists(os.path.dirname(p))]
        + cgroup_dirs_of(kiwi),
        "veth": record["veth"] in links(),
        "bridge": f" {bridge}:" in links(),
        "nft tables": f"kiwi-{bridge}" in nft_tables(),
        "loop devices": loop_devices_of(kiwi.root),
        "init alive": alive(record["init_pid"], record["init_start_time"]),
    }


def alive(pid: int, start_time: int) -> bool:
    """The init, not yet exited (a zombie waiting for the host's pid 1 to reap it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z" and int(fields[19]) == start_time


CLEAN = {
    "status": "stopped",
    "runtime folder": False,
    "cgroups": [],
    "veth": False,
    "bridge": False,
    "nft tables": False,
    "loop devices": [],
    "init alive": False,
}


def traced_stop(kiwi, tmp_path, *args) -> tuple[subprocess.CompletedProcess, bool]:
    """`kiwi stop args` under strace: (its result, whether the full path ran)."""
    trace = tmp_path / "stop.trace"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace), *kiwi.cmd, "stop", *args],
        env=kiwi.env,
        capture_output=True,
        text=True,
    )
    return done, "/kiwi/commands.pyc" in trace.read_text()


def test_quick_and_full_stops_leave_the_same_state(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox, "--name", "qs")
    results = {}
    for path in ("quick", "full"):
        kiwi("start", cid, check=True)
        record = record_of(kiwi, cid)
        assert leftovers(kiwi, cid, record)["bridge"] and record["veth"] in links()
        if path == "full":  # session files: only sessions.stop_all ends them
            (kiwi.root / "mounts" / cid / "sessions").mkdir(mode=0o700)
        done, full = traced_stop(kiwi, tmp_path, "qs", "--time", "3")
        assert (done.returncode, done.stdout, done.stderr) == (0, f"stopped {cid}\n", "")
        assert full == (path == "full")
        results[path] = leftovers(kiwi, cid, record)
    assert results["quick"] == results["full"] == CLEAN
    # A stopped container: the full path's answer, the same as ever.
    done, full = traced_stop(kiwi, tmp_path, cid)
    assert (done.returncode, done.stdout, full) == (0, f"{cid} is not running\n", True)


def test_a_busy_container_and_one_that_ignores_sigterm(kiwi, busybox, tmp_path):
    cid = kiwi.create(busybox)
    kiwi.sh(cid, "trap '' TERM; (trap '' TERM; sleep 1000) >/dev/null 2>&1 & sleep 0.2; exit 0")
    record = record_of(kiwi, cid)
    done, full = traced_stop(kiwi, tmp_path, cid, "--time", "1")
    assert (done.returncode, done.stdout, full) == (0, f"stopped {cid}\n", False)
    assert leftovers(kiwi, cid, record) == CLEAN


def test_two_stops_at_once(kiwi, busybox):
    cid = kiwi.create(busybox)
    for _ in range(3):
        kiwi("start", cid, check=True)
        record = record_of(kiwi, cid)
        stops = [
            subprocess.Popen([*kiwi.cmd, "stop", cid], env=kiwi.env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = sorted(p.communicate()[0] for p in stops)
        assert [p.returncode for p in stops] == [0, 0]
        assert outputs == [f"{cid} is not running\n", f"stopped {cid}\n"]
        assert leftovers(kiwi, cid, record) == CLEAN


def test_a_start_during_a_stop(kiwi, busybox):
    cid = kiwi.create(busybox)
    for _ in range(3):
        kiwi("start", cid, check=True)
        record = record_of(kiwi, cid)
        stop = subprocess.Popen([*kiwi.cmd, "stop", cid], env=kiwi.env, stdout=subprocess.PIPE, text=True)
        start = subprocess.Popen([*kiwi.cmd, "start", cid], env=kiwi.env, stdout=subprocess.PIPE, text=True)
        assert (stop.wait(), start.wait()) == (0, 0)
        # Either order is right; what runs now is a whole container that stops cleanly.
        if kiwi.json("list", "containers")[0]["status"] == "running":
            assert kiwi.out("attach", cid, "--", "echo", "up") == "up"
            record = record_of(kiwi, cid)
            kiwi("stop", cid, check=True)
        assert leftovers(kiwi, cid, record) == CLEAN


def test_a_stop_killed_midway_leaves_nothing_the_next_stop_misses(kiwi, busybox):
    cid = kiwi.create(busybox)
    for delay in (0.02, 0.04, 0.06, 0.08, 0.12):
        kiwi("start", cid, check=True)
        record = record_of(kiwi, cid)
        kiwi.kill_midway("stop", cid, after=delay)
        kiwi("stop", cid, check=True)
        assert leftovers(kiwi, cid, record) == CLEAN, delay
    assert kiwi.out("attach", cid, "--", "echo", "again") == "again"
