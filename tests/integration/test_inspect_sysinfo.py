"""`kiwi inspect` says honestly whether a container's sysinfo(2) handler (kiwi-sysinfo,
a process of kiwi-lxfs) answers: "active" while it runs, why not once root inside has
killed, stopped or frozen it (the FUSE files go on: limits_inside stays "active").
Frozen binary."""

from __future__ import annotations

import contextlib
import os

import pytest
from test_limits_inside import free_total, host_meminfo, inspect, servers, started, wait_until

from conftest import alive

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


def handler_is(kiwi, cid: str, state: str) -> bool:
    return inspect(kiwi, cid)["sysinfo_inside"].startswith(f"its sysinfo handler is {state}")


def signal_handler_inside(kiwi, cid: str, signal: str) -> None:
    kiwi.sh(cid, KILL_HANDLER.replace("kill -9", f"kill -{signal}"))


@pytest.mark.parametrize("privileged", [[], ["--privileged"]], ids=["unprivileged", "privileged"])
def test_inspect_says_when_the_sysinfo_handler_is_stopped_from_inside(kiwi, busybox, privileged):
    """A stopped handler still accepts connections (its backlog): only its recorded pid
    and start time tell. Nothing Kiwi does waits for it: attach and stop go on."""
    cid = started(kiwi, busybox, "--memory", "256M", *privileged)
    handler = servers(kiwi, cid)["kiwi-sysinfo"]
    signal_handler_inside(kiwi, cid, "STOP")
    assert wait_until(lambda: handler_is(kiwi, cid, "stopped"))
    assert inspect(kiwi, cid)["limits_inside"] == "active"
    assert kiwi.out("attach", cid, "--", "cat", "/proc/meminfo", timeout=30).startswith("MemTotal:")
    signal_handler_inside(kiwi, cid, "CONT")
    assert wait_until(lambda: inspect(kiwi, cid)["sysinfo_inside"] == "active")
    assert free_total(kiwi, cid) == 256 * 1024  # it answers again
    signal_handler_inside(kiwi, cid, "STOP")
    assert wait_until(lambda: handler_is(kiwi, cid, "stopped"))
    kiwi("stop", cid, timeout=60)  # a stopped handler dies with the rest
    assert not alive(handler)
    assert inspect(kiwi, cid)["sysinfo_inside"] is None


def test_inspect_says_when_the_sysinfo_handler_is_frozen(kiwi, busybox):
    """A handler in a frozen cgroup (root inside can do it in its delegated cgroup v2;
    here the test freezes it in a child of the container's own freezer cgroup)."""
    cid = started(kiwi, busybox, "--memory", "256M")
    handler = servers(kiwi, cid)["kiwi-sysinfo"]
    cgroup = inspect(kiwi, cid)["cgroup"]
    if cgroup["version"] == "v2":
        base, state, frozen, thawed = cgroup["paths"]["unified"], "cgroup.freeze", "1", "0"
    else:
        base, state, frozen, thawed = cgroup["paths"]["freezer"], "freezer.state", "FROZEN", "THAWED"
    child = os.path.join(base, "test-frozen")
    os.mkdir(child)
    try:
        write(os.path.join(child, "cgroup.procs"), str(handler))
        write(os.path.join(child, state), frozen)
        assert wait_until(lambda: handler_is(kiwi, cid, "frozen"))
        write(os.path.join(child, state), thawed)
        assert wait_until(lambda: inspect(kiwi, cid)["sysinfo_inside"] == "active")
        assert free_total(kiwi, cid) == 256 * 1024
    finally:
        with contextlib.suppress(OSError):
            write(os.path.join(child, state), thawed)
        kiwi("stop", cid, timeout=60)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(child)
    assert not alive(handler)


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
