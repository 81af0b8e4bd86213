"""`kiwi cleanup`: remove what a crash left behind, and only Kiwi's own things.

A container whose lock another kiwi process holds is busy (starting,
stopping, being snapped) and is left alone. Only objects that name this data
folder as their owner are removed (cgroup xattr, veth alias, filter chain
comment, address lease); another folder's are never touched, live or not,
except the leases of a folder that is provably gone (hoststate.folder_is_gone).
"""

from __future__ import annotations

import contextlib
import os

from . import runstate, runtime
from .errors import GoingOn, KiwiError, describe
from .fstree import remove_tree
from .proc import pid_alive
from .store import Store


def run(store: Store, failures: list[str] | None = None) -> list[str]:
    """What it removed, one line each; what it could not goes to failures (each step is
    tried whatever the others did)."""
    failures = [] if failures is None else failures
    removed: list[str] = []
    with GoingOn(failures, "cleaning up sessions"):
        removed += clean_sessions(store)  # first: their files keep runtime dirs busy
    running = set()
    busy = set()
    for cid in store.container_ids():
        try:
            with store.container_lock(cid, wait=False):
                if clean_container(store, cid, removed, failures):
                    running.add(cid)
        except BlockingIOError:
            busy.add(cid)
        except (KiwiError, OSError) as e:
            failures.append(f"cleaning up container {cid}: {describe(e)}")
            running.add(cid)  # unknown: leave its cgroup and veth alone
    keep = running | busy
    network_errors = (Exception,)  # pyroute2 and nft report in exceptions of their own
    steps = [
        ("removing cgroups", lambda: clean_orphan_cgroups(store, keep), ()),
        ("removing network devices", lambda: clean_orphan_veths(store, keep), network_errors),
        ("removing what killed copies left", lambda: clean_copy_leftovers(store), ()),
        ("removing half-written files", lambda: clean_tmp(store, failures), ()),
        ("removing images of killed restores", lambda: clean_abandoned_restores(store, failures), ()),
        ("removing half-written archives", lambda: clean_partial_archives(store), ()),
        ("removing half-written OCI blobs", lambda: clean_blob_temps(store), ()),
        ("removing half-unpacked builds", lambda: clean_unpack_leftovers(store), ()),
        ("releasing addresses", lambda: clean_ipam(store), ()),
        ("removing the bridge", clean_nat, network_errors),
    ]
    for what, step, catch in steps:
        with GoingOn(failures, what, catch=catch):
            removed += step()
    return removed


def clean_container(store: Store, cid: str, removed: list[str], failures: list[str]) -> bool:
    """Returns True when the container is really running."""
    from . import freeze, loop, storage

    if runstate.read_runtime(store, cid):
        if freeze.thaw_unleased(store, cid):
            removed.append(f"freeze of container {cid} (its snap or commit was killed)")
        return True
    had_record = runstate.runtime_file(store, cid).exists()
    cgroup = runstate.container_cgroup(store, cid)
    had_cgroup = cgroup.exists() and not cgroup.foreign()
    if had_record or had_cgroup:
        # The bridge, if unused, goes in the last step, which says so.
        failed = runtime.teardown(store, cid, release_network=False)
        failures += failed
        if not failed:
            removed.append(
                f"stale runtime of container {cid}"
                + (" (killed its leftover processes)" if had_cgroup else "")
            )
    mount_record = runstate.mount_file(store, cid)
    if mount_record.exists() and not runstate.read_mount(store, cid):
        mount_record.unlink()
        removed.append(f"stale mount record of container {cid}")
        failures += runtime.teardown(store, cid)
    finish_storage_change(store, cid, removed, failures)
    if not runstate.read_mount(store, cid):
        for dev in loop.find_by_backing_file(str(storage.image_path(store.container_dir(cid)))):
            with GoingOn(failures, f"detaching loop device {dev} of container {cid}"):
                loop.detach(dev)
                removed.append(f"loop device {dev} of container {cid}")
    return False


def finish_storage_change(store: Store, cid: str, removed: list[str], failures: list[str]) -> None:
    from . import storage_ops

    with GoingOn(failures, f"finishing the storage change of container {cid}"):
        if storage_ops.finish_interrupted_change(store, store.container_config(cid)):
            removed.append(f"half-done storage change of container {cid} (finished it)")


