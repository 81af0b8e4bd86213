"""Walk and remove directory trees of any depth.

A container can nest folders thousands of levels deep, so nothing here
recurses (Python 3.11's os.walk and shutil.rmtree do): each walk keeps an
explicit stack of directory fds, opened with O_NOFOLLOW, so a tree that
changes meanwhile can never lead the walk outside itself, and no path grows
past PATH_MAX. One fd per level: a walk raises its soft open-file limit to
the hard one while it runs (the usual 1024 would end at that depth).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator

from .errors import KiwiError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # removed or swapped while we walked


class more_open_files:  # lower case: used as a function, `with more_open_files(top):`
    """Allow as many open files as the hard limit does, for the duration of a deep walk;
    a tree deeper than even that is one clear line. A class, not a contextlib generator:
    enter.sealed_copy imports this module on every start and attach, where contextlib
    is not otherwise loaded."""

    def __init__(self, top=None):
        self.top = top

    def __enter__(self) -> None:
        import resource

        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.soft != self.hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.hard, self.hard))

    def __exit__(self, kind, error, traceback) -> None:
        import resource

        if self.soft != self.hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.soft, self.hard))
        if isinstance(error, OSError) and error.errno == errno.EMFILE:
            where = f"{os.fsdecode(self.top)} is" if self.top is not None else "the files are"
            raise KiwiError(
                f"{where} nested deeper than the open-file limit ({self.hard}) allows;"
                " raise it (ulimit -Hn) and try again"
            ) from None


def open_subdir(dir_fd: int, name: str) -> int | None:
    """An fd of the folder `name` in dir_fd, or None when it is gone or no longer a folder."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in GONE:
            return None
        raise


def read_xattrs(target: int | str) -> dict[str, bytes]:
    """The extended attributes of an open fd, or of a path never followed (a
    /proc/self/fd/<dir fd>/<name> path keeps the lookup inside that folder: the xattr
    calls have no dir_fd form); {} where the file system has none or the file went."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOENT, errno.ENODATA):
            return {}
        raise
    found = {}
    for name in names:
        try:
            found[name] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):  # removed since listed
                raise
    return found


def walk_stats(top):
    """(dir_fd, name, lstat) for every entry below top, each folder before its contents.

    dir_fd is valid only until the next item is taken."""
    with more_open_files(top):
        stack = [(os.open(top, DIR_FLAGS), None)]
        try:
            while stack:
                fd, names = stack[-1]
                if names is None:
                    names = iter(sorted(os.listdir(fd)))
                    stack[-1] = (fd, names)
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield fd, name, st
                if stat.S_ISDIR(st.st_mode):
                    sub = open_subdir(fd, name)
                    if sub is not None:
                        stack.append((sub, None))
        finally:
            for fd, _ in stack:
                os.close(fd)


def remove_tree(path, ignore_errors: bool = False) -> None:
    """shutil.rmtree for trees of any depth; a symlink is removed, never followed.
    With ignore_errors, what cannot be removed stays and the rest goes."""
    path = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        with more_open_files(path):
            _remove_contents(os.open(path, DIR_FLAGS), ignore_errors)
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def remove_tree_at(parent_fd: int, name: str) -> None:
    """remove_tree for the entry `name` of an open folder: no path is looked up,
    so a tree in a container's root is removed without following its links."""
    try:
        os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        sub = open_subdir(parent_fd, name)
        if sub is not None:
            with more_open_files():
                _remove_contents(sub, ignore_errors=True)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError:
            pass


