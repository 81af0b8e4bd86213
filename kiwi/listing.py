"""`kiwi list`'s containers: their rows, the table, the sparse-storage warning.

The rows are read with os alone (peek.py): not the Store, the runtime, json,
re or pathlib, whose imports cost a list more than reading 100 containers
(issue 20). This reader knows the everyday cases only: a stopped container, a
running one with a live record, an ext4 or folder storage. Anything else (not
root, a data folder to migrate or to tighten, a mounted or half-started
container, an abandoned freeze, a damaged record, Go Kiwi's data) raises
Unusual before anything is shown, and commands.cmd_list answers the way it
always did: the two cannot disagree on a case only one of them knows. What a
row takes from a config, and a stopped container's usage, come from RowCache
while the files they were read from stay the same ones.
"""

from __future__ import annotations

import marshal
import os
from time import time_ns

from .layout import (
    CONFIG,
    CONTAINERS,
    FREEZE_LEASE,
    GO_ID_LEN,
    ID_LEN,
    IMAGE_RECORD,
    IMAGES,
    MOUNT_RECORD,
    MOUNTS,
    OLD_MOUNTS,
    PRIVATE_DIRS,
    RUNTIME_RECORD,
    data_folder,
    is_hex,
    live_init,
)
from .peek import is_privileged, json_value, live_usage, mount_points, superblock_usage
from .sizes import format_size

RECORD_LIMIT = 64 << 10  # a larger config or record is left to files.read_json (1 MB)
CACHE = "list-cache.json"  # in the data folder: RowCache
CACHE_LIMIT = 16 << 20
CACHE_FORMAT = ("kiwi list rows", 1, marshal.version)
SETTLED_NS = 2_000_000_000  # RowCache.settled
# What container_row reads of a config, and the id it is checked against: all RowCache keeps.
ROW_KEYS = ("id", "name", "image", "network", "ipv4", "memory", "cpu", "storage", "storage_sparse", "idmap")
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
    cache = RowCache(root)
    rows = container_rows(root, cache)
    cache.save()
    sparse_ids = [r["id"] for r in rows if r["storage_sparse"]]
    return containers_table(rows), sparse_shortfall(root, sparse_ids, cache.image_stats)


def data_root() -> str:
    """Store.open's data folder, where it needs no migration."""
    try:
        root = data_folder()
    except ValueError:
        raise Unusual("KIWI_ROOT is relative: Store.open says so") from None
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
            if name == MOUNTS and os.path.lexists(f"{root}/{OLD_MOUNTS}"):
                raise Unusual("an older runtime folder: Store.open renames it") from None
            continue
        if st.st_mode & 0o170000 == 0o040000 and st.st_mode & 0o077:
            raise Unusual(f"{name} is open to others: Store.open closes it")


def refuse_go_data(root: str) -> None:
    """Go Kiwi's images (a manifest.json without image.json): cmd_list hints at 'kiwi migrate'.
    Its containers (24-hex folders) are found by container_ids."""
    try:
        names = os.listdir(f"{root}/{IMAGES}")
    except FileNotFoundError:
        return
    for name in names:
        image = f"{root}/{IMAGES}/{name}"
        if not os.path.lexists(f"{image}/{IMAGE_RECORD}") and os.path.lexists(f"{image}/manifest.json"):
            raise Unusual("Go Kiwi's image: cmd_list hints at 'kiwi migrate'")


def container_ids(root: str) -> list[str]:
    try:
        names = os.listdir(f"{root}/{CONTAINERS}")
    except FileNotFoundError:
        return []
    if any(is_hex(n, GO_ID_LEN) for n in names):
        raise Unusual("Go Kiwi's container: cmd_list hints at 'kiwi migrate'")
    return sorted(n for n in names if is_hex(n, ID_LEN))


def container_rows(root: str, cache: RowCache | None = None) -> list[dict]:
    try:
        started = set(os.listdir(f"{root}/{MOUNTS}"))
    except FileNotFoundError:
        started = set()
    state_of = RunningState(root)
    cache = cache or RowCache(root)
    rows = []
    for cid in container_ids(root):
        folder = f"{root}/{CONTAINERS}/{cid}"
        config = container_config(cid, f"{folder}/{CONFIG}", cache)
        if config is None:
            continue  # deleted meanwhile (cmd_list skips it too)
        state = state_of(cid) if cid in started else {"status": "stopped", "mount_target": None}
        rows.append(container_row(cid, config, state, used_bytes(folder, state.get("init_pid"), cache, cid)))
    return rows


