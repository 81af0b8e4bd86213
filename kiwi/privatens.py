"""Run a function in a forked child with its own private mount namespace.

Whatever the function mounts disappears with the child: a crash can never
leave a mount on the host. Errors come back to the caller as KiwiError.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal

from .errors import KiwiError, describe, traceback_if_debug
from .store import host_full, is_disk_full


def run(fn, *args, private_namespace: bool = True):
    """fn(*args) in a forked child, by default with a private mount namespace
    (without one, fn switches namespaces itself); returns its (picklable) result."""
    from . import syscalls as sc

    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            # A helper must not outlive a killed kiwi: it would go on writing
            # (a snap of a container no longer frozen) and hold its locks.
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            if private_namespace:
                sc.unshare(sc.CLONE_NEWNS)
                sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            payload = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            traceback_if_debug()
            message = describe(e)
            if isinstance(e, OSError) and is_disk_full(e):
                message = host_full(e.filename or ".", "writing it").message
            payload = ("error", message)
        try:
            data = pickle.dumps(payload)
        except Exception as e:  # noqa: BLE001
            data = pickle.dumps(("error", f"unpicklable result: {e}"))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
        os._exit(0)
    os.close(write_fd)
    chunks = []
    try:
        while True:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:  # e.g. a signal turned into an exception: stop the helper first
        stop_helper(pid)
        raise
    finally:
        os.close(read_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if not chunks:
        raise KiwiError("a helper process died unexpectedly; run 'kiwi cleanup' and try again")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise KiwiError(value)
    return value


def stop_helper(pid: int, grace: float = 2.0) -> None:
    """SIGTERM first: a helper that inherited our signal handlers unwinds and removes its
    work files; SIGKILL when it has not ended after grace seconds."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


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
