"""kiwi inspect and kiwi stats (issue 17 item 7) against the real cgroup (v1 here) and storage."""

from __future__ import annotations

import json
from pathlib import Path

MIB = 1 << 20


def cgroup_procs(info: dict) -> set[int]:
    """The processes the kernel lists in the container's cgroup, read straight from cgroupfs."""
    found = set()
    for path in info["cgroup"]["paths"].values():
        procs = Path(path) / "cgroup.procs"
        if procs.exists():
            found.update(int(line) for line in procs.read_text().split())
    return found


def test_inspect_stopped_and_running(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "insp", "--memory", "256M", "--cpu", "1", "--storage", "2G")
    kiwi("set", cid, "--shell", "/bin/sh")
    info = json.loads(kiwi.out("inspect", "insp"))
    assert info["id"] == cid and info["name"] == "insp" and info["image"] == busybox
    assert info["state"] == "stopped" and info["init_pid"] is None and info["pids"] == []
    assert info["settings"] == {
        "memory": 256 * MIB,
        "cpu": 1,
        "storage": 2048 * MIB,
        "storage_sparse": False,
        "network": "separate",
        "shell": "/bin/sh",
    }
    assert info["network"]["ipv4"] == kiwi.out("ip", cid)

    kiwi.sh(cid, "true")  # starts it; it keeps running
    info = json.loads(kiwi.out("inspect", cid[:5]))
    assert info["state"] == "running"
    assert info["init_pid"] in info["pids"]
    assert set(info["pids"]) == cgroup_procs(info)
    assert info["usage"]["memory_used"] > 0 and info["usage"]["pids"] == len(info["pids"])
    assert info["sessions"] == []
    assert info["network"]["veth"]


def test_stats_figures_follow_the_container(kiwi, busybox):
    running = kiwi.create(busybox, "--name", "busy", "--memory", "128M")
    idle = kiwi.create(busybox, "--name", "idle")
    # 32 MiB held in a tmpfs file (charged to the container's memory cgroup), and cpu burnt.
    kiwi.sh(
        running,
        "dd if=/dev/zero of=/dev/shm/ballast bs=1M count=32 2>/dev/null; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    )
    rows = {r["id"]: r for r in kiwi.json("stats")}
    assert list(rows) == [running]  # only running containers by default
    row = rows[running]
    assert row["memory_limit"] == 128 * MIB and row["memory_used"] >= 32 * MIB
    assert row["cpu_seconds"] > 0 and row["pids"] >= 1
    assert row["storage_used"] > 0 and row["storage_limit"] == 1024 * MIB

    one = kiwi.json("stats", "idle")
    assert one[0]["id"] == idle and one[0]["status"] == "stopped" and one[0]["memory_used"] is None

    table = kiwi.out("stats").splitlines()
    assert table[0].split() == ["ID", "NAME", "STATUS", "MEMORY", "CPU", "TIME", "PIDS", "STORAGE"]
    assert table[1].startswith(f"{running}  busy  running")


def test_inspect_unknown_container(kiwi):
    done = kiwi("inspect", "nosuch", check=False)
    assert done.returncode == 1 and done.stderr.startswith("kiwi: no container named or starting with")
