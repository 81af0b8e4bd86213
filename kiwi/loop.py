"""Loop devices through ioctls (no losetup).

Autoclear: a device attached with autoclear=True frees itself when its last
opener goes away. A mount counts as an opener, so the usual life is

    with loop.attach(state_img) as dev:      # holds /dev/loopN open
        syscalls.mount(dev, target, "ext4")  # the mount now holds it too
    # ... later: umount(target) -> the kernel detaches the device by itself

`attach` therefore returns a LoopDevice: the "/dev/loopN" string that also keeps
an fd on the device until release() / the end of the with block / garbage
collection. Releasing before mounting would detach the device at once.
"""

import errno
import os
import time
from pathlib import Path

from kiwi import syscalls as sc
from kiwi._sys import ffi

CONTROL = "/dev/loop-control"
SYS_BLOCK = Path("/sys/block")

# Another attacher may win the free device between GET_FREE and CONFIGURE.
_RACE_ERRNOS = (errno.EBUSY, errno.ENXIO, errno.ENOENT, errno.EAGAIN)
_MAX_ATTEMPTS = 200


class LoopDevice(str):
    """'/dev/loopN' plus an open fd that keeps an autoclear device alive."""

    def __new__(cls, path: str, fd: int | None = None):
        device = super().__new__(cls, path)
        device.fd = fd
        return device

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def __del__(self):
        self.release()


def attach(backing_file, autoclear: bool = True, read_only: bool = False) -> LoopDevice:
    """Attach backing_file to a free loop device and return its path."""
    mode = os.O_RDONLY if read_only else os.O_RDWR
    backing = os.open(backing_file, mode | os.O_CLOEXEC)
    try:
        flags = _lo_flags(autoclear, read_only)
        return _attach_fd(backing, os.fsencode(os.path.abspath(backing_file)), flags)
    finally:
        os.close(backing)  # the loop device holds its own reference


def _lo_flags(autoclear: bool, read_only: bool) -> int:
    flags = sc.LO_FLAGS_AUTOCLEAR if autoclear else 0
    return flags | (sc.LO_FLAGS_READ_ONLY if read_only else 0)


def _attach_fd(backing: int, name: bytes, flags: int) -> LoopDevice:
    control = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_MAX_ATTEMPTS):
            number = sc.ioctl_int(control, sc.LOOP_CTL_GET_FREE)
            device = _try_bind(f"/dev/loop{number}", backing, name, flags)
            if device is not None:
                return device
            time.sleep(0.001)
    finally:
        os.close(control)
    raise OSError(errno.EBUSY, f"{os.strerror(errno.EBUSY)}: no loop device could be claimed")


def _try_bind(path: str, backing: int, name: bytes, flags: int) -> LoopDevice | None:
    """Bind backing to path; None when another attacher got there first."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in _RACE_ERRNOS:  # node not there yet, or device being removed
            return None
        raise
    try:
        _configure(fd, backing, name, flags)
    except OSError as error:
        os.close(fd)
        if error.errno in _RACE_ERRNOS:
            return None
        raise
    return LoopDevice(path, fd)


def _configure(fd: int, backing: int, name: bytes, flags: int) -> None:
    info = ffi.new("struct loop_config *")
    info.fd = backing
    info.info.lo_flags = flags
    name = name[: sc.LO_NAME_SIZE - 1]  # informational (losetup shows it)
    ffi.memmove(info.info.lo_file_name, name, len(name))
    try:
        sc.ioctl_ptr(fd, sc.LOOP_CONFIGURE, info)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
        _configure_legacy(fd, backing, info)  # kernel < 5.8


def _configure_legacy(fd: int, backing: int, info) -> None:
    sc.ioctl_int(fd, sc.LOOP_SET_FD, backing)
    try:
        sc.ioctl_ptr(fd, sc.LOOP_SET_STATUS64, ffi.addressof(info.info))
    except OSError:
        sc.ioctl_int(fd, sc.LOOP_CLR_FD)
        raise


def detach(device) -> None:
    """Detach now, or as soon as the last user (e.g. a mount) lets go."""
    if isinstance(device, LoopDevice):
        device.release()
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.ioctl_int(fd, sc.LOOP_CLR_FD)
    except OSError as error:
        if error.errno != errno.ENXIO:  # ENXIO: not bound (already detached)
            raise
    finally:
        os.close(fd)


def refresh_capacity(device) -> None:
    """Make the device follow its grown backing file (then resize2fs online)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.ioctl_int(fd, sc.LOOP_SET_CAPACITY)
    finally:
        os.close(fd)


def size_bytes(device) -> int:
    """Current size of the device as the kernel sees it."""
    name = os.path.basename(device)
    return int((SYS_BLOCK / name / "size").read_text()) * 512


def backing_file(device) -> str | None:
    """Path of the file behind device, None when unbound."""
    try:
        text = (SYS_BLOCK / os.path.basename(device) / "loop" / "backing_file").read_text()
    except FileNotFoundError:
        return None
    return text.rstrip("\n").removesuffix(" (deleted)")


def find_by_backing_file(path) -> list[str]:
    """Devices currently backed by path (for cleanup), lowest number first.

    The kernel reports the path as seen from its mount namespace when it was
    attached; callers compare paths from the same (host) view.
    """
    wanted = os.path.realpath(path)
    found = []
    for entry in SYS_BLOCK.glob("loop*"):
        if backing_file(entry.name) == wanted:
            found.append(entry.name)
    found.sort(key=lambda name: int(name[4:]))
    return [f"/dev/{name}" for name in found]
