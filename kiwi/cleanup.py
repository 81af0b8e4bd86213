"""`kiwi cleanup`: remove what a crash left behind, and only Kiwi's own things.

A container whose lock another kiwi process holds is busy (starting,
stopping, being snapped) and is left alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil

from . import runtime
from .errors import KiwiError
from .store import Store


def run(store: Store) -> list[str]:
    removed: list[str] = clean_sessions(store)  # first: their files keep runtime dirs busy
    running = set()
    busy = set()
    for cid in store.container_ids():
        try:
            with store.container_lock(cid, wait=False):
                if clean_container(store, cid, removed):
                    running.add(cid)
        except BlockingIOError:
            busy.add(cid)
    keep = running | busy
    removed += clean_orphan_cgroups(keep)
    removed += clean_orphan_veths(keep)
    removed += clean_tmp(store)
    removed += clean_abandoned_restores(store)
    removed += clean_partial_archives(store)
    removed += clean_ipam(store)
    if not keep:
        removed += clean_nat()
    return removed


def clean_container(store: Store, cid: str, removed: list[str]) -> bool:
    """Returns True when the container is really running."""
    from . import cgroups, freeze, loop, storage
    if runtime.read_runtime(store, cid):
        if freeze.thaw_unleased(store, cid):
            removed.append(f"freeze of container {cid} (its snap or commit was killed)")
        return True
    had_record = runtime.runtime_file(store, cid).exists()
    cgroup = cgroups.Cgroup.for_container(cid)
    had_cgroup = cgroup.exists()
    if had_record or had_cgroup:
        runtime.teardown(store, cid)
        removed.append(f"stale runtime of container {cid}" + (" (killed its leftover processes)" if had_cgroup else ""))
    mount_record = runtime.mount_file(store, cid)
    if mount_record.exists() and not runtime.read_mount(store, cid):
        mount_record.unlink()
        removed.append(f"stale mount record of container {cid}")
        runtime.teardown(store, cid)
    finish_storage_change(store, cid, removed)
    if not runtime.read_mount(store, cid):
        for dev in loop.find_by_backing_file(str(storage.image_path(store.container_dir(cid)))):
            with contextlib.suppress(OSError):
                loop.detach(dev)
                removed.append(f"loop device {dev} of container {cid}")
    return False


def finish_storage_change(store: Store, cid: str, removed: list[str]) -> None:
    from . import storage_ops
    with contextlib.suppress(KiwiError):  # what cannot be finished, start refuses with the reason
        if storage_ops.finish_interrupted_change(store, store.container_config(cid)):
            removed.append(f"half-done storage change of container {cid} (finished it)")


def clean_orphan_cgroups(keep: set[str]) -> list[str]:
    from . import cgroups
    out = []
    for cid in cgroups.list_container_cgroups():
        if cid in keep:
            continue
        cgroup = cgroups.Cgroup.for_container(cid)
        cgroup.kill_all()
        cgroup.remove()
        out.append(f"cgroup of container {cid}")
    if not keep:
        cgroups.remove_parent_if_empty()
    return out


def clean_orphan_veths(keep: set[str]) -> list[str]:
    from . import network
    out = []
    wanted = {network.veth_name(cid) for cid in keep}
    for veth in network.list_kiwi_veths():
        if veth not in wanted:
            network.delete_link(veth)
            out.append(f"network device {veth}")
    return out


def clean_sessions(store: Store) -> list[str]:
    try:
        from . import sessions
    except ImportError:
        return []
    with contextlib.suppress(KiwiError, OSError):
        return sessions.cleanup(store)
    return []


def pid_alive(pid: int) -> bool:
    """A zombie (killed a moment ago, not yet reaped) is dead too."""
    return runtime.process_start_time(pid) is not None


def staging_owner(name: str) -> int | None:
    """Staging entries are named <what>-<pid>-<rest>; the pid tells if their writer lives."""
    parts = name.split("-")
    for part in parts[1:3]:
        if part.isdigit():
            return int(part)
    return None


def clean_tmp(store: Store) -> list[str]:
    out = []
    try:
        names = os.listdir(store.tmp_dir)
    except FileNotFoundError:
        return out
    from . import images
    out += [f"half-written import {name}" for name in images.remove_stale_staging(store)]
    for name in names:
        if name.startswith(images.STAGING_PREFIX):
            continue  # flock-guarded; handled just above
        owner = staging_owner(name)
        if owner is not None and owner != os.getpid() and pid_alive(owner):
            continue
        path = store.tmp_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        out.append(f"half-written {path}")
    return out


def clean_partial_archives(store: Store) -> list[str]:
    """.kiwi-partial-<pid>-... files of archive writers that died."""
    out = []
    for folder in (store.root, store.exports_dir):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith(".kiwi-partial-"):
                continue
            pid = name.split("-")[2]
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
            out.append(f"half-written {folder / name}")
    return out


def clean_abandoned_restores(store: Store) -> list[str]:
    """Images that a killed `create <file>.kiwi` restored for a container it never made.
    Only images marked with their restorer's identity: never one a user imported."""
    from . import images, snapshots
    out = []
    used = set()
    for cid in store.container_ids():
        with contextlib.suppress(KiwiError, OSError):
            used.add(store.container_config(cid).get("image"))
    for meta in images.list_images(store):
        owner = meta.get("restored_by")
        if owner is None or runtime.owner_alive(owner):
            continue
        with contextlib.suppress(KiwiError, OSError):
            if meta["name"] in used:
                snapshots.release_restored(store, meta["name"])
            else:
                images.delete_image(store, meta["name"])
                out.append(f"image {meta['name']} restored by a killed create")
    return out


def clean_ipam(store: Store) -> list[str]:
    from . import ipam
    out = []
    with store.lock():
        state = ipam.load_state(store)
        existing = set(store.container_ids())
        for pool in state.get("subnets", {}).values():
            for ip, cid in list(pool.get("owners", {}).items()):
                if cid not in existing:
                    ipam.release_in(state, ip)
                    out.append(f"address {ip} of a container that no longer exists")
        if out:
            ipam.save_state(store, state)
    return out


def clean_nat() -> list[str]:
    from . import network
    # Idempotent: removes Kiwi's own table/chains if present, nothing else.
    with contextlib.suppress(KiwiError, OSError):
        network.remove_nat()
    return []
