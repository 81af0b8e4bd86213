"""`kiwi list`'s containers: their rows, the table, the sparse-storage warning.

The rows are read with os alone (peek.py): not the Store, the runtime, json,
re or pathlib, whose imports cost a list more than reading 100 containers
(issue 20). This reader knows the everyday cases only: a stopped container, a
running one with a live record, an ext4 or folder storage. Anything else (not
root, a data folder to migrate or to tighten, a mounted or half-started
container, an abandoned freeze, a damaged record, Go Kiwi's data) raises
Unusual before anything is shown, and commands.cmd_list answers the way it
always did: the two cannot disagree on a case only one of them knows.
"""

from __future__ import annotations

import os
import sys

from .idmap import is_privileged
from .peek import json_value, live_usage, process_start_time, superblock_usage
from .sizes import format_size

RECORD_LIMIT = 64 << 10  # a larger config or record is left to files.read_json (1 MB)
HEX = "0123456789abcdef"
ID_LEN = 12  # store.ID_LEN
GO_ID_LEN = 24  # gokiwi.GO_ID_RE
PRIVATE_DIRS = ("images", "containers", "mounts", "exports", ".tmp", ".locks")  # Store.private_dirs
LEASE = "freeze.json"  # freeze.LEASE: an abandoned one is thawed by runtime.status
COLUMNS = ["ID", "NAME", "STATUS", "IMAGE", "IPV4", "MEMORY", "CPU", "STORAGE", "NETWORK", "PRIVILEGED"]


class Unusual(Exception):
    """A case this reader leaves to commands.cmd_list."""


# --- the everyday list ------------------------------------------------------------


def containers_listing() -> tuple[str, str | None]:
    """(the table, the warning to print before it or None); Unusual when cmd_list must answer."""
    if os.geteuid() != 0:
        raise Unusual("records readable by root only: cmd_list says which")
    root = data_root()
    check_layout(root)
    refuse_go_data(root)
    rows = container_rows(root)
    return containers_table(rows), sparse_shortfall(root, [r["id"] for r in rows if r["storage_sparse"]])


def data_root() -> str:
    """Store.open's data folder, where it needs no migration."""
    root = os.environ.get("KIWI_ROOT")
    if root:
        if not os.path.isabs(root):
            raise Unusual("KIWI_ROOT is relative: Store.open says so")
    else:
        if getattr(sys, "frozen", False):  # store.executable_dir
            kiwi = os.environ.get("KIWI_EXECUTABLE") or sys.executable
        else:
            kiwi = os.path.dirname(__file__)
        root = os.path.join(os.path.dirname(os.path.realpath(kiwi)), "kiwi-data")
    try:
        if os.stat(root).st_mode & 0o170000 == 0o040000:
            return root
    except OSError:
        pass
    raise Unusual("no data folder yet, or not a folder: Store.open migrates or says so")


def check_layout(root: str) -> None:
    """What Store.open would change: folders an older Kiwi left open (tighten_modes) or named run/."""
    for name in PRIVATE_DIRS:
        try:
            st = os.lstat(f"{root}/{name}")
        except FileNotFoundError:
            if name == "mounts" and os.path.lexists(f"{root}/run"):
                raise Unusual("an older runtime folder: Store.open renames it") from None
            continue
        if st.st_mode & 0o170000 == 0o040000 and st.st_mode & 0o077:
            raise Unusual(f"{name} is open to others: Store.open closes it")


def refuse_go_data(root: str) -> None:
    """Go Kiwi's images (a manifest.json without image.json): cmd_list hints at 'kiwi migrate'.
    Its containers (24-hex folders) are found by container_ids."""
    try:
        names = os.listdir(f"{root}/images")
    except FileNotFoundError:
        return
    for name in names:
        image = f"{root}/images/{name}"
        if not os.path.lexists(f"{image}/image.json") and os.path.lexists(f"{image}/manifest.json"):
            raise Unusual("Go Kiwi's image: cmd_list hints at 'kiwi migrate'")


def container_ids(root: str) -> list[str]:
    try:
        names = os.listdir(f"{root}/containers")
    except FileNotFoundError:
        return []
    if any(is_hex(n, GO_ID_LEN) for n in names):
        raise Unusual("Go Kiwi's container: cmd_list hints at 'kiwi migrate'")
    return sorted(n for n in names if is_hex(n, ID_LEN))


def is_hex(name: str, length: int) -> bool:
    return len(name) == length and not name.strip(HEX)


def container_rows(root: str) -> list[dict]:
    try:
        started = set(os.listdir(f"{root}/mounts"))
    except FileNotFoundError:
        started = set()
    state_of = RunningState(root)
    rows = []
    for cid in container_ids(root):
        folder = f"{root}/containers/{cid}"
        try:
            config = read_record(f"{folder}/config.json")
        except FileNotFoundError:
            continue  # deleted meanwhile (cmd_list skips it too)
        if config.get("id") != cid:
            raise Unusual(f"{cid}'s config names another id")
        state = state_of(cid) if cid in started else {"status": "stopped", "mount_target": None}
        rows.append(container_row(cid, config, state, used_bytes(folder, state.get("init_pid"))))
    return rows