def container_config(cid: str, path: str, cache: RowCache) -> dict | None:
    """What container_row reads of the config, from the cache while the file is the one it
    read; None when deleted."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    config = cache.config(cid, st)
    if config is None:
        try:
            config = read_record(path)
        except FileNotFoundError:
            return None
        if config.get("id") != cid:
            raise Unusual(f"{cid}'s config names another id")
        cache.keep_config(cid, st, config)
    return config


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
        folder = f"{self.root}/{MOUNTS}/{cid}"
        try:
            record = read_record(f"{folder}/{RUNTIME_RECORD}")
        except FileNotFoundError:
            raise Unusual("a runtime folder without a record: stale or mounted") from None
        pid = live_init(record, self.real_root)  # runstate.read_runtime's checks
        if pid is None:
            raise Unusual("its init is gone (stale or mounted), or the record is another folder's")
        if exists(f"{folder}/{FREEZE_LEASE}"):
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
        if not exists(f"{folder}/{MOUNT_RECORD}"):
            return None  # the everyday case, told without an exception (they cost a list ~0.5 ms)
        try:
            target = read_record(f"{folder}/{MOUNT_RECORD}").get("target")
        except FileNotFoundError:
            return None
        if not isinstance(target, str) or not target:
            return None
        if self.mount_points is None:
            self.mount_points = mount_points()
        return target if target in self.mount_points else None


def exists(path: str) -> bool:
    """os.path.lexists without raising and catching FileNotFoundError."""
    return os.access(path, os.F_OK, effective_ids=True, follow_symlinks=False)


def used_bytes(folder: str, init_pid: int | None, cache: RowCache, cid: str) -> int | None:
    """storage.used_bytes, or Unusual where it would run dumpe2fs."""
    img = f"{folder}/state.img"
    try:
        st = os.stat(img)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        raise Unusual(f"{img} cannot be looked at: storage.used_bytes says why") from None
    else:
        cache.image_stats[cid] = st
        if init_pid:
            used = live_usage(init_pid)
            if used is None:
                used = superblock_usage(img)
        else:  # stopped: its superblock changes only with the file
            used = cache.usage(cid, st)
            if used is None:
                used = superblock_usage(img)
                cache.keep_usage(cid, st, used)
        if used is None:
            raise Unusual(f"{img} has no readable superblock: storage.used_bytes asks dumpe2fs")
        return used
    if os.path.exists(f"{folder}/state"):
        from .storage import folder_usage

        return folder_usage(f"{folder}/state")
    return None


class RowCache:
    """What `list` read of each container last time, kept while the files it came from are
    the same ones: a config (replaced by rename on every change: a new inode) and a stopped
    container's state image (its superblock changes only with the file's times). One
    root-only file in the data folder, in marshal's format (json's encoder imports re; its
    parse costs as much as reading the configs), written by list itself when something
    changed; a file list did not write (another owner, open to others, damaged, another
    format) is ignored and replaced. A file changed in the last SETTLED_NS is read but not
    kept: its times may not move on a second change within their granularity (1 s on some
    file systems). Entries: cid -> (config's key, its ROW_KEYS, image's key, used bytes)."""

    def __init__(self, root: str):
        self.path = f"{root}/{CACHE}"
        self.old = load_cache(self.path)
        self.new: dict[str, tuple] = {}
        self.image_stats: dict[str, os.stat_result] = {}
        self.now = time_ns()
        self.changed = False

    def config(self, cid: str, st: os.stat_result) -> dict | None:
        entry = self.old.get(cid)
        if type(entry) is not tuple or len(entry) != 4 or entry[0] != file_key(st):
            return None
        config = entry[1]
        if type(config) is not dict or config.get("id") != cid:
            return None
        self.new[cid] = (entry[0], config, None, None)
        return config

    def keep_config(self, cid: str, st: os.stat_result, config: dict) -> None:
        if self.settled(st):
            self.new[cid] = (file_key(st), {k: config[k] for k in ROW_KEYS if k in config}, None, None)
            self.changed = True

    def usage(self, cid: str, st: os.stat_result) -> int | None:
        entry = self.old.get(cid)
        if (
            type(entry) is not tuple
            or len(entry) != 4
            or entry[2] != file_key(st)
            or type(entry[3]) is not int
        ):
            return None
        if cid in self.new:
            self.new[cid] = self.new[cid][:2] + entry[2:]
        return entry[3]

    def keep_usage(self, cid: str, st: os.stat_result, used: int | None) -> None:
        if cid in self.new and used is not None and self.settled(st):
            self.new[cid] = self.new[cid][:2] + (file_key(st), used)
            self.changed = True

    def settled(self, st: os.stat_result) -> bool:
        return self.now - st.st_ctime_ns >= SETTLED_NS

    def save(self) -> None:
        """Atomically, where it changed; a failure (a full disk, a race with another list)
        leaves no cache or a damaged one, which the next list ignores."""
        if not self.changed and len(self.new) == len(self.old):
            return  # the same entries (the others of the old file are of deleted containers)
        try:
            data = marshal.dumps((CACHE_FORMAT, self.new))
        except ValueError:
            return  # a value marshal does not keep (a config holds JSON's types only)
        tmp = f"{self.path}.tmp"  # one name: two lists at once leave one file or a damaged one
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
            )
            try:
                written = os.write(fd, data) if is_own_file(os.fstat(fd)) else 0
            finally:
                os.close(fd)
            if written == len(data):
                os.rename(tmp, self.path)
                return
        except OSError:
            pass
        try:
            os.unlink(tmp)  # not renamed (the cache's name taken by a folder, ...): leave nothing
        except OSError:
            pass


def load_cache(path: str) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not is_own_file(st) or st.st_size > CACHE_LIMIT:
            return {}
        data = os.read(fd, CACHE_LIMIT + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        cache = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return {}
    if type(cache) is not tuple or len(cache) != 2 or cache[0] != CACHE_FORMAT or type(cache[1]) is not dict:
        return {}
    return cache[1]


def is_own_file(st: os.stat_result) -> bool:
    """A regular file of this user's that nobody else may write: one list wrote."""
    return st.st_mode & 0o170000 == 0o100000 and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def file_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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

    sizes: dict[int, str] = {}

    def size(n: int | None) -> str:  # format_size, once per figure: a list repeats a few
        if type(n) is not int:
            return "-" if n is None else "?"  # a hand-edited config's odd value
        text = sizes.get(n)
        if text is None:
            text = sizes[n] = format_size(n)
        return text

    table = []
    for r in rows:
        storage = f"{size(r['storage_used'])}/{limit(r['storage_limit'], size)}"
        storage += " sparse" if r.get("storage_sparse") else ""
        status = r["status"] + (f" ({r['cgroup']})" if r.get("cgroup") else "")
        table.append(
            [
                r["id"],
                text(r["name"]),
                status,
                text(r["image"]),
                text(r["ipv4"] or ("host" if r["network"] == "host" else None)),
                limit(r["memory"], size),
                limit(r["cpu"], str),
                storage,
                text(r["network"]),
                "yes" if r["privileged"] else "no",
                text(r["mount"]),
            ]
        )
    return table_text([*COLUMNS, "MOUNT"], table)


def text(value: object) -> str:
    """A text cell: '-' when empty, '?' for what a hand-edited config put there instead of text."""
    if type(value) is str:
        return value or "-"
    return "-" if value is None else "?"


def table_text(headers: list[str], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"%-{w}s" for w in widths)  # printf's: str.format takes twice as long
    return "\n".join((fmt % tuple(row)).rstrip() for row in [headers, *rows])


def sparse_shortfall(root: str, sparse_ids: list[str], image_stats: dict | None = None) -> str | None:
    """A warning when sparse containers may still write more than the host's disk has free
    (image_stats: the state images' stats the caller took already)."""
    if not sparse_ids:
        return None
    may_write = 0
    for cid in sparse_ids:
        st = (image_stats or {}).get(cid)
        if st is None:
            try:
                st = os.stat(f"{root}/{CONTAINERS}/{cid}/state.img")
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
