"""The everyday `kiwi stop c [--time N]` of a running container (issue 20).

Decided with os alone, under the container's lock (the file Store.container_lock
flocks), from listing.py's readers and what the start recorded in runtime.json:
its init alive, its cgroup's cgroup.procs files (runtime.entry_facts), its data
folder's id. Then it goes on as runtime.stop does (stopping.terminate, then
runtime.finish_stop: the grace period, SIGKILL, teardown), without commands.py,
the sessions, freeze.py, Store.open and the cgroup mounts' parsing before the
SIGTERM. Anything else (not root, a container stopped, mounted, frozen or with
session files, a record of another Kiwi build or folder, a cgroup where the
settings would not look, or with cgroups below it) raises listing.Unusual with
nothing done, and commands.cmd_stop answers as it always did.

runtime.json is host root's (0600 in a folder only root reads, checked): nothing in
the container writes it. What the container does influence (its processes, their
names, its cgroup's members) only decides whether the bridge goes early, as in
runtime.stop: never which processes are signalled or what is removed.
"""

from __future__ import annotations

import os

from .layout import FOLDER_ID, HEX, ID_LEN, LOCKS, MOUNT_RECORD, MOUNTS, RUNTIME_RECORD, SESSIONS
from .listing import RunningState, Unusual, check_layout, data_root, exists, refuse_go_data
from .quickattach import check_private, facts_of, recorded_procs, resolve
from .stopping import only_init_and_helpers

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .stopping import EarlyBridgeRelease

CGROUP_PARENT_ENV = "KIWI_CGROUP_PARENT"  # cgroups.PARENT_ENV
CGROUP_PREFIX = "kiwi-"  # cgroups.NAME_PREFIX


class QuickStop:
    """One container checked for a quick stop, its lock held until run() ends (or close())."""

    def __init__(self, root: str, cid: str, lock: int):
        self.root, self.cid, self.lock = root, cid, lock
        folder = f"{root}/{MOUNTS}/{cid}"
        self.record = RunningState(root)(cid)["record"]
        check_private(f"{folder}/{RUNTIME_RECORD}")
        if exists(f"{folder}/{MOUNT_RECORD}") or exists(f"{folder}/{SESSIONS}"):
            raise Unusual("mounted, or sessions to end: runtime.stop with sessions.stop_all")
        self.folder_id = recorded_folder(root, self.record)
        cgroups = recorded_cgroups(self.record, cid, self.folder_id)
        for directory in cgroups:
            refuse_frozen_or_nested(directory)
        pids = [pid for directory in cgroups for pid in cgroup_pids(directory)]
        self.idle = bool(self.record.get("veth")) and only_init_and_helpers(pids, self.record["init_pid"])

    def run(self, grace: int) -> str:
        """Stop it as runtime.stop does; returns its id."""
        try:
            from .stopping import finish_beside, terminate

            # The signal and the bridge's release first: the runtime's imports overlap them.
            early = terminate(self.record, self.idle, self.cid, self.folder_id)
            finish_beside(early, lambda: self.finish(early, grace))
            return self.cid
        finally:
            self.close()

    def finish(self, early: EarlyBridgeRelease | None, grace: int) -> None:
        from pathlib import Path

        from .runtime import finish_stop
        from .store import Store

        finish_stop(Store(Path(self.root)), self.cid, self.record, early, grace)

    def close(self) -> None:
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1


def prepare(args, notice: Callable[[str], None] | None = None) -> QuickStop:
    """The container of `kiwi stop <c>`, checked under its lock; Unusual (or an OSError)
    when cmd_stop must answer, with nothing done and the lock released. notice: told
    when another kiwi keeps the lock past a moment (as Store.lock_wait_notice)."""
    if os.geteuid() != 0:
        raise Unusual("cmd_stop answers these")
    root = data_root()
    check_layout(root)
    refuse_go_data(root)
    cid = resolve(root, args.container)
    lock = lock_container(root, cid, f"container {args.container}", notice)
    try:
        return QuickStop(root, cid, lock)
    except BaseException:
        os.close(lock)
        raise


def lock_container(root: str, cid: str, what: str, notice: Callable[[str], None] | None) -> int:
    """Store.container_lock's flock, held by the fd returned (its folder exists: check_layout
    saw the data folder made, and a running container was started by a Store that made it)."""
    import fcntl

    if not os.path.isdir(f"{root}/{LOCKS}"):
        raise Unusual("no lock folder: Store.ensure_layout makes it")
    fd = os.open(f"{root}/{LOCKS}/{cid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if notice is not None:
            from .lockwait import wait_telling

            wait_telling(fd, what, notice)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def recorded_folder(root: str, record: dict) -> str:
    """The data folder's id (Store.folder_id), when it is the one the start recorded."""
    with open(f"{root}/{FOLDER_ID}") as f:
        folder_id = f.read(64).strip()
    if len(folder_id) != ID_LEN or folder_id.strip(HEX) or record.get("folder") != folder_id:
        raise Unusual("a folder id the start did not record: Store.folder_id checks it in")
    return folder_id


def recorded_cgroups(record: dict, cid: str, folder_id: str) -> list[str]:
    """The container's cgroup directories the start recorded, where the current settings
    put them too (cgroups.Cgroup.for_container); Unusual otherwise."""
    parent = (os.environ.get(CGROUP_PARENT_ENV) or f"/{CGROUP_PREFIX}{folder_id}").strip("/")
    tail = f"/{parent}/{CGROUP_PREFIX}{cid}/cgroup.procs"
    procs = recorded_procs(facts_of(record))
    if not parent or not all(path.endswith(tail) for path in procs):
        raise Unusual("a cgroup where KIWI_CGROUP_PARENT does not say: the Cgroup says where")
    return [os.path.dirname(path) for path in procs]


def refuse_frozen_or_nested(directory: str) -> None:
    """freeze.thaw_unleased thaws a frozen cgroup; Cgroup.pids walks the cgroups below
    (a container whose cgroup is not delegated to it makes none)."""
    with os.scandir(directory) as entries:
        if any(entry.is_dir(follow_symlinks=False) for entry in entries):
            raise Unusual("cgroups below the container's: Cgroup.pids walks them")
    v1_state = read_if_there(f"{directory}/freezer.state")
    v2_events = read_if_there(f"{directory}/cgroup.events") or ""
    if (v1_state is not None and v1_state.strip() != "THAWED") or "frozen 1" in v2_events.splitlines():
        raise Unusual("a frozen cgroup: freeze.thaw_unleased thaws it")


def read_if_there(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def cgroup_pids(directory: str) -> list[int]:
    with open(f"{directory}/cgroup.procs") as f:
        return [int(line) for line in f.read().split()]
