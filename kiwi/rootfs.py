"""Build a container's root inside its own mount namespace, bubblewrap style:
each step is one small function. Runs in the future PID 1 (a forked child of
kiwi) before it becomes the init; nothing here touches the host's mount table
because the caller unshared the mount namespace and made / private first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from . import syscalls as sc

DEV_NODES = [  # name, major, minor, mode
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
]
# The only devices the container may open (its cgroup enforces it, so a node
# that appears later, however it got there, stays closed): the nodes above
# (console is null's device), devpts' ptmx and its terminals.
ALLOWED_DEVICES = tuple(
    dict.fromkeys([("c", major, minor) for _, major, minor, _ in DEV_NODES] + [("c", 5, 2), ("c", 136, None)])
)
DEV_LINKS = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
]
NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def overlay_escape(path: str) -> str:
    """overlayfs splits its options on ',' and lowerdir lists on ':'."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def make_mounts_private() -> None:
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def mount_state(device: str | None, state_dir: str, mountpoint: str, discard: bool = False) -> str:
    """The container's upper/work: its ext4 image, or the plain state/ folder.
    discard (sparse storage): blocks freed inside go back to the host's disk."""
    if device:
        sc.mount(device, mountpoint, "ext4", sc.MS_NOSUID | sc.MS_NODEV, "discard" if discard else None)
        return mountpoint
    return state_dir


def mount_overlay(lower: str, state: str, target: str) -> None:
    data = (
        f"lowerdir={overlay_escape(lower)},upperdir={overlay_escape(state + '/upper')},"
        f"workdir={overlay_escape(state + '/work')},"
        # Self-contained upper dirs: snap and commit read them as plain trees.
        "redirect_dir=off,metacopy=off"
    )
    sc.mount("overlay", target, "overlay", 0, data)


def mount_idmapped(source: str, target: str, userns_fd: int) -> None:
    """Mount a copy of `source` on `target`, its files shown through the namespace's id map."""
    from .idmap import idmapped_tree

    tree = idmapped_tree(source, userns_fd)
    try:
        sc.move_mount(tree, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)


def mount_overlay_as(lower: str, state: str, target: str, host_id: int) -> None:
    """Mount the overlay over idmapped layers with the container root's host id as fsuid.

    overlayfs does its own work (workdir, copy-up) with the mounter's credentials,
    and host uid 0 has no id on an idmapped layer (EOVERFLOW)."""
    with acting_as(host_id):
        mount_overlay(lower, state, target)


@contextlib.contextmanager
def acting_as(host_id: int):
    """Create files as host_id (an unprivileged container's root: host uid 0 has no id on
    its idmapped layers, EOVERFLOW). Only the ids change: the capabilities stay, raised
    again after the euid switch cleared them."""
    os.setresgid(-1, host_id, -1)
    os.setresuid(-1, host_id, -1)
    try:
        _, permitted, inheritable = sc.capget()
        sc.capset(permitted, permitted, inheritable)
        yield
    finally:
        os.setresuid(-1, 0, -1)
        os.setresgid(-1, 0, -1)


def bind_to_itself(path: str) -> None:
    """A mount made in this (user-namespace owned) mount namespace: pivot_root refuses
    the locked copy of a mount that came from the host's side."""
    sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """Resolve path with the container root as '/', so an image's symlinks never lead out."""
    return sc.openat2(root_fd, path, flags | os.O_CLOEXEC, 0, sc.RESOLVE_IN_ROOT)


def ensure_dir_in_root(root_fd: int, path: str, mode: int = 0o755) -> int:
    """Open (creating when missing) a directory inside the root; returns an O_PATH fd.

    Never follows a symlink: the image chose these names, and a mount on `tmp -> /`
    or `dev -> ../..` would land elsewhere. What stands where Kiwi mounts (a symlink,
    a file) is replaced by an empty folder; the mount would hide it anyway."""
    parent = root_fd
    fds = []
    try:
        for part in [p for p in path.split("/") if p]:
            fd = open_or_make_dir(parent, part, mode)
            fds.append(fd)
            parent = fd
        return os.dup(parent) if fds else os.dup(root_fd)
    finally:
        for fd in fds:
            os.close(fd)


