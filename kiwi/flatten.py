"""`commit`: flatten a base image plus a container's overlay upper dir into a new tree.

Files the container did not touch become hard links to the base image's files
(images are never modified, so sharing inodes is safe and costs no space);
files from the upper dir are copied with owner, mode, xattrs and times.
Whiteouts hide base entries, opaque upper dirs hide the whole base dir.
/proc and /sys are kept as empty folders only.

The walk uses directory fds and never follows a symlink, so a container's
upper dir cannot redirect reads or writes outside the trees involved.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import KiwiError, disk_full, os_error_message
from .fstree import copy_file_data, more_open_files, read_xattrs

OVERLAY_XATTR_PREFIX = "trusted.overlay."
OVERLAY_OPAQUE = "trusted.overlay.opaque"
# Upper dirs written with these features depend on the lower layer's inodes.
UNSUPPORTED_OVERLAY_XATTRS = ("trusted.overlay.metacopy", "trusted.overlay.redirect")
EMPTY_AT_TOP = ("proc", "sys")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def flatten(base_rootfs, upper_dir, dest) -> dict:
    """Write the merged view of base_rootfs + upper_dir as the new folder `dest`.

    dest must not exist and should be on the base image's filesystem (else
    every file is copied). Returns {"linked": n, "copied": n, "copied_bytes": n}.
    On error dest may hold a partial tree; the caller removes it.
    """
    dest = Path(dest)
    os.mkdir(dest, 0o700)
    fds = []
    try:
        for path in (base_rootfs, upper_dir, dest):
            fds.append(os.open(path, _DIR_FLAGS))
        flattener = _Flattener(fds[2])
        with more_open_files():
            flattener.merge_tree(fds[0], fds[1], fds[2])
        flattener.apply_meta(fds[2], _Node(fds[1], None))
        return flattener.stats
    except OSError as e:
        if disk_full(e):
            raise KiwiError(os_error_message(e, "write the new image")) from None
        raise
    finally:
        for fd in fds:
            os.close(fd)


class _Frame:
    """One folder being merged: its fds in each layer and in dest, and the names left."""

    def __init__(self, lower_fd, upper_fd, dest_fd, rel, source=None, owned=()):
        self.lower_fd, self.upper_fd, self.dest_fd, self.rel = lower_fd, upper_fd, dest_fd, rel
        self.source = source  # the _Node whose metadata the folder gets when done (None: top)
        self.owned = list(owned)  # fds this frame closes
        self.upper, self.lower_names, self.names = {}, set(), iter(())

    def list_names(self):
        self.upper = _upper_entries(self.upper_fd)
        whiteouts = {n for n, node in self.upper.items() if _is_whiteout(node.st)}
        if self.lower_fd is not None and not _is_opaque(self.upper_fd):
            self.lower_names = set(os.listdir(self.lower_fd))
        self.names = iter(sorted((self.lower_names | set(self.upper)) - whiteouts))

    def close(self):
        for fd in self.owned:
            os.close(fd)
        self.owned = []


class _Node:
    """One source entry: a directory fd plus a name (name None: the fd itself)."""

    def __init__(self, dir_fd, name, st=None):
        self.dir_fd, self.name = dir_fd, name
        self.st = st or (
            os.fstat(dir_fd) if name is None else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        )

    @property
    def proc_path(self):
        # xattr calls have no dir_fd form; this path stays inside dir_fd
        if self.name is None:
            return f"/proc/self/fd/{self.dir_fd}"
        return f"/proc/self/fd/{self.dir_fd}/{self.name}"

    def xattrs(self) -> dict:
        return read_xattrs(self.proc_path)


class _Flattener:
    def __init__(self, dest_root_fd):
        self.dest_root_fd = dest_root_fd
        self.copied_inodes = {}  # (dev, ino) of an upper file -> dest relpath of its first copy
        self.stats = {"linked": 0, "copied": 0, "copied_bytes": 0}

    def merge_tree(self, lower_fd, upper_fd, dest_fd):
        """Depth first with an explicit stack of _Frames: any depth."""
        top = _Frame(lower_fd, upper_fd, dest_fd, "")
        top.list_names()
        stack = [top]
        try:
            while stack:
                frame = stack[-1]
                name = next(frame.names, None)
                if name is None:
                    stack.pop()
                    self.finish_dir(frame)
                    continue
                child = self.add_entry(frame, name)
                if child is not None:
                    stack.append(child)
        finally:
            for frame in stack:
                frame.close()

    def add_entry(self, frame, name):
        rel = f"{frame.rel}/{name}" if frame.rel else name
        if name in frame.upper:
            lower_fd = frame.lower_fd if name in frame.lower_names else None
            return self.add_upper(lower_fd, frame.upper[name], frame.dest_fd, rel)
        return self.add_lower(_Node(frame.lower_fd, name), frame.dest_fd, rel)

    def add_upper(self, lower_fd, node, dest_fd, rel):
        mode = node.st.st_mode
        if stat.S_ISDIR(mode):
            lower_child = _Node(lower_fd, node.name) if lower_fd is not None else None
            if lower_child is not None and not stat.S_ISDIR(lower_child.st.st_mode):
                lower_child = None
            return self.add_dir(lower_child, node, dest_fd, rel)
        if stat.S_ISREG(mode):
            self.copy_file(node, dest_fd, rel)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(node.name, dir_fd=node.dir_fd), node.name, dir_fd=dest_fd)
            self.apply_meta(None, node, dest_fd)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(node.name, 0o600, dir_fd=dest_fd)
            self.apply_meta(None, node, dest_fd)
        # Device nodes and sockets are never part of an image.
        return None

    def add_lower(self, node, dest_fd, rel):
        mode = node.st.st_mode
        if stat.S_ISDIR(mode):
            return self.add_dir(node, None, dest_fd, rel)
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISFIFO(mode):
            self.link_or_copy(node, dest_fd, rel)
        return None

    def add_dir(self, lower, upper, dest_fd, rel):
        """lower/upper: the _Node of this dir in each layer, or None. Returns its _Frame."""
        source = upper or lower
        os.mkdir(source.name, 0o700, dir_fd=dest_fd)
        frame = _Frame(None, None, os.open(source.name, _DIR_FLAGS, dir_fd=dest_fd), rel, source)
        frame.owned.append(frame.dest_fd)
        try:
            if rel not in EMPTY_AT_TOP:
                frame.lower_fd = _open_subdir(lower, frame.owned)
                frame.upper_fd = _open_subdir(upper, frame.owned)
                frame.list_names()
        except BaseException:
            frame.close()
            raise
        return frame

    def finish_dir(self, frame):
        """Metadata last: the folder's mtime and a read-only mode must not be disturbed."""
        try:
            if frame.source is not None:
                self.apply_meta(frame.dest_fd, frame.source)
        finally:
            frame.close()

    def link_or_copy(self, node, dest_fd, rel):
        try:
            os.link(node.name, node.name, src_dir_fd=node.dir_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
            self.stats["linked"] += 1
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                raise
        if stat.S_ISREG(node.st.st_mode):
            self.copy_file(node, dest_fd, rel)
        elif stat.S_ISLNK(node.st.st_mode):
            os.symlink(os.readlink(node.name, dir_fd=node.dir_fd), node.name, dir_fd=dest_fd)
            self.apply_meta(None, node, dest_fd)
        else:
            os.mkfifo(node.name, 0o600, dir_fd=dest_fd)
            self.apply_meta(None, node, dest_fd)

    def copy_file(self, node, dest_fd, rel):
        key = (node.st.st_dev, node.st.st_ino)
        if node.st.st_nlink > 1 and key in self.copied_inodes:
            os.link(
                self.copied_inodes[key],
                node.name,
                src_dir_fd=self.dest_root_fd,
                dst_dir_fd=dest_fd,
                follow_symlinks=False,
            )
            return
        src = os.open(node.name, _READ_FLAGS, dir_fd=node.dir_fd)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return  # swapped for something else while we walked
            dst = os.open(node.name, _NEW_FILE_FLAGS, 0o600, dir_fd=dest_fd)
            try:
                copy_file_data(src, dst, st.st_size)  # holes stay holes: the image is on the host's disk
                self.apply_meta(dst, _Node(src, None, st), xattr_source=node)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if st.st_nlink > 1:
            self.copied_inodes[key] = rel
        self.stats["copied"] += 1
        self.stats["copied_bytes"] += st.st_size

    def apply_meta(self, fd, node, dest_dir_fd=None, xattr_source=None):
        """Owner, mode, xattrs, times of `node` onto fd (or onto node.name in dest_dir_fd)."""
        st = node.st
        xattrs = _copyable_xattrs(xattr_source or node)
        if fd is not None:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
            for name, value in xattrs.items():  # after chown, which clears file caps
                os.setxattr(fd, name, value)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            return
        name = node.name
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dest_dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dest_dir_fd)
        for key, value in xattrs.items():
            os.setxattr(f"/proc/self/fd/{dest_dir_fd}/{name}", key, value, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dest_dir_fd, follow_symlinks=False)


def _upper_entries(upper_fd) -> dict:
    if upper_fd is None:
        return {}
    entries = {}
    for name in os.listdir(upper_fd):
        node = _Node(upper_fd, name)
        entries[name] = node
    return entries


def _open_subdir(node, opened):
    if node is None:
        return None
    fd = os.open(node.name, _DIR_FLAGS, dir_fd=node.dir_fd)
    opened.append(fd)
    return fd


def _is_whiteout(st) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(upper_fd) -> bool:
    if upper_fd is None:
        return False
    try:
        return os.getxattr(upper_fd, OVERLAY_OPAQUE) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _copyable_xattrs(node) -> dict:
    xattrs = node.xattrs()
    for name in UNSUPPORTED_OVERLAY_XATTRS:
        if name in xattrs:
            raise KiwiError(
                f"the container's changes use overlayfs {name.split('.')[-1]}, "
                "which commit cannot flatten; mount overlays without it"
            )
    return {k: v for k, v in xattrs.items() if not k.startswith(OVERLAY_XATTR_PREFIX)}
