"""A container's runtime records, read without starting or entering anything:
runtime.json (is its init alive?), mount.json (is it mounted on the host?), its
cgroup, and the identity (pid + start time) that owns a freeze lease or a restore.

Below the runtime: freeze, storage_ops, hostmount, cleanup and the sessions read
these without importing the runtime, which imports some of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import layout
from .errors import KiwiError
from .peek import mount_points
from .proc import process_start_time
from .store import Store, read_json

# --- runtime records ------------------------------------------------------------

# In the runtime folder: where kiwi-exec reaches the sysinfo handler (lxfs.py). Here, so
# that a stop removes it without importing lxfs and the syscall module (issue 20).
SYSINFO_SOCKET = "sysinfo.sock"


def runtime_file(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / layout.RUNTIME_RECORD


def mount_file(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / layout.MOUNT_RECORD


def own_identity() -> dict:
    """Who is doing something (a freeze lease, a restore): pid + start time."""
    return {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}


def owner_alive(identity) -> bool:
    """A dead, zombie or recycled pid is not the owner any more."""
    if not isinstance(identity, dict):
        return False
    pid = identity.get("pid")
    return isinstance(pid, int) and pid > 0 and process_start_time(pid) == identity.get("start_time")


def read_runtime(store: Store, cid: str) -> dict | None:
    """The runtime record if its init is alive, else None."""
    try:
        record = read_json(runtime_file(store, cid))
    except (FileNotFoundError, KiwiError, PermissionError):
        return None
    return record if layout.live_init(record, store.real_root) else None


def container_cgroup(store: Store, cid: str):
    from . import cgroups

    return cgroups.Cgroup.for_container(cid, store.folder_id())


def read_mount(store: Store, cid: str) -> str | None:
    try:
        target = read_json(mount_file(store, cid)).get("target")
    except (FileNotFoundError, KiwiError, PermissionError):
        return None
    return target if target and is_mountpoint(target) else None


def is_mountpoint(path: str) -> bool:
    return path in mount_points()