def clean_orphan_cgroups(store: Store, keep: set[str]) -> list[str]:
    from . import cgroups

    out = []
    for cid in cgroups.list_container_cgroups(store.folder_id()):
        if cid in keep:
            continue
        cgroup = runstate.container_cgroup(store, cid)
        cgroup.kill_all()
        cgroup.remove()
        out.append(f"cgroup of container {cid}")
    if not keep:
        cgroups.remove_parent_if_empty(store.folder_id())
    return out


def clean_orphan_veths(store: Store, keep: set[str]) -> list[str]:
    """This folder's veths and anti-spoofing chains of containers that do not run."""
    from . import network

    fid = store.folder_id()
    out = []
    for veth, cid in network.list_kiwi_veths(fid).items():
        if cid not in keep:
            network.detach_container(cid, fid)
            out.append(f"network device {veth}")
    for veth, cid in network.own_port_chains(network.bridge_name(), fid).items():
        if cid not in keep:
            network.forget_port(network.bridge_name(), veth)
            out.append(f"anti-spoofing rules of {veth}")
    return out


def clean_sessions(store: Store) -> list[str]:
    from . import sessions

    return sessions.cleanup(store)


def staging_owner(name: str) -> int | None:
    """Staging entries are named <what>-<pid>-<rest>; the pid tells if their writer lives."""
    parts = name.split("-")
    for part in parts[1:3]:
        if part.isdigit():
            return int(part)
    return None


def clean_copy_leftovers(store: Store) -> list[str]:
    """The .kiwi-cp-* staging entries killed `kiwi cp`s left on the host, as recorded
    (copyfiles.StagingRecords); before clean_tmp, which would drop the records."""
    from . import copyfiles

    return copyfiles.remove_leftovers(str(store.tmp_dir), pid_alive)


def clean_tmp(store: Store, failures: list[str]) -> list[str]:
    out: list[str] = []
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
        with GoingOn(failures, "removing half-written files"):
            remove_tree(path, ignore_errors=True)  # all it can
            if os.path.lexists(path):
                remove_tree(path)  # raises what stopped it
            out.append(f"half-written {path}")
    return out


def clean_unpack_leftovers(store: Store) -> list[str]:
    """Temporary folders of launcher unpacks that were killed. Taken under the
    launcher's own lock (cffi_build/launcher.c), so no unpack is running."""
    import fcntl

    try:
        fd = os.open(store.unpack_dir / ".lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    out = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for name in os.listdir(store.unpack_dir):
            path = store.unpack_dir / name
            if name.startswith(".tmp-") and path.is_dir() and not path.is_symlink():
                remove_tree(path, ignore_errors=True)
                out.append(f"half-unpacked {path}")
    finally:
        os.close(fd)
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


def clean_blob_temps(store: Store) -> list[str]:
    """.add-/.layer-<pid>-... files of OCI blob writers that died; a .partial
    download stays, the next pull resumes it."""
    from .oci.blobs import cache_dir

    out = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(cache_dir(store)):
            owner = staging_owner(name) if name.startswith((".add-", ".layer-")) else None
            if owner is None or pid_alive(owner):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cache_dir(store) / name)
            out.append(f"half-written {cache_dir(store) / name}")
    return out


def clean_abandoned_restores(store: Store, failures: list[str]) -> list[str]:
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
        if owner is None or runstate.owner_alive(owner):
            continue
        with GoingOn(failures, f"removing image {meta['name']} restored by a killed create"):
            if meta["name"] in used:
                snapshots.release_restored(store, meta["name"])
            else:
                images.delete_image(store, meta["name"])
                out.append(f"image {meta['name']} restored by a killed create")
    return out


def clean_ipam(store: Store) -> list[str]:
    """Leases (addresses, user id ranges) of this folder's deleted containers, and of
    folders that are provably gone (ipam.prune)."""
    from . import hoststate, ipam

    with store.lock(), hoststate.leases(store) as state:
        ipam.adopt_old_state(state, store)
        return ipam.prune(state, store)


def clean_nat() -> list[str]:
    from . import network

    # Only a bridge Kiwi made, with no container of any folder left on it.
    return network.remove_bridge_if_unused()
