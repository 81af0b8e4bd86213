"""`kiwi inspect` says honestly whether a container's sysinfo(2) handler (kiwi-sysinfo,
a process of kiwi-lxfs) answers: "active" while it runs, why not once root inside has
killed it (the FUSE files go on: limits_inside stays "active"). Frozen binary."""

from __future__ import annotations

from test_limits_inside import alive, free_total, host_meminfo, inspect, servers, started, wait_until

KILL_HANDLER = (
    'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = kiwi-sysinfo ] && kill -9 ${p#/proc/}; done; true'
)


def test_inspect_says_when_the_sysinfo_handler_has_ended(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M")
    info = inspect(kiwi, cid)
    assert (info["limits_inside"], info["sysinfo_inside"]) == ("active", "active")
    assert inspect(kiwi, cid)["sysinfo_inside"] == "active"  # asking does not disturb it
    assert free_total(kiwi, cid) == 256 * 1024
    handler = servers(kiwi, cid)["kiwi-sysinfo"]
    kiwi.sh(cid, KILL_HANDLER)
    assert wait_until(lambda: not alive(handler))
    info = inspect(kiwi, cid)
    assert info["limits_inside"] == "active"
    assert info["sysinfo_inside"].startswith("its sysinfo handler has ended"), info["sysinfo_inside"]
    assert free_total(kiwi, cid) == host_meminfo()["MemTotal"]  # what it says is so
    kiwi("stop", cid)
    assert inspect(kiwi, cid)["sysinfo_inside"] is None
    kiwi("start", cid)
    assert inspect(kiwi, cid)["sysinfo_inside"] == "active"  # a new start, a new handler
    kiwi("stop", cid)
