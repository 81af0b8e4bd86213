"""`set --storage`: grow (online when running), shrink (stopped), switch to or from 'host'."""
from __future__ import annotations

import os
import subprocess
import tempfile

from . import privatens, storage
from .errors import KiwiError
from .fstree import remove_tree
from .sizes import format_size


def change_storage(store, config: dict, new_size: int | None, running: bool) -> list[str]:
    cid = config["id"]
    cdir = store.container_dir(cid)
    current = config.get("storage")
    if new_size == current:
        return []
    if current is None or new_size is None:
        if running:
            raise KiwiError("switching storage to or from 'host' needs the container stopped: kiwi stop " + cid)
        if new_size is None:
            image_to_folder(store, cid)
        else:
            folder_to_image(cdir, new_size)
        config["storage"] = new_size
        return [f"storage is now {'host (no limit)' if new_size is None else format_size(new_size)}"]
    used = storage.used_bytes(cdir) or 0
    if running:
        if new_size < current:
            raise KiwiError(f"shrinking storage needs the container stopped: kiwi stop {cid}")
        storage.check_new_size(used, new_size, current)
        grow_online(store, cid, new_size)
        config["storage"] = new_size
        return [f"storage grown to {format_size(new_size)} while running"]
    storage.check_new_size(used, new_size, current)
    storage.resize_offline(cdir, new_size)
    config["storage"] = new_size
    return [f"storage is now {format_size(new_size)}"]


CAP_SYS_RESOURCE = 24


def can_resize_online() -> bool:
    """ext4's online resize ioctl needs CAP_SYS_RESOURCE; some sandboxes withhold it even from root."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << CAP_SYS_RESOURCE))
    return False


def grow_online(store, cid: str, new_size: int) -> None:
    from . import loop
    if not can_resize_online():
        raise KiwiError("this host withholds CAP_SYS_RESOURCE from Kiwi, which growing a mounted ext4 "
                        f"needs; stop the container (kiwi stop {cid}) and run the same set again")
    cdir = store.container_dir(cid)
    img = storage.image_path(cdir)
    devices = loop.find_by_backing_file(str(img))
    if not devices:
        raise KiwiError(f"cannot find the loop device of running container {cid}; run 'kiwi cleanup'")
    storage.grow_file(cdir, new_size)
    loop.refresh_capacity(devices[0])
    privatens.run(resize_mounted, devices[0], str(store.tmp_dir))


def resize_mounted(device: str, tmp_root: str) -> None:
    """resize2fs grows a mounted ext4 only through a mount it can see in /proc/mounts;
    mounting the same device again here shares the container's superblock."""
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


def folder_to_image(cdir, new_size: int) -> None:
    folder = storage.folder_path(cdir)
    used = storage.folder_usage(folder) or 0
    if new_size < used + storage.GIB:
        raise KiwiError(f"{format_size(used)} is in use; choose a storage of at least {format_size(used + storage.GIB)}")
    img = storage.image_path(cdir)
    tmp = img.with_name("state.img.tmp")
    try:
        storage.size_image_file(tmp, new_size, create=True)
        storage.run_tool(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "kiwi-state", "-d", str(folder),
                          "-E", "root_owner=0:0", str(tmp)], "formatting the container's storage")
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
