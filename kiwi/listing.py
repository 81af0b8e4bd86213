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
CACHE_FORMAT = ("kiwi list rows", 3, marshal.version)
SETTLED_NS = 2_000_000_000  # RowCache.settled
# What container_row reads of a config, and the id it is checked against: all RowCache keeps.
ROW_KEYS = ("id", "name", "image", "network", "ipv4", "memory", "cpu", "storage", "storage_sparse", "idmap")
# What RunningState checks and shows of a runtime record: all RowCache keeps of one.
RECORD_KEYS = ("init_pid", "init_start_time", "root", "cgroup_version", "boot")
COLUMNS = ["ID", "NAME", "STATUS", "IMAGE", "IPV4", "MEMORY", "CPU", "STORAGE", "NETWORK", "PRIVILEGED"]
HEADERS = [*COLUMNS, "MOUNT"]  # the table's


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
    cells, sparse_ids = table_cells(root, cache)
    cache.save()
    return table_text(HEADERS, cells), sparse_shortfall(root, sparse_ids, cache.image_stats)


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
    read = RowReader(root, cache or RowCache(root))
    return [row for row in map(read, container_ids(root)) if row is not None]


def table_cells(root: str, cache: RowCache) -> tuple[list[tuple[str, ...]], list[str]]:
    """Each container's cells of the table, and the sparse ones' ids: a stopped container's
    cells come from the cache while its config and state image are the files they were
    made of (the usual list: no record read, no row built)."""
    read = RowReader(root, cache)
    size = size_text()
    table, sparse_ids = [], []
    for cid in container_ids(root):
        known = None if cid in read.started else cache.stopped_cells(root, cid)
        if known is None:
            row = read(cid)
            if row is None:
                continue
            known = row_cells(row, size), row["storage_sparse"]
            if row["status"] == "stopped":
                cache.keep_cells(cid, *known)
        table.append(known[0])
        if known[1]:
            sparse_ids.append(cid)
    return table, sparse_ids


class RowReader:
    """A container's row as container_row makes it, or None when deleted meanwhile."""

    def __init__(self, root: str, cache: RowCache):
        try:
            self.started = set(os.listdir(f"{root}/{MOUNTS}"))
        except FileNotFoundError:
            self.started = set()
        self.root = root
        self.cache = cache
        self.state_of = RunningState(root, cache)

    def __call__(self, cid: str) -> dict | None:
        folder = f"{self.root}/{CONTAINERS}/{cid}"
        config = container_config(cid, f"{folder}/{CONFIG}", self.cache)
        if config is None:
            return None  # deleted meanwhile (cmd_list skips it too)
        state = self.state_of(cid) if cid in self.started else {"status": "stopped", "mount_target": None}
        return container_row(cid, config, state, used_bytes(folder, state.get("init_pid"), self.cache, cid))


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
    """runtime.status of a container that has a runtime folder, when its init lives
    (with a RowCache, list's: the record's RECORD_KEYS, from the cache while runtime.json
    is the file it read; the init's start time is read anew each time)."""

    def __init__(self, root: str, cache: RowCache | None = None):
        self.root = root
        self.real_root = os.path.realpath(root)  # Store.real_root
        self.mount_points = None
        self.cache = cache

    def __call__(self, cid: str) -> dict:
        folder = f"{self.root}/{MOUNTS}/{cid}"
        try:
            record = self.read_runtime(cid, f"{folder}/{RUNTIME_RECORD}")
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

    def read_runtime(self, cid: str, path: str) -> dict:
        if self.cache is None:
            return read_record(path)
        st = os.stat(path)  # before the read: a record replaced meanwhile is kept under the old key
        record = self.cache.record(cid, st)
        if record is None:
            record = read_record(path)
            self.cache.keep_record(cid, st, record)
        return record

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
    file systems). Cells: cid -> (config's key, image's key, the table's cells, sparse or
    not), of stopped containers with a state image; entries, of the others: cid ->
    (config's key, its ROW_KEYS, image's key, used bytes); records: cid -> (runtime.json's
    key, its RECORD_KEYS), of running ones."""

    def __init__(self, root: str):
        self.path = f"{root}/{CACHE}"
        self.old, self.old_records, self.old_cells = load_cache(self.path)
        self.new: dict[str, tuple] = {}
        self.new_records: dict[str, tuple] = {}
        self.new_cells: dict[str, tuple] = {}
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

    def record(self, cid: str, st: os.stat_result) -> dict | None:
        entry = self.old_records.get(cid)
        if (
            type(entry) is not tuple
            or len(entry) != 2
            or entry[0] != file_key(st)
            or type(entry[1]) is not dict
        ):
            return None
        self.new_records[cid] = entry
        return entry[1]

    def keep_record(self, cid: str, st: os.stat_result, record: dict) -> None:
        """Kept even when just written (a list right after a start): RunningState checks its
        init's pid and start time against the kernel every time, so a record replaced within
        the times' granularity names a dead init (cmd_list answers) or this same one."""
        self.new_records[cid] = (file_key(st), {k: record[k] for k in RECORD_KEYS if k in record})
        self.changed = True

    def stopped_cells(self, root: str, cid: str) -> tuple[tuple[str, ...], bool] | None:
        """A stopped container's cells and sparseness, while its files are those they were made of."""
        entry = self.old_cells.get(cid)
        if type(entry) is not tuple or len(entry) != 4:
            return None
        folder = f"{root}/{CONTAINERS}/{cid}"
        try:
            config_st = os.stat(f"{folder}/{CONFIG}")
            image_st = os.stat(f"{folder}/state.img")
        except OSError:
            return None  # container_config and used_bytes say what it is
        cells, sparse = entry[2], entry[3]
        if (
            entry[0] != file_key(config_st)
            or entry[1] != file_key(image_st)
            or type(cells) is not tuple
            or len(cells) != len(HEADERS)
            or set(map(type, cells)) != {str}
            or type(sparse) is not bool
        ):
            return None
        self.image_stats[cid] = image_st
        self.new_cells[cid] = entry
        return cells, sparse

    def keep_cells(self, cid: str, cells: tuple[str, ...], sparse: bool) -> None:
        """Kept with the keys its config and usage are kept under, only where both are, and
        instead of them (a smaller cache loads faster; a start reads the config once)."""
        entry = self.new.get(cid)
        if entry is not None and entry[2] is not None and type(entry[3]) is int:
            self.new_cells[cid] = (entry[0], entry[2], cells, sparse)
            del self.new[cid]
            self.changed = True

    def settled(self, st: os.stat_result) -> bool:
        return self.now - st.st_ctime_ns >= SETTLED_NS

    def save(self) -> None:
        """Atomically, where it changed; a failure (a full disk, a race with another list)
        leaves no cache or a damaged one, which the next list ignores."""
        if not self.changed and (len(self.new), len(self.new_records), len(self.new_cells)) == (
            len(self.old),
            len(self.old_records),
            len(self.old_cells),
        ):
            return  # the same entries (the others of the old file are of deleted, stopped or started containers)
        try:
            data = marshal.dumps(one_of_each((CACHE_FORMAT, self.new, self.new_records, self.new_cells), {}))
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


