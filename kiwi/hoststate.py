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
import json
import os
from pathlib import Path

from .errors import KiwiError
from .files import atomic_write_json, flock, read_json
from .hostdir import DEFAULT_HOST_DIR, HOST_DIR_ENV, host_dir_path  # noqa: F401 - named here too

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from .store import Store

LEASES_FILE = "leases.json"
# A full /16 records ~65k owners, beyond read_json's default limit.
STATE_SIZE_LIMIT = 64 << 20


def host_dir() -> Path:
    """The host-wide state directory, made 0700 on first use (hostdir.py)."""
    return Path(host_dir_path())


def lock_file(name: str) -> Path:
    return host_dir() / name


@contextlib.contextmanager
def leases(store: Store | None = None):
    """The host-wide lease state under the host lock; saved when the caller changed it.

    With a store, the folder is registered first (and renamed if it is a copy)."""
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
    try:
        state = read_json(host_dir() / LEASES_FILE, limit=STATE_SIZE_LIMIT)
    except (OSError, KiwiError):
        return []
    subnets = state.get("subnets") if isinstance(state, dict) else None
    return [text for text in subnets if isinstance(text, str)] if isinstance(subnets, dict) else []


def canonical(state: dict) -> str:
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