def _remove_contents(top_fd: int, ignore_errors: bool) -> None:
    stack = [(top_fd, None, iter(os.listdir(top_fd)))]  # (fd, its name in the parent, names)
    try:
        while stack:
            fd, own_name, names = stack[-1]
            name = next(names, None)
            try:
                if name is None:
                    os.close(stack.pop()[0])
                    if stack:
                        os.rmdir(own_name, dir_fd=stack[-1][0])
                    continue
                try:
                    os.unlink(name, dir_fd=fd)
                except IsADirectoryError:
                    sub = open_subdir(fd, name)
                    if sub is not None:
                        try:
                            listing = os.listdir(sub)
                        except OSError:
                            os.close(sub)
                            raise
                        stack.append((sub, name, iter(listing)))
            except FileNotFoundError:
                pass
            except OSError:
                if not ignore_errors:
                    raise
    finally:
        for fd, _, _ in stack:
            os.close(fd)


COPY_CHUNK = 1 << 24


def copy_file_data(src: int, dst: int, size: int) -> int:
    """The first size bytes of src into the new, empty file dst, its holes kept as holes:
    a container's sparse file (16 TiB in a few blocks, what ext4 allows) costs the host
    no more blocks than it costs the container, and a file the container keeps growing
    meanwhile ends at the size it had. Returns the bytes of data copied."""
    copied = 0
    for start, length in data_runs(src, size):
        done = copy_range(src, dst, start, length)
        copied += done
        if done < length:  # it ends there: it shrank meanwhile, or holds less than it says (/sys)
            size = start + done
            break
    os.ftruncate(dst, size)  # the holes up to the end
    return copied


# The data regions one sparse archive member may have: extract.py reads no more (tarfile holds
# the map in memory, ~150 bytes a region, and 2 KB of xz can declare 50 M of them), and
# archive.py refuses to write more.
MAX_SPARSE_REGIONS = 1 << 20


def data_regions(fd: int, size: int, most: int | None = None) -> list[tuple[int, int]]:
    """The data_runs of fd's first size bytes as a list: at most `most` + 1 of them (the
    caller refuses more), or all."""
    return list(itertools.islice(data_runs(fd, size), None if most is None else most + 1))


def data_runs(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each run of data in the first size bytes of fd, one at a time
    (a container makes a run per 4 KiB of its storage: held in a list, ~150 bytes each, a
    100G container's file was 3.7 GB of kiwi's memory in commit or cp); the rest are
    holes (SEEK_DATA/SEEK_HOLE: a filesystem without holes says it is all data). The
    file's offset is left where it was."""
    offset, position = 0, os.lseek(fd, 0, os.SEEK_CUR)
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # only a hole from offset to the end
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end > start:  # else punched between the two seeks: a hole now
                yield start, end - start
            offset = max(end, start + 1)
    finally:
        os.lseek(fd, position, os.SEEK_SET)


def copy_range(src: int, dst: int, offset: int, length: int) -> int:
    """length bytes at offset, from src to dst at the same offset; fewer when src ends
    first (it shrank meanwhile, or holds less than it says). In the kernel where it can:
    copy_file_range (reflinks on the same filesystem), else sendfile (across filesystems,
    into a memfd: enter.sealed_copy), else pread and pwrite (what neither takes: /sys).
    Each step goes on from where the one it replaces was refused."""
    end = offset + length
    for step in (_copy_file_range, _sendfile, _pread_pwrite):
        try:
            while offset < end:
                n = step(src, dst, offset, min(COPY_CHUNK, end - offset))
                if n == 0:
                    break
                offset += n
            break
        except OSError as e:
            if step is _pread_pwrite or e.errno not in REFUSED:
                raise
    return length - (end - offset)


REFUSED = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)  # a copy step refused: try the next


def _copy_file_range(src: int, dst: int, offset: int, count: int) -> int:
    return os.copy_file_range(src, dst, count, offset, offset)


def _sendfile(src: int, dst: int, offset: int, count: int) -> int:
    os.lseek(dst, offset, os.SEEK_SET)  # sendfile writes at dst's file offset
    return os.sendfile(dst, src, offset, count)


def _pread_pwrite(src: int, dst: int, offset: int, count: int) -> int:
    chunk = os.pread(src, count, offset)
    done = 0
    while done < len(chunk):
        done += os.pwrite(dst, chunk[done:], offset + done)
    return len(chunk)
