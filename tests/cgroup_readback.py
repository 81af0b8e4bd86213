"""What the kernel shows of a kiwi cgroup, read back by tests: the limits kiwi wrote,
OOM kills, CPU and memory use, the cgroup's folders. Kiwi itself only writes limits
(Cgroup.set_limits) and never reads these back, so the reading lives here."""

from __future__ import annotations

from pathlib import Path

from kiwi.cgroups import Cgroup, _events, _read

V1_UNLIMITED = 1 << 62  # v1 shows "no limit" as a huge page-rounded number


def parse_max(text: str) -> int | None:
    text = text.strip()
    return None if text == "max" else int(text)


def control_file(group: Cgroup, controller: str, name: str) -> Path:
    folder = group.path(controller)
    assert folder is not None, f"no {controller} controller for {group.name}"
    return folder / name


def folders(group: Cgroup) -> dict[str, str]:
    """{hierarchy key: cgroup folder}: one "unified" key on v2, one per controller mount on v1."""
    return {key: str(path) for key, path in group._dirs.items()}


def limits(group: Cgroup) -> dict:
    """memory bytes, cpus (quota/period), cpuset, pids; None = no limit."""
    if group.version == "v2":
        memory = parse_max(_read(control_file(group, "memory", "memory.max")))
        quota, period = _read(control_file(group, "cpu", "cpu.max")).split()
        cpu = None if quota == "max" else int(quota) / int(period)
    else:
        memory = int(_read(control_file(group, "memory", "memory.limit_in_bytes")))
        memory = None if memory >= V1_UNLIMITED else memory
        quota_us = int(_read(control_file(group, "cpu", "cpu.cfs_quota_us")))
        period_us = int(_read(control_file(group, "cpu", "cpu.cfs_period_us")))
        cpu = None if quota_us < 0 else quota_us / period_us
    return {
        "memory": memory,
        "cpus": cpu,
        "cpuset": _read(control_file(group, "cpuset", "cpuset.cpus")).strip(),
        "pids": parse_max(_read(control_file(group, "pids", "pids.max"))),
    }


def memory_usage(group: Cgroup) -> int:
    name = "memory.current" if group.version == "v2" else "memory.usage_in_bytes"
    return int(_read(control_file(group, "memory", name)))


def oom_kills(group: Cgroup) -> int:
    """How many processes the kernel's OOM killer took in this cgroup."""
    if group.version == "v2":
        return _events(control_file(group, "memory", "memory.events")).get("oom_kill", 0)
    control = _events(control_file(group, "memory", "memory.oom_control"))
    if "oom_kill" in control:
        return control["oom_kill"]
    return int(_read(control_file(group, "memory", "memory.failcnt")))  # older kernels


def cpu_usage_ns(group: Cgroup) -> int:
    if group.version == "v2":
        return _events(control_file(group, "cpu", "cpu.stat")).get("usage_usec", 0) * 1000
    return int(_read(control_file(group, "cpuacct", "cpuacct.usage")))
