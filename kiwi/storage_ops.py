"""`set --storage`: grow (online when running), shrink (stopped), switch to or from 'host'.

Every change of a stopped container's storage is journaled: resize.json (old
size, new size) is written before the image is touched and removed only after
config.json holds the new size. The work is done under the container lock by
the process doing it (resize2fs inherits the lock), and every step can run
again, so start, set, snap, commit and mount finish a resize that a killed
kiwi left half done.
"""

from __future__ import annotations

import os  # tempfile and subprocess where used: every start imports this module

from . import privatens, storage
from .errors import KiwiError
from .fstree import remove_tree
from .sizes import format_size
from .store import atomic_write_json, read_json

INTENT = "resize.json"


def describe(size: int | None) -> str:
    return "host (no limit)" if size is None else format_size(size)


def change_storage(store, config: dict, new_size: int | None, running: bool) -> list[str]:
    cid = config["id"]
    cdir = store.container_dir(cid)
    current = config.get("storage")
    if running:
        return change_running(store, config, new_size)
    refuse_if_mounted(store, cid)
    try:
        pending = read_intent(cdir)
    except KiwiError:
        pending = {}  # damaged: the change asked for now replaces it
    if new_size == current and pending is None and (current is None or storage.image_agrees(cdir, current)):
        return []
    if new_size is not None and storage.image_path(cdir).exists():
        storage.check_new_size(storage.used_bytes(cdir) or 0, new_size, current)
    journaled_change(store, config, new_size)
    return [f"storage is now {describe(new_size)}"]


def change_running(store, config: dict, new_size: int | None) -> list[str]:
    cid = config["id"]
    current = config.get("storage")
    if new_size == current:
        return []
    if current is None or new_size is None:
        raise KiwiError("switching storage to or from 'host' needs the container stopped: kiwi stop " + cid)
    if new_size < current:
        raise KiwiError(f"shrinking storage needs the container stopped: kiwi stop {cid}")
    storage.check_new_size(storage.used_bytes(store.container_dir(cid)) or 0, new_size, current)
    if not can_resize_online():
        raise KiwiError(
            "this host withholds CAP_SYS_RESOURCE from Kiwi, which growing a mounted ext4 "
            f"needs; stop the container (kiwi stop {cid}) and run the same set again"
        )
    write_intent(store.container_dir(cid), current, new_size)  # killed: the next start grows offline
    grow_online(store, cid, new_size, config.get("storage_sparse", False))
    commit_size(store, config, new_size)
    return [f"storage grown to {format_size(new_size)} while running"]


def refuse_if_mounted(store, cid: str) -> None:
    """`kiwi mount` keeps the filesystem mounted: resizing it underneath would corrupt it."""
    from . import runstate

    target = runstate.read_mount(store, cid)
    if target:
        raise KiwiError(f"container {cid} is mounted at {target}; run 'kiwi unmount {cid}' first")


def intent_path(cdir):
    return cdir / INTENT


def read_intent(cdir) -> dict | None:
    """The pending change, or None; a damaged record is refused, never guessed at."""
    try:
        intent = read_json(intent_path(cdir))
    except FileNotFoundError:
        return None
    new = intent.get("new") if isinstance(intent, dict) else 0
    if new is not None and (not isinstance(new, int) or isinstance(new, bool) or new < storage.MIN_STORAGE):
        raise KiwiError(
            f"{intent_path(cdir)} is damaged; give the size again: kiwi set {cdir.name} --storage <size>"
        )
    return intent


def write_intent(cdir, old: int | None, new: int | None) -> None:
    atomic_write_json(intent_path(cdir), {"old": old, "new": new}, mode=0o600)


def journaled_change(store, config: dict, new_size: int | None) -> None:
    cdir = store.container_dir(config["id"])
    write_intent(cdir, config.get("storage"), new_size)
    bring_state_to(store, config, new_size)
    commit_size(store, config, new_size)


def commit_size(store, config: dict, new_size: int | None) -> None:
    """The config holds the new size only now that the state has it; then the journal goes."""
    from .containers import save_config

    config["storage"] = new_size
    save_config(store, config)
    intent_path(store.container_dir(config["id"])).unlink(missing_ok=True)


def bring_state_to(store, config: dict, size: int | None) -> None:
    """Every step checks what is already done, so this also finishes an interrupted change."""
    cid = config["id"]
    cdir = store.container_dir(cid)
    lock_fd = store.held_container_lock(cid)
    img, folder = storage.image_path(cdir), storage.folder_path(cdir)
    sparse = config.get("storage_sparse", False)
    if size is None:
        if img.exists():
            if not folder.is_dir():
                image_to_folder(store, cid)
            img.unlink(missing_ok=True)
        return
    if not img.exists():
        folder_to_image(cdir, size, sparse, lock_fd)
    if folder.exists():
        remove_tree(folder)
    storage.resize_image(cdir, size, sparse, lock_fd)
    privatens.run(mount_once, store, cid)


