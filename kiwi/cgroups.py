"""One container's cgroup: cgroup v2 where the host offers the controllers, v1 otherwise.

Where the cgroups go:
  KIWI_CGROUP_PARENT (default "/kiwi-<folder id>", one per data folder) names
  the parent cgroup. An absolute
  value is taken from the root of each hierarchy; a relative one (no leading
  '/') is taken below the calling process's own cgroup in that hierarchy, as
  /proc/self/cgroup shows it (per hierarchy on v1). The paths are resolved once,
  when the Cgroup object is made, so moving the caller later changes nothing.

  A container's cgroup is "<parent>/kiwi-<cid>". The "kiwi-" prefix lets
  `cleanup` recognise Kiwi's own cgroups even under a parent shared with others,
  and the xattr trusted.kiwi.folder on each of them names the data folder that
  made it: a folder never kills or removes a cgroup another folder owns (two
  folders may hold the same container id, e.g. a copied folder).

This layer never prints; user problems raise KiwiError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import signal
import time
from collections import namedtuple
from pathlib import Path

from kiwi.errors import KiwiError
from kiwi.store import is_container_id

PARENT_ENV = "KIWI_CGROUP_PARENT"
OWNER_XATTR = "trusted.kiwi.folder"
NAME_PREFIX = "kiwi-"
V2_CONTROLLERS = ("memory", "cpu", "cpuset", "pids")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices")
V1_REQUIRED = ("memory", "cpu", "cpuacct", "cpuset", "pids")
DEFAULT_PIDS = 1024
# cgroup v2 delegation to an unprivileged container's root (the kernel's cgroup-v2
# "Delegation Containment"): the directory and these files become its own; every
# limit file stays host root's, so the limits Kiwi sets from outside still bind.
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
# What a delegated container may build below its cgroup (host-owned, so it stays).
DELEGATED_MAX_DEPTH = 32
DELEGATED_MAX_DESCENDANTS = 1024
# A delegated cgroup (v2, unprivileged) is split in two below the container's own, which
# stays host root's and holds the limits: PAYLOAD, handed to the container's root (its init,
# its cgroup namespace root, whatever it builds), and ATTACH_LEAF, Kiwi's, where the host-side
# processes that enter join (kiwi-exec's waiting parent, the limits servers: Cgroup._join_dir).
# The container owns nothing of the folder that holds that leaf, so it can neither replace
# the leaf nor own files in it. The command kiwi-exec starts joins PAYLOAD/ATTACH_LEAF, in the
# container's own tree, where the container may move it as it likes (it is the container's).
PAYLOAD = "payload"
ATTACH_LEAF = "kiwi-attach"
# What the payload shows inside as its own limits (the binding ones are its parent's).
MIRRORED_LIMITS = ("memory.max", "memory.swap.max", "cpu.max", "cpuset.cpus", "pids.max")
WAIT_SECONDS = 5.0
_POLL = 0.02
_UNIFIED = "unified"  # key of the single v2 hierarchy in path maps


# ---------------------------------------------------------------- parsing


class Mount(namedtuple("Mount", "mountpoint root fstype options")):
    """One cgroup filesystem mount from /proc/self/mountinfo: mountpoint, root (the
    cgroup path that the mountpoint shows), fstype ("cgroup" (v1) or "cgroup2"),
    options (frozenset of super options; v1 controller names live here).
    A namedtuple: importing dataclasses (and inspect) is a visible part of `attach`."""

    __slots__ = ()


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in a mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(
                mountpoint=_unescape_mountinfo(fields[4]),
                root=_unescape_mountinfo(fields[3]),
                fstype=tail[0],
                options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller name -> cgroup path from /proc/<pid>/cgroup.

    The v2 entry ("0::/path") is stored under the key "unified"."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[_UNIFIED] = path
            continue
        for name in controllers.split(","):
            paths[name] = path
    return paths


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (sorted, no duplicates)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return sorted(cpus)


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def validate_parent(value: str) -> str:
    """Normalise a KIWI_CGROUP_PARENT value; refuse '.', '..' and empty parts."""
    if not value or "\0" in value:
        raise KiwiError(f"{PARENT_ENV} is empty; unset it or give a cgroup path such as /kiwi")
    absolute = value.startswith("/")
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise KiwiError(f"{PARENT_ENV}={value!r} may not contain '.' or '..'")
    if not parts and not absolute:
        raise KiwiError(f"{PARENT_ENV}={value!r} names no cgroup")
    joined = "/".join(parts)
    return "/" + joined if absolute else joined


def validate_cid(cid: str) -> str:
    if not isinstance(cid, str) or not is_container_id(cid):
        raise KiwiError(f"invalid container id for a cgroup: {cid!r}")
    return cid


def cgroup_name(cid: str) -> str:
    return NAME_PREFIX + validate_cid(cid)


def parent_cgroup_path(setting: str, own_path: str) -> str:
    """The parent's cgroup path: absolute settings as they are, relative ones below own_path."""
    if setting.startswith("/"):
        return setting
    return posixpath.join(own_path or "/", setting)


