"""`kiwi mount` / `kiwi unmount`: the one host-visible mount of a container.

A running container exposes its LIVE root (a clone of the very overlay mount
it runs on, never a second overlay on the same upper dir); a stopped one gets
an overlay built in a throw-away namespace and moved onto the target.
"""

from __future__ import annotations

import os

from . import privatens
from .errors import KiwiError
from .store import Store, atomic_write_json

SYSTEM_DIRS = {
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/tmp",
    "/var/lib",
    "/var/log",
    "/snap",
}
SYSTEM_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/run",
)


def check_target(store: Store, target: str) -> str:
    path = os.path.realpath(target)
    if path in SYSTEM_DIRS or any(path == t or path.startswith(t + "/") for t in SYSTEM_TREES):
        raise KiwiError(
            f"refusing to mount over the system folder {path}; choose an empty folder of your own"
        )
    root = os.path.realpath(store.root)
    if path == root or path.startswith(root + "/") or root.startswith(path + "/"):
        raise KiwiError(f"refusing to mount at {path}: it is inside or above Kiwi's data folder")
    if not os.path.isdir(path):
        raise KiwiError(f"{target} is not a folder; create an empty folder to mount at")
    if os.listdir(path):
        raise KiwiError(f"{target} is not empty; mount at an empty folder")
    return path


def mount_id_of(path: str) -> int | None:
    with open("/proc/self/mountinfo") as f:
        found = None
        for line in f:
            fields = line.split()
            if fields[4] == path:
                found = int(fields[0])  # the last one is the top of the stack
    return found


def mount(store: Store, cid: str, target: str) -> str:
    from . import runstate

    with store.container_lock(cid):
        existing = runstate.read_mount(store, cid)
        if existing:
            raise KiwiError(
                f"container {cid} is already mounted at {existing}; run 'kiwi unmount {cid}' first"
            )
        path = check_target(store, target)
        store.runtime_dir(cid).mkdir(mode=0o700, parents=True, exist_ok=True)
        # Recorded before the mount appears: a kiwi killed right after it must not
        # leave a mount of the container's filesystem that no command knows of.
        atomic_write_json(runstate.mount_file(store, cid), {"target": path, "mount_id": None}, 0o600)
        try:
            mount_container(store, cid, path)
        except BaseException:
            if mount_id_of(path) is None:
                runstate.mount_file(store, cid).unlink(missing_ok=True)
            raise
        atomic_write_json(
            runstate.mount_file(store, cid), {"target": path, "mount_id": mount_id_of(path)}, 0o600
        )
        return path


def mount_container(store: Store, cid: str, path: str) -> None:
    from . import runstate

    record = runstate.read_runtime(store, cid)
    if record:
        privatens.run(clone_live_root, record["init_pid"], path, private_namespace=False)
    else:
        from .runtime import refuse_if_left_running
        from .storage_ops import finish_interrupted_change

        refuse_if_left_running(store, cid)
        config = store.container_config(cid)
        finish_interrupted_change(store, config)
        lower = str(store.image_dir(config["image"]) / "rootfs")
        privatens.run(mount_stopped_overlay, store, cid, lower, path)


def clone_live_root(init_pid: int, target: str) -> None:
    from . import syscalls as sc

    host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    container_ns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    sc.setns(container_ns, sc.CLONE_NEWNS)
    tree = sc.open_tree(sc.AT_FDCWD, "/", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    sc.setns(host_ns, sc.CLONE_NEWNS)
    attach_to_host(tree, target)


def attach_to_host(tree: int, target: str) -> None:
    """Move a detached container tree onto target, nosuid and nodev: a setuid-root file the
    container wrote must not run as root for a host user, nor its device nodes open."""
    from . import syscalls as sc

    sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    sc.move_mount(tree, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)


def mount_stopped_overlay(store: Store, cid: str, lower: str, target: str) -> None:
    """Runs in a private namespace: state + overlay there, then only the overlay moves to the host."""
    from . import syscalls as sc

    # The kiwi process that forked us still lives in the namespace the user sees.
    host_ns = os.open(f"/proc/{os.getppid()}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    with privatens.work_folder(store, "mount") as work:
        merged = privatens.mount_stopped_root(store, cid, lower, work)
        tree = sc.open_tree(sc.AT_FDCWD, merged, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    sc.setns(host_ns, sc.CLONE_NEWNS)
    attach_to_host(tree, target)


def unmount(store: Store, cid: str) -> str:
    from . import runstate, runtime
    from . import syscalls as sc
    from .store import read_json

    with store.container_lock(cid):
        try:
            record = read_json(runstate.mount_file(store, cid))
        except FileNotFoundError:
            raise KiwiError(f"container {cid} is not mounted") from None
        target = record.get("target")
        recorded = record.get("mount_id")
        if target and mount_id_of(target) is not None and recorded in (None, mount_id_of(target)):
            try:
                sc.umount(target, 0)
            except OSError as e:
                raise KiwiError(
                    f"cannot unmount {target}: {e.strerror}; close files and shells using it"
                ) from None
        os.unlink(runstate.mount_file(store, cid))
        if not runstate.read_runtime(store, cid):
            runtime.teardown(store, cid)
        return target or "-"