def one_of_each(value, seen: dict):
    """value with each of its equal texts and numbers one object: marshal writes the
    repeats as references and loads them so (the cells repeat "stopped", an image's name,
    a size...: half the cache's load time)."""
    kind = type(value)
    if kind is tuple:
        return tuple(one_of_each(v, seen) for v in value)
    if kind is dict:
        return {one_of_each(k, seen): one_of_each(v, seen) for k, v in value.items()}
    if kind is str or kind is int:
        return seen.setdefault((kind, value), value)
    return value  # lists, floats, bools, None: as they are


def load_cache(path: str) -> tuple[dict, dict, dict]:
    """RowCache's entries, records and cells; none from a file list did not write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}, {}, {}
    try:
        st = os.fstat(fd)
        if not is_own_file(st) or st.st_size > CACHE_LIMIT:
            return {}, {}, {}
        data = os.read(fd, CACHE_LIMIT + 1)
    except OSError:
        return {}, {}, {}
    finally:
        os.close(fd)
    try:
        cache = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return {}, {}, {}
    if (
        type(cache) is not tuple
        or len(cache) != 4
        or cache[0] != CACHE_FORMAT
        or set(map(type, cache[1:])) != {dict}
    ):
        return {}, {}, {}
    return cache[1], cache[2], cache[3]


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
    size = size_text()
    return table_text(HEADERS, [row_cells(r, size) for r in rows])


def row_cells(r: dict, size) -> tuple[str, ...]:
    """A row's cells of the table (size: a size_text)."""

    def limit(v, fmt):
        return "host" if v is None else fmt(v)

    storage = f"{size(r['storage_used'])}/{limit(r['storage_limit'], size)}"
    storage += " sparse" if r.get("storage_sparse") else ""
    status = r["status"] + (f" ({r['cgroup']})" if r.get("cgroup") else "")
    return (
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
    )


def size_text():
    """format_size, once per figure (a list repeats a few); '-' for none, '?' for a
    hand-edited config's odd value."""
    sizes: dict[int, str] = {}

    def size(n: int | None) -> str:
        if type(n) is not int:
            return "-" if n is None else "?"
        text = sizes.get(n)
        if text is None:
            text = sizes[n] = format_size(n)
        return text

    return size


def text(value: object) -> str:
    """A text cell: '-' when empty, '?' for what a hand-edited config put there instead of text."""
    if type(value) is str:
        return value or "-"
    return "-" if value is None else "?"


def table_text(headers: list[str], rows: list) -> str:
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