def fs_path(mount: Mount, cgroup_path: str) -> Path:
    """Filesystem directory of a cgroup path inside a mount (which may show a subtree)."""
    rel = posixpath.relpath(cgroup_path, mount.root)
    if rel == ".." or rel.startswith("../"):
        raise KiwiError(
            f"cgroup {cgroup_path} is outside what {mount.mountpoint} shows; "
            f"set {PARENT_ENV} to a relative path"
        )
    return Path(mount.mountpoint) if rel == "." else Path(mount.mountpoint) / rel


# ---------------------------------------------------------------- host discovery


def _read(path: Path | str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    """One write() per value, as cgroup files expect; errors surface here, not at close."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _host_mounts() -> list[Mount]:
    return parse_mountinfo(_read("/proc/self/mountinfo"))


def _own_cgroups() -> dict[str, str]:
    return parse_proc_cgroup(_read("/proc/self/cgroup"))


def _prefer_whole(mounts: list[Mount]) -> list[Mount]:
    # A mount showing the whole hierarchy ("/") beats a bind mount of a subtree.
    return sorted(mounts, key=lambda m: m.root != "/")


def _usable_v2_mount(mounts: list[Mount]) -> Mount | None:
    """The cgroup2 mount to use, or None when v2 cannot carry our limits."""
    v2 = _prefer_whole([m for m in mounts if m.fstype == "cgroup2"])
    for mount in v2:
        if mount.mountpoint == "/sys/fs/cgroup":
            return mount  # pure v2 host
    for mount in v2:
        try:
            available = set(_read(Path(mount.mountpoint) / "cgroup.controllers").split())
        except OSError:
            continue
        if available.issuperset(V2_CONTROLLERS):
            return mount
    return None


def _v1_mounts(mounts: list[Mount]) -> dict[str, Mount]:
    """Controller -> mount for the v1 controllers Kiwi uses (comounts share one)."""
    found: dict[str, Mount] = {}
    for mount in _prefer_whole([m for m in mounts if m.fstype == "cgroup"]):
        for name in V1_CONTROLLERS:
            if name in mount.options and name not in found:
                found[name] = mount
    return found


def backend() -> str:
    """'v2' when /sys/fs/cgroup is cgroup2 or the unified mount has our controllers, else 'v1'."""
    return "v2" if _usable_v2_mount(_host_mounts()) else "v1"


def default_parent(folder_id: str) -> str:
    """Each data folder's containers live under their own parent cgroup."""
    return f"/kiwi-{folder_id}"


def _parent_paths(folder_id: str) -> tuple[str, dict[str, tuple[Mount, str]]]:
    """(version, {hierarchy key: (mount, parent cgroup path)}) for the current settings."""
    setting = validate_parent(os.environ.get(PARENT_ENV) or default_parent(folder_id))
    mounts = _host_mounts()
    return resolve_parents(setting, mounts, _own_cgroups(), _usable_v2_mount(mounts))


def resolve_parents(
    setting: str, mounts: list[Mount], own: dict[str, str], v2: Mount | None
) -> tuple[str, dict[str, tuple[Mount, str]]]:
    """Where the parent cgroup is in each hierarchy; `own` is the caller's /proc/self/cgroup."""
    if v2 is not None:
        return "v2", {_UNIFIED: (v2, parent_cgroup_path(setting, own.get(_UNIFIED, "/")))}
    v1 = _v1_mounts(mounts)
    missing = [name for name in V1_REQUIRED if name not in v1]
    if missing:
        raise KiwiError(
            "no usable cgroups: cgroup v2 lacks the memory/cpu/cpuset/pids controllers "
            f"and the v1 controllers {', '.join(missing)} are not mounted"
        )
    return "v1", {
        name: (mount, parent_cgroup_path(setting, own.get(name, "/"))) for name, mount in v1.items()
    }


def _parent_dirs(folder_id: str) -> tuple[str, dict[str, Path]]:
    version, parents = _parent_paths(folder_id)
    return version, {key: fs_path(mount, path) for key, (mount, path) in parents.items()}


def list_container_cgroups(folder_id: str) -> list[str]:
    """Container ids with a cgroup under the parent that provably belongs to this folder
    (its owner xattr says so, or it has none under the folder's own parent)."""
    _, parents = _parent_dirs(folder_id)
    own_parent = not os.environ.get(PARENT_ENV)
    cids = set()
    for directory in parents.values():
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            continue
        for entry in entries:
            cid = entry.name[len(NAME_PREFIX) :]
            if not (entry.name.startswith(NAME_PREFIX) and is_container_id(cid) and entry.is_dir()):
                continue
            owner = _owner(entry)
            if owner == folder_id or (owner is None and own_parent):
                cids.add(cid)
    return sorted(cids)


def _owner(directory: Path) -> str | None:
    """The folder id recorded on a cgroup; None when unmarked (or xattrs unsupported)."""
    try:
        return os.getxattr(directory, OWNER_XATTR).decode(errors="replace")
    except OSError:
        return None


def remove_parent_if_empty(folder_id: str) -> None:
    """rmdir the parent cgroup in every hierarchy when nothing is left below it."""
    _, parents = _parent_dirs(folder_id)
    for directory in set(parents.values()):
        try:
            directory.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                raise


# ---------------------------------------------------------------- the cgroup


def _wait_until(condition, seconds: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _chain(mount: Mount, cgroup_path: str) -> list[str]:
    """Cgroup paths from the mount's root down to cgroup_path, both included."""
    rel = posixpath.relpath(cgroup_path, mount.root)
    paths = [mount.root]
    if rel != ".":
        for part in rel.split("/"):
            paths.append(posixpath.join(paths[-1], part))
    return paths


def _limit_error(path: Path, value: str, exc: OSError) -> KiwiError:
    if exc.errno == errno.EBUSY and path.name.startswith("memory."):
        return KiwiError(f"cannot lower the memory limit to {value} bytes: the container uses more")
    return KiwiError(f"cannot set {path.name} to {value} in {path.parent}: {exc.strerror}")


class Cgroup:
    """The cgroup of one container; paths fixed at construction."""

    def __init__(self, cid: str, version: str, parents: dict[str, tuple[Mount, str]], folder_id: str):
        self.cid = validate_cid(cid)
        self.folder_id = folder_id
        self.version = version
        self.name = cgroup_name(cid)
        self._mounts = {key: mount for key, (mount, _) in parents.items()}
        self._cgroup_paths = {key: posixpath.join(path, self.name) for key, (_, path) in parents.items()}
        self._dirs = {key: fs_path(self._mounts[key], p) for key, p in self._cgroup_paths.items()}

    @classmethod
    def for_container(cls, cid: str, folder_id: str) -> Cgroup:
        """The cgroup of container `cid` of the data folder `folder_id`."""
        version, parents = _parent_paths(folder_id)
        return cls(cid, version, parents, folder_id)

    # -- paths

    def path(self, controller: str) -> Path | None:
        """Directory holding a controller's files (None when that v1 controller is absent)."""
        return self._dirs.get(_UNIFIED if self.version == "v2" else controller)

    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self._dirs.values()))

    def _file(self, controller: str, name: str) -> Path:
        directory = self.path(controller)
        if directory is None:
            raise KiwiError(f"the v1 {controller} cgroup controller is not mounted on this host")
        return directory / name

    def describe(self) -> dict:
        """What `kiwi inspect` shows: the version in use and the cgroup directories."""
        return {
            "version": self.version,
            "name": self.name,
            "paths": {key: str(path) for key, path in self._dirs.items()},
        }

    def exists(self) -> bool:
        return any(d.is_dir() for d in self._unique_dirs())

    def foreign(self) -> bool:
        """Made by another data folder (same id under a shared KIWI_CGROUP_PARENT): hands off."""
        owners = {_owner(d) for d in self._unique_dirs() if d.is_dir()} - {None}
        return bool(owners - {self.folder_id})

    def _mark_owner(self) -> None:
        for directory in self._unique_dirs():
            try:
                os.setxattr(directory, OWNER_XATTR, self.folder_id.encode())
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise KiwiError(f"cannot mark cgroup {directory} as Kiwi's: {exc.strerror}") from exc

    # -- creation

    def create(self) -> None:
        """Make the cgroup (and the parent chain) in every hierarchy; idempotent."""
        if self.foreign():
            raise KiwiError(
                f"cgroup {self.name} belongs to another Kiwi data folder that shares "
                f"{PARENT_ENV}; give each data folder its own {PARENT_ENV}"
            )
        if self.version == "v2":
            self._create_v2()
        else:
            self._create_v1()
        self._mark_owner()

    def _create_v2(self) -> None:
        mount = self._mounts[_UNIFIED]
        chain = _chain(mount, self._cgroup_paths[_UNIFIED])
        for cgroup_path in chain[:-1]:
            directory = fs_path(mount, cgroup_path)
            directory.mkdir(exist_ok=True)
            self._enable_v2_controllers(directory)
        self._dirs[_UNIFIED].mkdir(exist_ok=True)

    @staticmethod
    def _enable_v2_controllers(directory: Path) -> None:
        """Delegate our controllers to the children of `directory`."""
        enabled = set(_read(directory / "cgroup.subtree_control").split())
        wanted = [c for c in V2_CONTROLLERS if c not in enabled]
        if not wanted:
            return
        available = set(_read(directory / "cgroup.controllers").split())
        absent = [c for c in wanted if c not in available]
        if absent:
            raise KiwiError(f"cgroup {directory} lacks the {', '.join(absent)} controller(s)")
        try:
            _write(directory / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                # cgroup v2 forbids controllers below a cgroup that holds processes.
                raise KiwiError(
                    f"cannot enable cgroup controllers in {directory}: it holds processes; "
                    f"set {PARENT_ENV} to an absolute path such as /kiwi"
                ) from exc
            raise KiwiError(f"cannot enable cgroup controllers in {directory}: {exc.strerror}") from exc

    def _create_v1(self) -> None:
        for key, mount in self._mounts.items():
            for cgroup_path in _chain(mount, self._cgroup_paths[key])[1:]:
                directory = fs_path(mount, cgroup_path)
                directory.mkdir(exist_ok=True)
                if key == "cpuset":
                    self._fill_v1_cpuset(directory)

    @staticmethod
    def _fill_v1_cpuset(directory: Path) -> None:
        # New v1 cpusets start with no CPUs and no memory nodes; no task can join them.
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(directory / name).strip():
                _write(directory / name, _read(directory.parent / name).strip())

    # -- limits

    def set_limits(self, memory: int | None, cpus: int | None, pids: int | None = DEFAULT_PIDS) -> None:
        """Apply limits (None = no limit); works again on a live cgroup."""
        _check_limit("memory", memory)
        _check_limit("cpus", cpus)
        _check_limit("pids", pids)
        if self.version == "v2":
            self._set_memory_v2(memory)
            self._set_cpus_v2(cpus)
            self._write_limit(self._file("pids", "pids.max"), "max" if pids is None else str(pids))
            self._mirror_limits()
        else:
            self._set_memory_v1(memory)
            self._set_cpus_v1(cpus)
            self._write_limit(self._file("pids", "pids.max"), "max" if pids is None else str(pids))

    @staticmethod
    def _write_limit(path: Path, value: str) -> None:
        try:
            _write(path, value)
        except OSError as exc:
            raise _limit_error(path, value, exc) from exc

    def _set_memory_v2(self, memory: int | None) -> None:
        self._write_limit(self._file("memory", "memory.max"), "max" if memory is None else str(memory))
        swap = self._file("memory", "memory.swap.max")
        if swap.exists():  # absent when the kernel does no swap accounting
            self._write_limit(swap, "max" if memory is None else "0")

    def _set_memory_v1(self, memory: int | None) -> None:
        limit = self._file("memory", "memory.limit_in_bytes")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        has_memsw = memsw.exists()
        # memsw must never be below the memory limit: lift it first, then tie it to the limit
        # so swap adds nothing.
        if has_memsw:
            self._write_limit(memsw, "-1")
        try:
            self._write_limit(limit, "-1" if memory is None else str(memory))
        finally:
            if has_memsw and memory is not None:
                # On failure the old limit stays; tie memsw to it again.
                self._write_limit(memsw, _read(limit).strip())

    def usable_cpus(self) -> list[int]:
        """CPUs the parent may use; a limit of N takes the first N of them."""
        if self.version == "v2":
            source = self._dirs[_UNIFIED].parent / "cpuset.cpus.effective"
        else:
            parent = self._file("cpuset", "cpuset.cpus").parent.parent
            source = parent / "cpuset.effective_cpus"
            if not source.exists():
                source = parent / "cpuset.cpus"
        return parse_cpu_list(_read(source))

    def _cpuset_for(self, cpus: int | None) -> str:
        usable = self.usable_cpus()
        if cpus is not None and cpus > len(usable):
            raise KiwiError(
                f"cannot limit to {cpus} CPUs: only {len(usable)} are usable here; "
                f"use at most {len(usable)} or 'host'"
            )
        return format_cpu_list(usable if cpus is None else usable[:cpus])

    def _set_cpus_v2(self, cpus: int | None) -> None:
        cpuset = self._cpuset_for(cpus)
        cpu_max = self._file("cpu", "cpu.max")
        period = int(_read(cpu_max).split()[1])
        quota = "max" if cpus is None else str(cpus * period)
        self._write_limit(cpu_max, f"{quota} {period}")
        self._write_limit(self._file("cpuset", "cpuset.cpus"), cpuset)

    def _set_cpus_v1(self, cpus: int | None) -> None:
        cpuset = self._cpuset_for(cpus)
        period = int(_read(self._file("cpu", "cpu.cfs_period_us")))
        quota = "-1" if cpus is None else str(cpus * period)
        self._write_limit(self._file("cpu", "cpu.cfs_quota_us"), quota)
        self._write_limit(self._file("cpuset", "cpuset.cpus"), cpuset)

    # -- delegation (unprivileged containers on cgroup v2)

    def delegate(self, uid: int, gid: int) -> bool:
        """Hand the container's root (host ids uid:gid) a cgroup of its own to build its tree
        in, as systemd does: PAYLOAD, below the container's cgroup, which stays host root's
        with the limits and Kiwi's ATTACH_LEAF beside the payload. False on v1, whose
        hierarchies Kiwi cannot delegate safely (no cgroup namespace root rules there,
        limits in the same dirs)."""
        if self.version != "v2":
            return False
        top = self._dirs[_UNIFIED]
        # Enabled by host root before the children exist: their controller files (memory.max...)
        # are made with the fsuid of whoever enables a controller, here host root's for good.
        self._enable_v2_controllers(top)
        payload = top / PAYLOAD
        for directory in (payload, top / ATTACH_LEAF, payload / ATTACH_LEAF):
            directory.mkdir(exist_ok=True)
        self._mirror_limits()
        self._write_limit(payload / "cgroup.max.depth", str(DELEGATED_MAX_DEPTH))
        self._write_limit(payload / "cgroup.max.descendants", str(DELEGATED_MAX_DESCENDANTS))
        try:
            for path in (payload, *(payload / name for name in DELEGATED_FILES)):
                os.chown(path, uid, gid, follow_symlinks=False)
        except OSError as exc:
            raise KiwiError(f"cannot delegate cgroup {payload} to the container: {exc.strerror}") from exc
        return True

    def _payload(self) -> Path | None:
        """The delegated PAYLOAD cgroup, when this container has one (v2, unprivileged).
        Only below a folder host root owns: in the one an older Kiwi handed whole to the
        container (_refuse_older_layout), a `payload` is a cgroup the container made, and
        Kiwi writes nothing there (a `kiwi set` mirroring its limits into it, say)."""
        if self.version != "v2":
            return None
        top = self._dirs[_UNIFIED]
        payload = top / PAYLOAD
        return payload if payload.is_dir() and os.stat(top).st_uid == 0 else None

    def _mirror_limits(self) -> None:
        """The container's limits, also on its payload: what it sees as its own cgroup at
        /sys/fs/cgroup (memory.max, cpu.max..., read by runtimes sizing heaps and thread
        pools) shows them. Informational: the parent's are the ones that bind."""
        payload = self._payload()
        if payload is None:
            return
        for name in MIRRORED_LIMITS:
            source = self._dirs[_UNIFIED] / name
            if source.exists():  # memory.swap.max: absent without swap accounting
                self._write_limit(payload / name, _read(source).strip())

    def _join_dir(self, directory: Path) -> Path:
        """Where a process entering the container goes: the cgroup itself, or, when it is
        delegated, Kiwi's leaf beside the payload. kiwi-exec's waiting parent lives outside
        the PID namespace where the container cannot move it, and v2 forbids processes in a
        cgroup that hands controllers to its children: the container's root must be free to.
        A container started by an older Kiwi owns `directory` itself: _refuse_older_layout."""
        if self.version != "v2":
            return directory
        self._refuse_older_layout(directory)
        leaf = directory / ATTACH_LEAF
        return leaf if leaf.is_dir() else directory  # none: privileged, nothing delegated

    def _refuse_older_layout(self, directory: Path) -> None:
        """Kiwi before the payload layout handed the container its whole cgroup, with Kiwi's
        leaf in it. Even a leaf host root made there is not Kiwi's to trust: the container
        owns the folder's cgroup.subtree_control, and a controller it turns off and on again
        comes back in the leaf as files it owns (the kernel makes them with the fsuid of
        whoever enables it): a pids.max of 0 or a tiny memory.max for kiwi-exec's host-side
        parent and the limits servers. Only delegate() gives the folder away, never to
        host root, so an owner other than root is that older layout; a restart makes the new one."""
        if os.stat(directory).st_uid != 0:
            raise KiwiError(
                f"container cgroup {self.name} was handed whole to the container by an older Kiwi; "
                "restart the container (kiwi stop, kiwi start) to attach"
            )

    # -- devices

    def restrict_devices(self, rules) -> bool:
        """Allow the cgroup's processes to open only the devices in rules,
        (type, major, minor or None), each with every access. v2: an eBPF
        device program; v1: the devices controller. False when the host has
        neither (a v1 host without the devices controller)."""
        try:
            if self.version == "v2":
                from kiwi import security

                security.attach_device_program(self._dirs[_UNIFIED], rules)
                return True
            directory = self.path("devices")
            if directory is None:
                return False
            _write(directory / "devices.deny", "a")  # drops every inherited rule
            for kind, major, minor in rules:
                _write(directory / "devices.allow", f"{kind} {major}:{'*' if minor is None else minor} rwm")
        except OSError as exc:
            raise KiwiError(f"cannot restrict the devices of cgroup {self.name}: {exc.strerror}") from exc
        return True

    # -- processes

    def add_pid(self, pid: int) -> None:
        """Move a process into the cgroup in every hierarchy (the container's init: into
        its payload when delegated, which then roots the container's cgroup namespace)."""
        for directory in self._init_dirs():
            try:
                _write(directory / "cgroup.procs", str(pid))
            except OSError as exc:
                raise KiwiError(f"cannot move process {pid} into {directory}: {exc.strerror}") from exc

    def join(self) -> None:
        """Move the calling process, single-threaded (stage 1, forked), where add_pid puts
        the init: "0" to each hierarchy's join file (enter.open_join_file: v1's tasks spares
        the RCU wait of a cgroup.procs write). Not open_procs_files: that is where entering
        processes go (Kiwi's leaf when delegated), and it refuses the container's payload,
        which no process of the container can have touched yet."""
        from .enter import open_join_file

        for directory in self._init_dirs():
            try:
                fd = open_join_file(str(directory / "cgroup.procs"))
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as exc:
                raise KiwiError(f"cannot join the cgroup {directory}: {exc.strerror}") from exc

    def _init_dirs(self) -> list[Path]:
        """Where the container's init goes in each hierarchy: the payload when delegated."""
        return [self._payload() or d for d in self._unique_dirs()]

    def open_procs_files(self) -> list[int]:
        """The join file of every hierarchy (enter.open_join_file), open for writing: whoever
        writes "0" to them joins (kiwi-exec does, so that nothing of the host side needs to be
        in the container's cgroup)."""
        from .enter import open_procs_files

        return open_procs_files(self.procs_paths())

    def procs_paths(self) -> list[str]:
        """The cgroup.procs file of every hierarchy where an entering process joins."""
        return [str(self._join_dir(directory) / "cgroup.procs") for directory in self._unique_dirs()]

    def command_procs_paths(self) -> list[str]:
        """The cgroup.procs the command alone joins (kiwi-exec -C), in the container's own tree
        once it is delegated with a payload; [] elsewhere (it stays where kiwi-exec joined).
        A leaf: the container may have handed controllers to its payload's children. Made
        again if gone; an empty one the container made in its place (frozen, say, to hang
        every attach) is removed first, and enter.open_procs_files refuses one in use."""
        payload = self._payload()
        if payload is None:
            return []
        leaf = payload / ATTACH_LEAF
        with contextlib.suppress(OSError):
            if os.stat(leaf / "cgroup.procs").st_uid != 0:
                _try_rmdir(leaf)
        leaf.mkdir(exist_ok=True)
        return [str(leaf / "cgroup.procs")]

    def pids(self) -> list[int]:
        """Processes in the cgroup and below it (union over hierarchies); [] when it does not exist."""
        found: set[int] = set()
        for directory in self._unique_dirs():
            for cgroup in _subtree(directory):
                try:
                    found.update(int(line) for line in _read(cgroup / "cgroup.procs").split())
                except FileNotFoundError:
                    continue
        return sorted(found)

    # -- freezer

    def _freezer_v1(self) -> Path:
        return self._file("freezer", "freezer.state")

    def is_frozen(self) -> bool:
        if self.version == "v2":
            return _events(self._file("cpu", "cgroup.events")).get("frozen") == 1
        return _read(self._freezer_v1()).strip() == "FROZEN"

    def holds_frozen(self, pid: int) -> bool:
        """pid is in a frozen cgroup of this container: its own, or one root inside made
        below it (v2 delegation) and froze. Found by walking the subtree's cgroup.procs,
        not by the path /proc/<pid>/cgroup shows, whose names root inside chooses."""
        directory = self.path("freezer")  # v2: the container's one directory
        if directory is None:
            return False
        for cgroup in _subtree(directory):
            try:
                if str(pid) not in _read(cgroup / "cgroup.procs").split():
                    continue
                if self.version == "v2":
                    return _events(cgroup / "cgroup.events").get("frozen") == 1
                return _read(cgroup / "freezer.state").strip() != "THAWED"
            except OSError:
                continue  # removed meanwhile
        return False

    def freeze(self, timeout: float = WAIT_SECONDS) -> None:
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = WAIT_SECONDS) -> None:
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        if self.version == "v2":
            _write(self._file("cpu", "cgroup.freeze"), "1" if frozen else "0")
        else:
            _write(self._freezer_v1(), "FROZEN" if frozen else "THAWED")
        if not _wait_until(lambda: self.is_frozen() == frozen, timeout):
            state = "freeze" if frozen else "thaw"
            raise KiwiError(f"cgroup {self.name} did not {state} within {timeout:g} s")

    def _can_freeze(self) -> bool:
        return self.version == "v2" or self.path("freezer") is not None

    # -- teardown

    def kill_all(self, timeout: float = WAIT_SECONDS) -> None:
        """SIGKILL every process in the cgroup and wait until none is left."""
        if not self.exists():
            return
        kill_file = self._file("cpu", "cgroup.kill") if self.version == "v2" else None
        if kill_file is not None and kill_file.exists():
            _write(kill_file, "1")
        elif self.pids():
            self._kill_loop(timeout)
        if not _wait_until(lambda: not self.pids(), timeout):
            raise KiwiError(f"processes in cgroup {self.name} survived SIGKILL: {self.pids()}")

    def _kill_loop(self, timeout: float) -> None:
        # Freezing stops forks racing the kill; v1 frozen tasks die only once thawed.
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            frozen = self._try_freeze()
            for pid in self.pids():
                _sigkill(pid)
            if frozen or self.is_frozen_quietly():
                self._try_thaw()
            time.sleep(_POLL)

    def _try_freeze(self) -> bool:
        if not self._can_freeze():
            return False
        try:
            self.freeze(timeout=1.0)
            return True
        except (KiwiError, OSError):
            return False  # killing without the freezer still works, only less race-proof

    def _try_thaw(self) -> None:
        try:
            self.thaw(timeout=1.0)
        except (KiwiError, OSError):
            pass

    def is_frozen_quietly(self) -> bool:
        try:
            return self._can_freeze() and self.is_frozen()
        except OSError:
            return False

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir the cgroup everywhere (children a delegated container made first),
        retrying while exiting processes leave; idempotent."""
        for directory in self._unique_dirs():
            for cgroup in _subtree(directory):
                if not _wait_until(lambda d=cgroup: _try_rmdir(d), timeout):
                    raise KiwiError(f"cannot remove cgroup {cgroup}: processes are still in it")

    # -- accounting (kiwi stats / inspect)

    def memory_usage(self) -> int | None:
        name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        try:
            return int(_read(self._file("memory", name)))
        except (OSError, KiwiError, ValueError):
            return None

    def cpu_usage_ns(self) -> int:
        try:
            if self.version == "v2":
                return _events(self._file("cpu", "cpu.stat")).get("usage_usec", 0) * 1000
            return int(_read(self._file("cpuacct", "cpuacct.usage")))
        except FileNotFoundError:
            return 0


# ---------------------------------------------------------------- helpers


def _check_limit(what: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise KiwiError(f"{what} limit must be a positive whole number, not {value!r}")


def _events(path: Path) -> dict[str, int]:
    """'key value' lines (cgroup.events, memory.events, cpu.stat, oom_control) -> dict."""
    values = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def _subtree(directory: Path) -> list[Path]:
    """directory and every cgroup below it, children before their parents (no recursion:
    a delegated container chooses the depth, bounded by cgroup.max.depth)."""
    found, todo = [], [directory]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with os.scandir(current) as entries:
                todo += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found[::-1]


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _try_rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True