def open_or_make_dir(parent: int, name: str, mode: int) -> int:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    resolve = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS
    try:
        return sc.openat2(parent, name, flags, 0, resolve)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
    real = os.open(f"/proc/self/fd/{parent}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=real)  # a symlink or a file, never a directory
        os.mkdir(name, mode, dir_fd=real)
    finally:
        os.close(real)
    return sc.openat2(parent, name, flags, 0, resolve)


def mount_at(root_fd: int, path: str, source, fstype, flags: int, data=None, mode: int = 0o755) -> None:
    fd = ensure_dir_in_root(root_fd, path, mode)
    try:
        sc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def mount_proc_sys_tmp(root_fd: int, host_sysfs: bool = False) -> None:
    """host_sysfs: a user namespace sharing the host's network may not mount sysfs
    (it belongs to the host's network namespace): the host's, bound read-only."""
    mount_at(root_fd, "proc", "proc", "proc", NOSUID_NODEV_NOEXEC)
    if host_sysfs:
        mount_at(root_fd, "sys", "/sys", None, sc.MS_BIND | sc.MS_REC)
        mount_at(root_fd, "sys", None, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | NOSUID_NODEV_NOEXEC)
    else:
        mount_at(root_fd, "sys", "sysfs", "sysfs", NOSUID_NODEV_NOEXEC | sc.MS_RDONLY)
    mount_at(root_fd, "run", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=755,size=64m")
    mount_at(root_fd, "tmp", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")


def mount_own_cgroup(root_fd: int) -> None:
    """cgroup v2 at /sys/fs/cgroup, from inside the container's cgroup namespace: it shows
    the container's own subtree, delegated to its root (cgroups.Cgroup.delegate)."""
    mount_at(root_fd, "sys/fs/cgroup", "cgroup2", "cgroup2", NOSUID_NODEV_NOEXEC)


def mount_dev(root_fd: int, bind_nodes: bool = False) -> None:
    """A minimal /dev with exactly the nodes a container needs, modes independent of umask.
    bind_nodes: in a user namespace mknod is refused; the host's nodes are bound instead."""
    mount_at(root_fd, "dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=755,size=64k")
    dev = open_in_root(root_fd, "dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        make_node = bind_host_node if bind_nodes else make_dev_node
        for name, major, minor, mode in DEV_NODES:
            make_node(dev, name, name, major, minor, mode)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
        # /dev/console must not be the host's console: it is /dev/null's device.
        make_node(dev, "console", "null", 1, 3, 0o620)
        for sub, mode in (("pts", 0o755), ("shm", 0o1777)):
            os.mkdir(sub, mode, dir_fd=dev)
            os.chmod(sub, mode, dir_fd=dev)
    finally:
        os.close(dev)
    mount_at(
        root_fd,
        "dev/pts",
        "devpts",
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    mount_at(root_fd, "dev/shm", "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=64m")


def make_dev_node(dev: int, name: str, host_name: str, major: int, minor: int, mode: int) -> None:
    sc.mknod_at(dev, name, stat.S_IFCHR | mode, major, minor)
    os.chmod(name, mode, dir_fd=dev)


def bind_host_node(dev: int, name: str, host_name: str, major: int, minor: int, mode: int) -> None:
    """The host's /dev/<host_name> bound on an empty file (the host's / is still visible
    here); it keeps the host node's owner and mode."""
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dev))
    sc.mount(f"/dev/{host_name}", f"/proc/self/fd/{dev}/{name}", None, sc.MS_BIND)


def enter_root(root) -> None:
    """pivot_root into the merged view (a path or an fd) and drop every trace of the host's tree."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    # The old root is now stacked on the same place; detach it.
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


def write_container_file(path: str, text: str, mode: int = 0o644, root: int = sc.AT_FDCWD) -> None:
    """Write /etc/<file> with root (an fd of the container's root; the cwd after
    pivot_root) as '/': every symlink resolves inside the container, and a symlinked
    file itself is replaced by a plain file. A missing or odd parent (a hostile /etc
    symlink) is skipped, not followed out."""
    parent, name = os.path.split(path)
    try:
        dfd = sc.openat2(
            root,
            parent,
            os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
            0,
            sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS,
        )
    except OSError:
        return
    tmp = f".{name}.kiwi-tmp"
    try:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd
        )
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
    finally:
        os.close(dfd)


def write_identity_files(hostname: str, ipv4: str | None, root: int = sc.AT_FDCWD) -> None:
    """/etc/hostname, hosts and resolv.conf beneath root (write_container_file)."""
    from . import dns

    write_container_file("/etc/hostname", hostname + "\n", root=root)
    write_container_file("/etc/hosts", dns.hosts_text(hostname, ipv4), root=root)
    write_container_file("/etc/resolv.conf", dns_text_cached(), root=root)


_RESOLV_TEXT: str | None = None


def prepare_dns_text(host_network: bool = False) -> None:
    """Read the host's resolver config while the host's / is still visible.
    With the host's network the host's own file works as it is (stub included)."""
    global _RESOLV_TEXT
    from . import dns

    if host_network:
        try:
            with open("/etc/resolv.conf") as f:
                _RESOLV_TEXT = f.read()
            return
        except OSError:
            pass
    _RESOLV_TEXT = dns.resolv_conf_text()


def dns_text_cached() -> str:
    return _RESOLV_TEXT or "nameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\n"


def is_executable_in(root: int, path: str) -> bool:
    try:
        fd = open_in_root(root, path.lstrip("/"))
    except OSError:
        return False
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111)
