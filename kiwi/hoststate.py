"""What every Kiwi data folder on this host shares: /var/lib/kiwi (KIWI_HOST_DIR).

Several data folders (two downloaded copies, or KIWI_ROOT) may use the same
bridge and subnet. Their addresses are leased in ONE host-wide file under ONE
lock, so they never hand out the same IP:

    leases.json = {"folders": {"<folder id>": {"path": "/srv/a/kiwi-data",
                                               "mount": "/srv", "dev": 2049}},
                   "subnets": {"10.44.0.0/16": {"next": 5, "free": [3],
                                   "owners": {"10.44.0.3": "<folder id>/<container id>"}}}}

`folders` remembers where each folder was last seen: it tells a moved folder
(same id, old path gone) from a copied one (same id, original still there),
and whether a folder is provably gone (its filesystem is mounted, the folder
is not there) or maybe only on a disk that is not mounted now. Per-folder
ranges that must never overlap (user namespace uid ranges) belong here too.
Bridge locks live beside it. Root only: the directory is 0700.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .errors import KiwiError, os_error_message

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path

    from .store import Store

# json, pathlib and files.py on first use: a stop takes its bridge's lock (lock_path)
# with os alone, before anything else needs them (issue 20).

HOST_DIR_ENV = "KIWI_HOST_DIR"
DEFAULT_HOST_DIR = "/var/lib/kiwi"
LEASES_FILE = "leases.json"
# A full /16 records ~65k owners, beyond read_json's default limit.
STATE_SIZE_LIMIT = 64 << 20


def host_dir() -> Path:
    """The host-wide state directory, made 0700 on first use."""
    from pathlib import Path

    return Path(host_dir_path())


def host_dir_path() -> str:
    """host_dir as a string, with os alone."""
    path = os.environ.get(HOST_DIR_ENV) or DEFAULT_HOST_DIR
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise KiwiError(os_error_message(e, "use", f"{path} for Kiwi's host-wide state")) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise KiwiError(f"{path} is not a directory owned by root; move it away")
    return path


def lock_file(name: str) -> Path:
    return host_dir() / name


def lock_path(name: str) -> str:
    """lock_file as a string, with os alone."""
    return os.path.join(host_dir_path(), name)


@contextlib.contextmanager
def leases(store: Store | None = None):
    """The host-wide lease state under the host lock; saved when the caller changed it.

    With a store, the folder is registered first (and renamed if it is a copy)."""
    from .files import atomic_write_json, flock, read_json

    if store is not None:
        store.folder_id()  # loaded (and checked in) before we hold the lock: flock does not nest
    with flock(lock_file("leases.lock")):
        path = host_dir() / LEASES_FILE
        try:
            state = read_json(path, limit=STATE_SIZE_LIMIT)
        except FileNotFoundError:
            state = {}
        state.setdefault("folders", {})
        state.setdefault("subnets", {})
        before = canonical(state)
        if store is not None:
            register_folder(state, store)
        yield state
        if canonical(state) != before:
            atomic_write_json(path, state, mode=0o600)


def leased_subnets() -> list[str]:
    """Every subnet Kiwi has leased addresses in on this host, whatever KIWI_SUBNET says
    now (leases.json keeps a subnet's entry for good). Read without the lock: the file is
    only ever replaced whole. [] when there is none or it cannot be read."""
    from .files import read_json

    try:
        state = read_json(host_dir() / LEASES_FILE, limit=STATE_SIZE_LIMIT)
    except (OSError, KiwiError):
        return []
    subnets = state.get("subnets") if isinstance(state, dict) else None
    return [text for text in subnets if isinstance(text, str)] if isinstance(subnets, dict) else []


def canonical(state: dict) -> str:
    import json

    return json.dumps(state, sort_keys=True)


# -- folders --------------------------------------------------------------------------


def check_in(store: Store) -> None:
    """Register the folder (a copy takes a new id here, before anything uses the old one)."""
    with leases(store):
        pass


def register_folder(state: dict, store: Store) -> None:
    """Record where this folder is; a copy of a folder that still exists gets a new id."""
    here = store.real_root
    seen = state["folders"].get(store.folder_id())
    if seen and seen.get("path") != here and holds_folder(seen["path"], store.folder_id(), here):
        store.renew_folder_id()
    state["folders"][store.folder_id()] = where(here)


def holds_folder(path: str, fid: str, other_than: str) -> bool:
    """Does `path` hold the data folder `fid`, and is it not the folder at `other_than`?"""
    from pathlib import Path

    try:
        same_id = (Path(path) / "folder-id").read_text()[:64].strip() == fid
        return same_id and not os.path.samefile(path, other_than)
    except OSError:
        return False


def where(path: str) -> dict:
    return {"path": path, "mount": mount_point(path), "dev": os.stat(path).st_dev}


def mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def folder_is_gone(record: dict) -> bool:
    """True only when the folder's filesystem is mounted and the folder is not on it.

    A folder on a disk that is not mounted now is not gone: its leases are kept."""
    path, mount, dev = record.get("path"), record.get("mount"), record.get("dev")
    if not (isinstance(path, str) and isinstance(mount, str) and isinstance(dev, int)):
        return False
    try:
        if not os.path.ismount(mount) or os.stat(mount).st_dev != dev:
            return False
    except OSError:
        return False
    return not os.path.lexists(path)
