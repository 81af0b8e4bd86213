"""What `kiwi inspect` and `kiwi stats` report: settings, state and usage of a
container, gathered from its config, its runtime record, its cgroup (v1 or v2,
see cgroups.py) and its storage. Reads only; never changes anything."""

from __future__ import annotations

import contextlib

from .errors import KiwiError
from .store import Store


def usage(store: Store, cid: str, state: dict) -> dict:
    """Memory, cpu time, processes and storage now; cgroup figures only while running."""
    from .containers import storage_summary

    config = store.container_config(cid)
    used, limit = storage_summary(store, config, state.get("init_pid"))
    figures = {
        "id": cid,
        "name": config.get("name"),
        "status": state["status"],
        "memory_used": None,
        "memory_limit": config.get("memory"),
        "cpu_seconds": None,
        "cpu": config.get("cpu"),
        "pids": None,
        "storage_used": used,
        "storage_limit": limit,
    }
    if state["status"] == "running":
        figures.update(cgroup_usage(store, cid))
    return figures


def cgroup_usage(store: Store, cid: str) -> dict:
    from . import runtime

    cgroup = runtime.container_cgroup(store, cid)
    cpu_ns = None
    with contextlib.suppress(OSError, KiwiError, ValueError):
        cpu_ns = cgroup.cpu_usage_ns()
    return {
        "memory_used": cgroup.memory_usage(),
        "cpu_seconds": None if cpu_ns is None else round(cpu_ns / 1e9, 3),
        "pids": len(cgroup.pids()),
        "cgroup": cgroup.version,
    }


def inspect(store: Store, cid: str) -> dict:
    """Every setting of the container, its state, and while running its processes and sessions."""
    from . import runtime

    config = store.container_config(cid)
    state = runtime.status(store, cid)
    record = runtime.read_runtime(store, cid) or {}
    running = state["status"] == "running"
    info = {
        "id": cid,
        "name": config.get("name"),
        "image": config.get("image"),
        "created": config.get("created"),
        "state": state["status"],
        "settings": {
            "memory": config.get("memory"),
            "cpu": config.get("cpu"),
            "storage": config.get("storage"),
            "storage_sparse": bool(config.get("storage_sparse")),
            "network": config.get("network", "separate"),
            "shell": config.get("shell"),
        },
        "network": {
            "mode": config.get("network", "separate"),
            "ipv4": None if config.get("network") == "host" else config.get("ipv4"),
            "mac": record.get("mac"),
            "veth": record.get("veth"),
        },
        "mount": state.get("mount_target"),
        "init_pid": record.get("init_pid"),
        "started": record.get("started"),
        # "active", or why free, nproc and uptime inside show the host's figures (lxfs.py)
        "limits_inside": record.get("lxfs") if running else None,
        # the same for sysinfo(2) (busybox free and uptime), checked now: its handler may have ended
        "sysinfo_inside": sysinfo_inside(store, cid, record) if running else None,
        "usage": usage(store, cid, state),
        "pids": runtime.container_cgroup(store, cid).pids() if running else [],
        "sessions": container_sessions(store, cid) if running else [],
        "paths": {
            "config": str(store.container_dir(cid) / "config.json"),
            "runtime": str(store.runtime_dir(cid)) if running else None,
        },
    }
    if running:
        info["cgroup"] = runtime.container_cgroup(store, cid).describe()
    extra = {k: v for k, v in config.items() if k not in info and k not in info["settings"] and k != "ipv4"}
    if extra:
        info["other_settings"] = extra
    return info


def sysinfo_inside(store: Store, cid: str, record: dict) -> str | None:
    from . import lxfs, runtime

    # A container started by a Kiwi without this record: its handler's fate at start is unknown.
    recorded = record.get("sysinfo", record.get("lxfs"))
    handler = record.get("sysinfo_handler")
    cgroup = runtime.container_cgroup(store, cid) if handler else None
    return lxfs.sysinfo_now(recorded, store.runtime_dir(cid), handler, cgroup)


def container_sessions(store: Store, cid: str) -> list[dict]:
    from . import sessions

    return sessions.list_sessions(store, cid)
