"""The kiwi-data folder's layout, told with os alone: where it is by default, the names
of its folders and records, what a container id looks like, which container a name or
prefix means, and whether a runtime record's init is alive.

The Store (store.py), runstate.py and the quick `list` and `attach` (listing.py,
quickattach.py, which import no pathlib, json or re: issue 20) all read them here, so
that the quick paths cannot drift from the Store. Import nothing heavier than peek.
"""

from __future__ import annotations

import os
import sys

from .peek import process_start_time

DATA_FOLDER = "kiwi-data"  # beside the kiwi that runs, unless KIWI_ROOT names one
IMAGES = "images"
CONTAINERS = "containers"
MOUNTS = "mounts"  # one runtime folder per started container
LOCKS = ".locks"  # a lock file per container and per data-folder-wide operation
PRIVATE_DIRS = (IMAGES, CONTAINERS, MOUNTS, "exports", ".tmp", LOCKS)  # root's alone (0700)
FOLDER_ID = "folder-id"  # the data folder's id: names its cgroups, leases and bridge locks
OLD_MOUNTS = "run"  # what an older Kiwi called mounts/
CONFIG = "config.json"  # in a container's folder
IMAGE_RECORD = "image.json"  # in an image's folder
RUNTIME_RECORD = "runtime.json"  # in a runtime folder: the init of the running container
MOUNT_RECORD = "mount.json"  # in a runtime folder: where `kiwi mount` put it
FREEZE_LEASE = "freeze.json"  # in a runtime folder: freeze.py's lease
SESSIONS = "sessions"  # in a runtime folder: the session records

HEX = "0123456789abcdef"
ID_LEN = 12
GO_ID_LEN = 24  # a Go Kiwi container's folder (gokiwi.GO_ID_RE)


def is_hex(name: str, length: int) -> bool:
    return len(name) == length and not name.strip(HEX)


def is_container_id(text: str) -> bool:
    return is_hex(text, ID_LEN)


def executable_dir() -> str:
    """Where kiwi-data lives by default: beside the frozen ./kiwi (the one-file launcher
    names itself in $KIWI_EXECUTABLE), or the checkout in source mode. The launcher
    (cffi_build/launcher.c) finds the data folder by the same rule."""
    if getattr(sys, "frozen", False):
        kiwi = os.environ.get("KIWI_EXECUTABLE") or sys.executable
    else:
        kiwi = os.path.dirname(__file__)  # the package: its parent is the checkout
    return os.path.dirname(os.path.realpath(kiwi))


def data_folder() -> str:
    """KIWI_ROOT, else kiwi-data beside the kiwi that runs; ValueError for a relative KIWI_ROOT."""
    root = os.environ.get("KIWI_ROOT")
    if not root:
        return os.path.join(executable_dir(), DATA_FOLDER)
    if not os.path.isabs(root):
        raise ValueError(f"KIWI_ROOT must be an absolute path, not {root!r}")
    return root


def find_container(ref: str, ids: list[str], name_of) -> list[str]:
    """The containers ref means: an id, else the one named so (name_of(cid) -> its name or
    None), else those whose id starts with ref. Two or more: an ambiguous prefix."""
    if ref in ids:
        return [ref]
    for cid in ids:
        if name_of(cid) == ref:
            return [cid]
    if 0 < len(ref) <= ID_LEN and not ref.strip(HEX):
        return [cid for cid in ids if cid.startswith(ref)]
    return []


BOOT_ID = "/proc/sys/kernel/random/boot_id"
_boot: list = []  # boot_id's answer, once read


def boot_id() -> str | None:
    """The kernel's random id of this boot (None when procfs does not have it), read once."""
    if not _boot:
        try:
            fd = os.open(BOOT_ID, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _boot.append(os.read(fd, 64).decode("ascii").strip() or None)
            finally:
                os.close(fd)
        except (OSError, UnicodeDecodeError):
            _boot.append(None)
    return _boot[0]


def live_init(record: dict, real_root: str) -> int | None:
    """A runtime record's init pid while that very process lives (a recycled pid has another
    start time) and the record is this data folder's (real_root: its resolved path; a
    record copied along with the folder names the original's init) and this boot's (the
    record outlives a host crash, and the next boot may give its pid, at the same start
    time, to anyone; a record of an older Kiwi has no boot); else None."""
    pid = record.get("init_pid")
    if type(pid) is not int or pid <= 1:
        return None
    boot = record.get("boot")
    if boot is not None and boot != boot_id():
        return None
    if process_start_time(pid) != record.get("init_start_time"):
        return None
    if record.get("root", real_root) != real_root:
        return None
    return pid
