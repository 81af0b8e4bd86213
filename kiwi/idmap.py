"""User namespace id ranges: root inside an unprivileged container is not root outside.

Each unprivileged container owns a block of 65536 host ids, uid and gid
0..65535 inside map to base..base+65535 outside, with base = 1000000000 + n*65536.
Blocks are leased host-wide, like IP addresses (hoststate.py), so two data
folders never hand out the same one; ranges in /etc/subuid and /etc/subgid are
skipped. The container's config records {"idmap": {"base": N, "size": 65536}}:

    leases.json = {..., "idmaps": {"1000065536": "<folder id>/<container id>"}}

Files on disk (the image, the state image, a host folder) keep the ids the
container sees (0 = its root): every layer is mounted through an idmapped
mount, so images stay shared and snapshots stay portable between privileged
and unprivileged containers. A config without "idmap" (older Kiwi, Go Kiwi,
`create --privileged`) is a privileged container.
"""

from __future__ import annotations

import os

from .errors import KiwiError
from .peek import is_privileged  # there: `kiwi list` reads it without importing this module

FIRST_BASE = 1_000_000_000
SIZE = 65536
LAST_ID = 0xFFFFFFFE  # (uid_t)-1 is never a valid id
SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def base_of(config: dict) -> int | None:
    return None if is_privileged(config) else config["idmap"]["base"]


# -- pure allocation -------------------------------------------------------------------


def parse_subids(text: str) -> list[tuple[int, int]]:
    """(start, count) of each 'name:start:count' line; malformed lines are ignored."""
    ranges = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            ranges.append((int(parts[1]), int(parts[2])))
    return ranges


def overlaps(base: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start < base + SIZE and base < start + count for start, count in ranges)


def free_base(taken, reserved: list[tuple[int, int]]) -> int:
    """The lowest block base that is neither leased nor overlapping a reserved range."""
    taken = set(taken)
    base = FIRST_BASE
    while base + SIZE - 1 <= LAST_ID:
        if base not in taken and not overlaps(base, reserved):
            return base
        base += SIZE
    raise KiwiError("no free user id range left on this host; delete containers or use --privileged")


def usable_base(base, owner: str, leases: dict, reserved: list[tuple[int, int]]) -> bool:
    """Can `owner` keep `base`: a block boundary, free or its own, clear of reserved ranges."""
    return (
        isinstance(base, int)
        and base >= FIRST_BASE
        and (base - FIRST_BASE) % SIZE == 0
        and base + SIZE - 1 <= LAST_ID
        and leases.get(str(base)) in (None, owner)
        and not overlaps(base, reserved)
    )


# -- host-wide leases --------------------------------------------------------------------


def reserved_ranges() -> list[tuple[int, int]]:
    import contextlib  # here, not at the top: `kiwi list` asks is_privileged of every container

    ranges = []
    for path in SUBID_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path) as f:
            ranges += parse_subids(f.read(1 << 20))
    return ranges


def owner_of(store, cid: str) -> str:
    return f"{store.folder_id()}/{cid}"


def allocate(store, cid: str) -> dict:
    """A new id block for container `cid`, leased host-wide; the config's "idmap" value."""
    from . import hoststate

    reserved = reserved_ranges()
    with hoststate.leases(store) as state:
        leases = state.setdefault("idmaps", {})
        base = free_base((int(b) for b in leases), reserved)
        leases[str(base)] = owner_of(store, cid)
    return {"base": base, "size": SIZE}


def claim(store, cid: str, idmap: dict) -> dict:
    """At start: keep the recorded block when it is free or ours, else lease a new one
    (a copied data folder). The caller records a changed block in the config."""
    from . import hoststate

    owner, reserved = owner_of(store, cid), reserved_ranges()
    with hoststate.leases(store) as state:
        leases = state.setdefault("idmaps", {})
        if usable_base(idmap.get("base"), owner, leases, reserved):
            leases[str(idmap["base"])] = owner
            return idmap
        base = free_base((int(b) for b in leases), reserved)
        leases[str(base)] = owner
    return {"base": base, "size": SIZE}


def release(store, cid: str, idmap) -> None:
    """Give the block back if this folder's container `cid` holds it."""
    from . import hoststate

    if not isinstance(idmap, dict):
        return
    with hoststate.leases(store) as state:
        leases = state.setdefault("idmaps", {})
        if leases.get(str(idmap.get("base"))) == owner_of(store, cid):
            del leases[str(idmap["base"])]


def own_leases(state: dict, fid: str) -> list[tuple[str, str]]:
    """(base, container id) of every block folder `fid` holds."""
    prefix = fid + "/"
    return [
        (base, owner[len(prefix) :])
        for base, owner in state.get("idmaps", {}).items()
        if owner.startswith(prefix)
    ]


# -- the kernel side ------------------------------------------------------------------------


def user_namespace(base: int) -> int:
    """An fd of a new user namespace mapping 0..65535 to base..base+65535 (uids and gids)."""
    pending = PendingUserNamespace()
    try:
        return pending.finish(base)
    finally:
        pending.close()


class PendingUserNamespace:
    """user_namespace in two halves, so that a start does other work while the child forks
    and unshares (issue 20). A child unshares it and waits while we, root outside, write
    its maps (finish); the fd keeps the namespace alive after the child is gone. close()
    ends and reaps the child, whatever happened; call it once finish is done or not needed."""

    def __init__(self):
        from . import syscalls as sc

        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        done_r, done_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except BaseException:
            for fd in (ready_r, ready_w, done_r, done_w):
                os.close(fd)
            raise
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(done_w)
                sc.unshare(sc.CLONE_NEWUSER)
                os.write(ready_w, b"ok")
                os.read(done_r, 1)
            except OSError as e:
                os.write(ready_w, os.strerror(e.errno).encode())
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(done_r)
        self.pid, self.ready, self.done = pid, ready_r, done_w

    def finish(self, base: int) -> int:
        answer = os.read(self.ready, 200).decode(errors="replace")
        if answer != "ok":
            raise KiwiError(
                f"cannot create a user namespace for the container ({answer or 'no answer'}: "
                "kiwi runs in a chroot, or user.max_user_namespaces is 0); "
                "create the container with --privileged"
            )
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{self.pid}/{name}", "w") as f:
                f.write(f"0 {base} {SIZE}\n")
        return os.open(f"/proc/{self.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.pid is None:
            return
        os.close(self.ready)
        os.close(self.done)  # the child's read ends: it exits
        os.waitpid(self.pid, 0)
        self.pid = None


def idmapped_tree(source: str, userns_fd: int) -> int:
    """A detached copy of the mount at `source` showing its files through the namespace's map."""
    from . import syscalls as sc

    tree = sc.open_tree(sc.AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    try:
        sc.mount_idmap(tree, userns_fd)
    except BaseException:
        os.close(tree)
        raise
    return tree


def check_support(paths: list[str]) -> None:
    """At create: refuse, in one line, what the kernel or a filesystem cannot do unprivileged."""
    userns = user_namespace(FIRST_BASE)
    try:
        for path in paths:
            try:
                os.close(idmapped_tree(path, userns))
            except OSError as e:
                raise KiwiError(
                    f"the filesystem of {path} does not support idmapped mounts ({e.strerror}); "
                    "create the container with --privileged or move the data folder to ext4, xfs or btrfs"
                ) from None
    finally:
        os.close(userns)