def mount_once(store, cid: str) -> None:
    """resize2fs zeroes the superblock's overhead count that `list` needs to show usage
    as df does; the kernel computes and stores it again on mount."""
    import tempfile

    from . import syscalls as sc

    mnt = tempfile.mkdtemp(prefix=f"remount-{os.getpid()}-", dir=str(store.tmp_dir))
    try:
        privatens.mount_state(store, cid, mnt)
        sc.umount(mnt, 0)
    finally:
        os.rmdir(mnt)


def finish_interrupted_change(store, config: dict) -> bool:
    """Under the container lock, stopped: finish what a killed `set --storage` began."""
    from . import runstate

    cdir = store.container_dir(config["id"])
    pending = read_intent(cdir)
    if pending is None or runstate.read_runtime(store, config["id"]):
        return False
    refuse_if_mounted(store, config["id"])
    try:
        bring_state_to(store, config, pending["new"])
    except KiwiError as e:
        raise KiwiError(
            f"a storage change to {describe(pending['new'])} was interrupted and cannot be "
            f"finished ({e.message}); run kiwi set {config['id']} --storage "
            f"{'host' if pending.get('old') is None else format_size(pending['old'])}"
        ) from None
    commit_size(store, config, pending["new"])
    return True


def can_resize_online() -> bool:
    """ext4's online resize ioctl needs CAP_SYS_RESOURCE; some sandboxes withhold it even from root."""
    from .security import CAPABILITIES

    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << CAPABILITIES["SYS_RESOURCE"]))
    return False


def grow_online(store, cid: str, new_size: int, sparse: bool) -> None:
    from . import loop

    cdir = store.container_dir(cid)
    img = storage.image_path(cdir)
    devices = loop.find_by_backing_file(str(img))
    if not devices:
        raise KiwiError(f"cannot find the loop device of running container {cid}; run 'kiwi cleanup'")
    storage.extend_file(img, new_size, sparse)
    loop.refresh_capacity(devices[0])
    privatens.run(resize_mounted, devices[0], str(store.tmp_dir))


def resize_mounted(device: str, tmp_root: str) -> None:
    """resize2fs grows a mounted ext4 only through a mount it can see in /proc/mounts;
    mounting the same device again here shares the container's superblock."""
    import tempfile

    from . import syscalls as sc

    mnt = tempfile.mkdtemp(prefix=f"resize-{os.getpid()}-", dir=tmp_root)
    mounted = False
    try:
        sc.mount(device, mnt, "ext4", sc.MS_NOSUID | sc.MS_NODEV, None)
        mounted = True
        storage.run_tool(["resize2fs", device], "growing the storage online")
    finally:
        if mounted:
            sc.umount(mnt, sc.MNT_DETACH)
        os.rmdir(mnt)


def folder_to_image(cdir, new_size: int, sparse: bool, lock_fd: int | None) -> None:
    folder = storage.folder_path(cdir)
    used = storage.folder_usage(folder) or 0
    if new_size < used + storage.GIB:
        raise KiwiError(
            f"{format_size(used)} is in use; choose a storage of at least {format_size(used + storage.GIB)}"
        )
    img = storage.image_path(cdir)
    tmp = img.with_name("state.img.tmp")
    try:
        storage.format_image(tmp, new_size, sparse, str(folder), lock_fd)
        os.rename(tmp, img)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_tree(folder)


def image_to_folder(store, cid: str) -> None:
    cdir = store.container_dir(cid)
    folder = storage.folder_path(cdir)
    tmp = cdir / "state.tmp"
    remove_tree(tmp, ignore_errors=True)
    try:
        privatens.run(copy_state_out, store, cid, str(tmp))
        os.rename(tmp, folder)
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
    storage.image_path(cdir).unlink()


def copy_state_out(store, cid: str, dest: str) -> None:
    import subprocess
    import tempfile

    mnt = tempfile.mkdtemp(prefix="state-", dir=str(store.tmp_dir))
    try:
        src = privatens.mount_state(store, cid, mnt)
        done = subprocess.run(["cp", "-a", "--", src, dest], capture_output=True, text=True)
        if done.returncode:
            raise KiwiError(f"copying the container's state failed: {done.stderr.strip()}")
        for junk in ("lost+found",):
            remove_tree(os.path.join(dest, junk), ignore_errors=True)
    finally:
        from . import syscalls as sc

        try:
            sc.umount(mnt, sc.MNT_DETACH)
        except OSError:
            pass
        os.rmdir(mnt)


def change_reservation(store, config: dict, sparse: bool) -> list[str]:
    """--sparse stops reserving (freed blocks go back to the host from the next start on);
    --reserve claims the whole limit on the host's disk now."""
    cdir = store.container_dir(config["id"])
    if config.get("storage_sparse", False) == sparse:
        return []
    img = storage.image_path(cdir)
    if not sparse and config.get("storage") is not None and img.exists():
        storage.extend_file(img, img.stat().st_size, sparse=False)
    config["storage_sparse"] = sparse
    return [
        "storage is sparse: not reserved on the host's disk"
        if sparse
        else "storage is reserved on the host's disk"
    ]
