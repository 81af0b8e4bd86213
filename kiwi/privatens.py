"""Run a function in a forked child with its own private mount namespace.

Whatever the function mounts disappears with the child: a crash can never
leave a mount on the host. Errors come back to the caller as KiwiError.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def run(fn, *args, private_namespace: bool = True):
    """fn(*args) in a forked child, by default with a private mount namespace
    (without one, fn switches namespaces itself); returns its result (plain JSON data)."""
    from . import proc

    return proc.run_child(in_helper, os.getpid(), private_namespace, fn, *args)


def in_helper(parent: int, private_namespace: bool, fn, *args):
    """The child's side of run()."""
    from . import syscalls as sc
    from .store import host_full, is_disk_full

    # A helper must not outlive a killed kiwi: it would go on writing
    # (a snap of a container no longer frozen) and hold its locks.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    if private_namespace:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    try:
        return fn(*args)
    except OSError as e:
        if is_disk_full(e):
            raise host_full(Path(os.fsdecode(e.filename or ".")), "writing it") from e
        raise


@contextlib.contextmanager
def work_folder(store, what: str):
    """Inside a private namespace: a new folder <what>-<pid>-... in the data folder's .tmp
    (`kiwi cleanup` leaves it while this pid lives) for what the caller mounts at its
    state/ and merged/; on the way out they are detached and the folders removed with
    rmdir alone, so a mount that stays is never emptied."""
    import tempfile

    work = tempfile.mkdtemp(prefix=f"{what}-{os.getpid()}-", dir=str(store.tmp_dir))
    try:
        yield work
    finally:
        release_work_folder(work)


def release_work_folder(work: str) -> None:
    from . import syscalls as sc

    for sub in ("merged", "state"):
        path = os.path.join(work, sub)
        with contextlib.suppress(OSError):
            sc.umount(path, sc.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(path)
    with contextlib.suppress(OSError):
        os.rmdir(work)


def mount_stopped_root(store, cid: str, lower: str, work: str) -> str:
    """Inside a private namespace: a stopped container's root (its state over the image's
    lower tree) at work/merged, which it returns."""
    from . import rootfs

    state = mount_state(store, cid, os.path.join(work, "state"))
    merged = os.path.join(work, "merged")
    os.mkdir(merged, 0o700)
    rootfs.mount_overlay(lower, state, merged)
    return merged


def mount_state(store, cid: str, mountpoint: str) -> str:
    """Inside a private namespace: the container's state folder (upper/ work/) at mountpoint
    when it lives in state.img, or the plain state/ folder. Returns the path holding upper/."""
    from . import storage

    cdir = store.container_dir(cid)
    img = storage.image_path(cdir)
    if not img.exists():
        return str(storage.folder_path(cdir))
    os.makedirs(mountpoint, mode=0o700, exist_ok=True)
    mount_ext4_image(str(img), mountpoint)
    return mountpoint


def mount_ext4_image(img: str, mountpoint: str) -> None:
    """Mount an ext4 image file. When a loop device already serves it (the container
    runs, or is mounted), mount THAT device: the kernel then shares the one
    superblock, while a second loop device would be a second, corrupting writer."""
    from . import loop
    from . import syscalls as sc

    flags = sc.MS_NOSUID | sc.MS_NODEV
    for dev in loop.find_by_backing_file(img):
        try:
            sc.mount(dev, mountpoint, "ext4", flags, None)
            return
        except OSError:
            continue
    with loop.attach(img) as dev:
        sc.mount(str(dev), mountpoint, "ext4", flags, None)