def read_record(path: str) -> dict:
    """A small JSON object; FileNotFoundError when missing, Unusual when not everyday."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, RECORD_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > RECORD_LIMIT:
        raise Unusual(f"{path} is large: files.read_json reads it")
    try:
        record = json_value(data)
    except (ValueError, RecursionError):
        raise Unusual(f"{path} is damaged: cmd_list says so") from None
    if not isinstance(record, dict):
        raise Unusual(f"{path} holds no object")
    return record


class RunningState:
    """runtime.status of a container that has a runtime folder, when its init lives."""

    def __init__(self, root: str):
        self.root = root
        self.real_root = os.path.realpath(root)  # Store.real_root
        self.mount_points = None

    def __call__(self, cid: str) -> dict:
        folder = f"{self.root}/mounts/{cid}"
        try:
            record = read_record(f"{folder}/runtime.json")
        except FileNotFoundError:
            raise Unusual("a runtime folder without a record: stale or mounted") from None
        pid = record.get("init_pid")  # runstate.read_runtime's checks
        if not isinstance(pid, int) or pid <= 1 or process_start_time(pid) != record.get("init_start_time"):
            raise Unusual("its init is gone: stale or mounted")
        if record.get("root", self.real_root) != self.real_root:
            raise Unusual("a record copied with the folder")
        if os.path.lexists(f"{folder}/{LEASE}"):
            raise Unusual("a freeze lease: runtime.status thaws it if abandoned")
        return {
            "status": "running",
            "init_pid": pid,
            "mount_target": self.mount_target(folder),
            "cgroup": record.get("cgroup_version"),
            "record": record,  # quickattach enters with what it recorded
        }

    def mount_target(self, folder: str) -> str | None:
        """runstate.read_mount: where mount.json says it is mounted, if it is."""
        try:
            target = read_record(f"{folder}/mount.json").get("target")
        except FileNotFoundError:
            return None
        if not isinstance(target, str) or not target:
            return None
        if self.mount_points is None:
            self.mount_points = mount_points()
        return target if target in self.mount_points else None


def mount_points() -> set[str]:
    """runstate.is_mountpoint for every path at once."""
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def used_bytes(folder: str, init_pid: int | None) -> int | None:
    """storage.used_bytes, or Unusual where it would run dumpe2fs."""
    img = f"{folder}/state.img"
    try:
        os.stat(img)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        raise Unusual(f"{img} cannot be looked at: storage.used_bytes says why") from None
    else:
        used = live_usage(init_pid) if init_pid else None
        if used is None:
            used = superblock_usage(img)
        if used is None:
            raise Unusual(f"{img} has no readable superblock: storage.used_bytes asks dumpe2fs")
        return used
    if os.path.exists(f"{folder}/state"):
        from .storage import folder_usage

        return folder_usage(f"{folder}/state")
    return None


# --- shared with cmd_list ------------------------------------------------------------


def container_row(cid: str, config: dict, state: dict, used: int | None) -> dict:
    """One container as `list` shows it (and `list --json` prints it)."""
    limit = config.get("storage")
    return {
        "id": cid,
        "name": config.get("name"),
        "status": state["status"],
        "image": config.get("image"),
        "ipv4": None if config.get("network") == "host" else config.get("ipv4"),
        "memory": config.get("memory"),
        "cpu": config.get("cpu"),
        "storage_used": used,
        "storage_limit": limit,
        "storage_sparse": limit is not None and bool(config.get("storage_sparse")),
        "network": config.get("network", "separate"),
        "mount": state.get("mount_target"),
        "cgroup": state.get("cgroup"),
        "privileged": is_privileged(config),
    }


def containers_table(rows: list[dict]) -> str:
    def limit(v, fmt):
        return "host" if v is None else fmt(v)

    table = []
    for r in rows:
        storage = f"{format_size(r['storage_used'])}/{limit(r['storage_limit'], format_size)}"
        storage += " sparse" if r.get("storage_sparse") else ""
        status = r["status"] + (f" ({r['cgroup']})" if r.get("cgroup") else "")
        table.append(
            [
                r["id"],
                r["name"] or "-",
                status,
                r["image"] or "-",
                r["ipv4"] or ("host" if r["network"] == "host" else "-"),
                limit(r["memory"], format_size),
                limit(r["cpu"], str),
                storage,
                r["network"],
                "yes" if r["privileged"] else "no",
                r["mount"] or "-",
            ]
        )
    return table_text([*COLUMNS, "MOUNT"], table)


def table_text(headers: list[str], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [headers, *rows])


def sparse_shortfall(root: str, sparse_ids: list[str]) -> str | None:
    """A warning when sparse containers may still write more than the host's disk has free."""
    if not sparse_ids:
        return None
    may_write = 0
    for cid in sparse_ids:
        try:
            st = os.stat(f"{root}/containers/{cid}/state.img")
        except OSError:
            continue
        may_write += max(st.st_size - st.st_blocks * 512, 0)
    try:
        fs = os.statvfs(root)  # what shutil.disk_usage says, without importing it
        free = fs.f_bavail * fs.f_frsize
    except OSError:
        return None
    if may_write <= free:
        return None
    return (
        f"warning: sparse containers may still write {format_size(may_write)} but the host's disk has only "
        f"{format_size(free)} free; when it fills they lose writes: free space or "
        "kiwi set <container> --reserve"
    )
