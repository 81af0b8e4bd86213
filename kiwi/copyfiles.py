"""`kiwi cp`: files and folders between the host and a container, through the container's view.

The container's side is always reached from its root: a running container's
/proc/<init>/root, a stopped one's overlay built in a private mount namespace.
Paths given by the user resolve with openat2(RESOLVE_IN_ROOT), so the
container's symlinks lead only inside it; everything below is walked one
name at a time with O_NOFOLLOW from open folders (no recursion, no path
looked up again), so swapping a folder for a link mid-copy leads nowhere.
The copy is built under a temporary name and renamed into place at the end:
a failure leaves nothing half-written; a copy to the host records where it stages,
so that `kiwi cleanup` removes what a killed one left (StagingRecords). Never prints.

Owners and modes, as `docker cp` and GNU cp without -p: out to the host the copy is
the caller's (kiwi's real uid and gid), its modes masked by the umask; into a container
it is the container's root's, modes kept. --archive keeps the numeric owners (as the
container sees them) and the modes. Set-id bits never come out (a container's
setuid-root file must never run as root on the host), and go in only with --archive
(they name the owner they were set for).

The host's paths resolve as the host's, but an existing symlink at the destination is
replaced, never followed (a folder copied out brings the container's links), except the
caller's own /dev/stdout and /dev/stderr. A file copied out onto an existing FIFO or
character device, or onto those, is written into it, as cp does, never renamed over
it; a terminal is refused (the file's escape sequences would act on it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from . import fstree
from .errors import KiwiError
from .idmap import SIZE as ID_BLOCK  # ids of an unprivileged container

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NO_SET_ID = 0o1777  # a mode without its setuid and setgid bits
OVERFLOW_ID = 65534  # the kernel's overflowuid: an id with no mapping


def split_ref(text: str) -> tuple[str | None, str]:
    """'container:/path' -> (container, path); a host path -> (None, path).
    A host path with a colon is written ./a:b or /a:b."""
    head, sep, tail = text.partition(":")
    if sep and head and not head.startswith((".", "/")) and "/" not in head:
        if not tail:
            raise KiwiError(f"{text!r}: give a path after the colon, e.g. {head}:/root")
        return head, tail
    return None, text


class Copy:
    """One copy of a file, folder or symlink tree from an open source to a folder fd."""

    def __init__(
        self,
        to_host: bool,
        label: str,
        shift: int = 0,
        archive: bool = False,
        umask: int = 0o022,
        records: StagingRecords | None = None,
    ):
        self.to_host = to_host
        self.label = label  # the source as the user named it, for messages
        # A running unprivileged container's tree shows host ids <base>+id: shift is
        # that base (0 otherwise), so the copy carries the ids the container sees.
        self.shift = shift
        self.archive = archive  # keep the numeric owners and the modes (cp -a)
        self.umask = umask  # the caller's, for what goes to the host
        self.caller = (os.getuid(), os.getgid())
        self.entries = 0
        self.bytes = 0
        self.streamed = False  # written into a FIFO or device, not a new file
        self.records = records  # where a copy to the host stages, for `kiwi cleanup`

    # --- the top ---
    def run(self, src_path_fd: int, dst_parent: int, dst_name: str, shown: str = "") -> None:
        """src_path_fd: an O_PATH fd of the source (resolved already); dst_parent: the folder;
        shown: the destination as the user would name it, for messages."""
        st = os.fstat(src_path_fd)
        if self.to_host and stat.S_ISREG(st.st_mode):
            into = existing_host_entry(dst_parent, dst_name, shown or dst_name)
            if into is not None:
                self.write_into(src_path_fd, into, shown or dst_name)
                return
        self.staged(src_path_fd, st, dst_parent, dst_name)

    def staged(self, src_path_fd: int, st: os.stat_result, dst_parent: int, dst_name: str) -> None:
        """Built under a temporary name, renamed over dst_name once whole."""
        tmp = f"{STAGING_PREFIX}{secrets.token_hex(4)}"
        record = None
        try:
            record = self.records.begin(dst_parent, tmp) if self.records else None
            if stat.S_ISDIR(st.st_mode):
                src = os.open(".", DIR_FLAGS, dir_fd=src_path_fd)
                self.copy_tree(src, st, dst_parent, tmp)
            elif stat.S_ISREG(st.st_mode):
                src = os.open(f"/proc/self/fd/{src_path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    self.copy_file(src, st, dst_parent, tmp)
                finally:
                    os.close(src)
            else:
                raise self.special(self.label, st)
            self.rename_into_place(dst_parent, tmp, dst_name)
        except BaseException as e:
            fstree.remove_tree_at(dst_parent, tmp)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise KiwiError(self.full_message()) from None
            raise
        finally:
            if record:
                StagingRecords.end(record)

    def write_into(self, src_path_fd: int, dst: int, shown: str) -> None:
        """A regular file's data into an open FIFO or character device (closed here): no
        owner, mode or time is set on it. What it refuses stops the copy part way: a stream
        has no undo."""
        try:
            src = os.open(f"/proc/self/fd/{src_path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                size = os.fstat(src).st_size
                self.bytes += stream_file(src, dst, size) if size else copy_pseudo_file(src, dst)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EINVAL):
                    raise
                raise KiwiError(f"{shown}: {os.strerror(e.errno)}; the copy stopped part way") from None
            finally:
                os.close(src)
        finally:
            os.close(dst)
        self.entries += 1
        self.streamed = True

    def full_message(self) -> str:
        if self.to_host:
            return (
                "the host's disk is full where the copy goes; nothing was copied: free space and copy again"
            )
        return (
            "the container's storage is full; nothing was copied: free space in it"
            " or raise its limit with kiwi set <container> --storage"
        )

    def rename_into_place(self, parent: int, tmp: str, name: str) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
            raise KiwiError(
                f"{name} exists at the destination as a folder, or as a file where a folder goes;"
                " remove it or choose another name"
            ) from None

    # --- the walk ---
    def copy_tree(self, src: int, st: os.stat_result, dst_parent: int, dst_name: str) -> None:
        """Folders of any depth, without recursion: one (source, destination) fd pair per level."""
        with fstree.more_open_files():
            stack = [
                (src, self.make_dir(dst_parent, dst_name), st, iter(sorted(os.listdir(src))), self.label)
            ]
            try:
                while stack:
                    s, d, dir_st, names, path = stack[-1]
                    name = next(names, None)
                    if name is None:
                        self.set_owner_mode_times(d, dir_st)
                        stack.pop()
                        os.close(s)
                        os.close(d)
                        continue
                    child = self.copy_entry(s, name, d, f"{path.rstrip('/')}/{name}")
                    if child is not None:
                        stack.append(child)
            finally:
                for s, d, *_ in stack:
                    os.close(s)
                    os.close(d)

    def copy_entry(self, s: int, name: str, d: int, path: str):
        """Copy one entry; a folder is returned as the next level of the walk."""
        try:
            st = os.stat(name, dir_fd=s, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed meanwhile
        if stat.S_ISDIR(st.st_mode):
            sub = fstree.open_subdir(s, name)
            if sub is None or not same_file(os.fstat(sub), st):
                if sub is not None:
                    os.close(sub)
                raise KiwiError(f"{path} changed while it was copied; copy again")
            try:
                dst = self.make_dir(d, name)
            except BaseException:
                os.close(sub)
                raise
            return (sub, dst, st, iter(sorted(os.listdir(sub))), path)
        if stat.S_ISREG(st.st_mode):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=s)
            try:
                if not same_file(os.fstat(src), st):
                    raise KiwiError(f"{path} changed while it was copied; copy again")
                self.copy_file(src, st, d, name)
            finally:
                os.close(src)
        elif stat.S_ISLNK(st.st_mode):
            # Copied as a link, never followed: its target means something only inside its tree.
            os.symlink(os.readlink(name, dir_fd=s), name, dir_fd=d)
            os.chown(name, *self.owner(st), dir_fd=d, follow_symlinks=False)
            self.entries += 1
        else:
            raise self.special(path, st)
        return None

    # --- one entry ---
    def make_dir(self, parent: int, name: str) -> int:
        os.mkdir(name, 0o700, dir_fd=parent)
        self.entries += 1
        return os.open(name, DIR_FLAGS, dir_fd=parent)

    def copy_file(self, src: int, st: os.stat_result, parent: int, name: str) -> None:
        dst = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            # Its holes stay holes, and it ends at the size it had (a container may grow it forever).
            size = os.fstat(src).st_size
            if size:
                fstree.copy_file_data(src, dst, size)
            else:  # /proc's and /sys' files say 0 and hold text: read them, within a bound
                size = copy_pseudo_file(src, dst)
            self.bytes += size
            self.set_owner_mode_times(dst, st)
        finally:
            os.close(dst)
        self.entries += 1

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        """The (uid, gid) to give the copy, as the destination stores them: with --archive
        the container's view of the source's ids; else out, the caller's, and in, the
        container's root."""
        if self.archive:
            return self.shifted(st.st_uid), self.shifted(st.st_gid)
        if self.to_host:
            return self.caller
        return self.shifted(0), self.shifted(0)

    def shifted(self, i: int) -> int:
        if not self.shift:
            return i
        if self.to_host:  # host id <base>+n -> n; one outside the block is nobody's
            return i - self.shift if 0 <= i - self.shift < ID_BLOCK else OVERFLOW_ID
        return self.shift + (i if i < ID_BLOCK else OVERFLOW_ID)

    def set_owner_mode_times(self, fd: int, st: os.stat_result) -> None:
        """The owner, the mode (chmod after chown, which clears setuid), the times."""
        os.fchown(fd, *self.owner(st))
        os.fchmod(fd, copy_mode(stat.S_IMODE(st.st_mode), self.to_host, self.archive, self.umask))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    @staticmethod
    def special(path: str, st: os.stat_result) -> KiwiError:
        kind = {
            stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device",
            stat.S_IFIFO: "a FIFO",
            stat.S_IFSOCK: "a socket",
        }
        what = kind.get(stat.S_IFMT(st.st_mode), "a special file")
        return KiwiError(f"{path} is {what}; kiwi cp copies only files, folders and symlinks")


def copy_mode(mode: int, to_host: bool, archive: bool, umask: int) -> int:
    """The permission bits a copy gets. Out: never setuid or setgid; without --archive
    masked by the caller's umask (GNU cp without -p; the sticky bit stays, as there).
    In: kept; without --archive not the set-id bits, which named the source's owner."""
    if to_host:
        return mode & NO_SET_ID if archive else mode & NO_SET_ID & ~umask
    return mode if archive else mode & NO_SET_ID


def current_umask() -> int:
    """This process's umask, read without changing it (kernel 4.7+), else set back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- what a killed copy left on the host ------------------------------------------------

STAGING_PREFIX = ".kiwi-cp-"  # + 8 hex digits: the entry a copy builds before its rename
RECORD_PREFIX = "cpstage-"  # + <pid>-<staging name>.json in the data folder's .tmp


class StagingRecords:
    """A copy to the host writes down where it stages (the folder's path, device and
    inode, the staging name) in the data folder's .tmp before it makes the entry, and
    removes the record once it renamed or removed it. `kiwi cleanup` removes the entry of
    a record whose writer died (remove_leftovers), and only that: never an entry merely
    named like one (a container names its files as it likes, and a folder it copies out
    brings them), never one a live copy is building. Into a container nothing is
    recorded: its leftovers stay its own (as the container's files)."""

    def __init__(self, tmp_dir: str):
        self.tmp_dir = tmp_dir

    def begin(self, parent: int, name: str) -> str:
        import json

        st = os.fstat(parent)
        folder = os.readlink(f"/proc/self/fd/{parent}")
        path = os.path.join(self.tmp_dir, f"{RECORD_PREFIX}{os.getpid()}-{name}.json")
        data = json.dumps({"folder": folder, "dev": st.st_dev, "ino": st.st_ino, "name": name})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
        return path

    @staticmethod
    def end(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_leftovers(tmp_dir: str, alive) -> list[str]:
    """For `kiwi cleanup`: the staging entries of copies to the host that died (their
    record's pid is not alive(pid)), each checked to be in the very folder recorded
    (device and inode) under its recorded name; then the records. What it removed."""
    import json
    import re

    removed: list[str] = []
    try:
        names = os.listdir(tmp_dir)
    except FileNotFoundError:
        return removed
    for record in names:
        match = re.fullmatch(rf"{RECORD_PREFIX}(\d+)-(.*)\.json", record)
        if not match or alive(int(match.group(1))):
            continue
        path = os.path.join(tmp_dir, record)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read(1 << 16))
            folder, dev, ino, name = data["folder"], data["dev"], data["ino"], data["name"]
        except (OSError, ValueError, KeyError, TypeError):
            folder = None  # cut short before its entry was made
        if (
            isinstance(folder, str)
            and name == match.group(2)
            and re.fullmatch(rf"{re.escape(STAGING_PREFIX)}[0-9a-f]{{8}}", name)
        ):
            removed += remove_staged(folder, dev, ino, name)
        StagingRecords.end(path)
    return removed


def remove_staged(folder: str, dev: int, ino: int, name: str) -> list[str]:
    try:
        parent = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []  # gone, or no longer a folder: nothing of the copy is left there
    try:
        st = os.fstat(parent)
        if (st.st_dev, st.st_ino) != (dev, ino):
            return []  # another folder has that path now
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return []  # renamed into place, or removed, before the copy was killed
        fstree.remove_tree_at(parent, name)
        return [f"half-copied {os.path.join(folder, name)}"]
    finally:
        os.close(parent)


# --- an existing host destination -------------------------------------------------------


def existing_host_entry(parent: int, name: str, shown: str) -> int | None:
    """Where a regular file copied out goes when the host already has `name` in the open
    folder `parent`:
    - None: nothing there, a file, a folder or a symlink: staged and renamed over it as
      before (a folder refuses the rename). A symlink is replaced, never followed: a
      folder copied out brings the container's links (to /run/initctl, /dev/port, the
      host's /etc/...), and a later copy into that folder must not write through them;
    - an fd open for writing: a FIFO or character device itself (only the host's own
      can be there: copies never make one), or the caller's own stdout or stderr
      (/dev/stdout, /dev/stderr, /proc/self/fd/1, /dev/fd/2): the data goes into it, as
      cp writes into them.
    A block device, a socket and a terminal are refused."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        n = caller_stdio(parent, name)
        return None if n is None else stdio_for_writing(n, parent, name, shown)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        # held as it is: the checks and the write see one inode, even if renamed meanwhile
        held = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_IFMT(os.fstat(held).st_mode) != stat.S_IFMT(st.st_mode):
                raise KiwiError(f"{shown} changed on the host while it was copied; copy again")
            fd = os.open(f"/proc/self/fd/{held}", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(held)
        return refuse_terminal(fd, shown)
    if stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        what = "a block device" if stat.S_ISBLK(st.st_mode) else "a socket"
        raise KiwiError(f"{shown} is {what}; kiwi cp does not write into it: choose another destination")
    return None


# What names the caller's stdout and stderr: /dev/stdout's link, /dev/fd/N's.
STDIO_LINKS = {"/proc/self/fd/1": 1, "/proc/self/fd/2": 2, "/dev/fd/1": 1, "/dev/fd/2": 2}


def caller_stdio(parent: int, name: str) -> int | None:
    """1 or 2 when the symlink `name` in `parent` is the caller's stdout or stderr: the
    host's own /dev/stdout or /dev/stderr saying /proc/self/fd/1, or 1 or 2 in this
    process's own fd folder (/dev/fd/1, /proc/self/fd/2).
    Only in the host's /dev: a link's text alone proves nothing, since a folder copied out
    brings the container's links, and one saying /proc/self/fd/1 would have sent a later
    copy onto it into kiwi's stdout (the admin's log or pipe) instead of replacing it."""
    n = None
    if name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            if same_file(os.fstat(parent), os.stat("/dev")):
                n = STDIO_LINKS.get(os.readlink(name, dir_fd=parent))
    elif name in ("1", "2"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{parent}") == f"/proc/{os.getpid()}/fd":
                n = int(name)
    return n


def stdio_for_writing(n: int, parent: int, name: str, shown: str) -> int:
    """A copy of fd n (written where the caller's shell pointed it: its offset, its
    O_APPEND), once the link is seen to lead there."""
    try:
        held = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        raise KiwiError(f"{shown}: kiwi has no such output; give a file instead") from None
    try:
        if not same_file(os.fstat(held), os.fstat(n)):
            raise KiwiError(f"{shown} changed while it was copied; copy again")
    finally:
        os.close(held)
    return refuse_terminal(os.dup(n), shown)


def refuse_terminal(fd: int, shown: str) -> int:
    if os.isatty(fd):
        os.close(fd)
        raise KiwiError(
            f"{shown} is a terminal; kiwi cp does not write a container's file to it (its escape"
            " sequences would act on the terminal): copy to a file, or pipe through cat -v"
        )
    return fd


def stream_file(src: int, dst: int, size: int) -> int:
    """The first size bytes of src written to dst, a FIFO or a device (no holes, no offset
    of its own): the container may grow the file meanwhile, the copy ends where it was."""
    done = 0
    while done < size:
        chunk = os.read(src, min(1 << 20, size - done))
        if not chunk:
            break  # shrank meanwhile
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        done += len(chunk)
    return done


PSEUDO_FILE_LIMIT = 16 << 20  # far above any /proc or /sys file


def copy_pseudo_file(src: int, dst: int) -> int:
    """A file whose size says 0, read to its end: a /proc or /sys file, or one the container
    grows meanwhile, which must not keep the copy going."""
    data = bytearray()
    while chunk := os.read(src, 1 << 20):
        data += chunk
        if len(data) > PSEUDO_FILE_LIMIT:
            raise KiwiError("a file grew past 16M while it was copied; copy again")
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return len(data)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --- the container's side ---------------------------------------------------------------


def open_in_container(root: int, path: str, flags: int = os.O_PATH) -> int:
    """path resolved with the container's root as '/': its links never lead out, no magic links."""
    from . import syscalls as sc

    return sc.openat2(
        root, path.lstrip("/") or ".", flags | os.O_CLOEXEC, 0, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
    )


def leaf_name(path: str, fallback: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    return name if name not in ("", ".", "..") else fallback


def destination(open_dir, path: str, src_name: str) -> tuple[int, str, str]:
    """(folder fd, name, the path shown) like cp: into an existing folder under the source's
    name, else as `path`."""
    try:
        return open_dir(path), src_name, os.path.join(path, src_name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    name = os.path.basename(path.rstrip("/"))
    if name in ("", ".", ".."):
        raise KiwiError(f"{path}: give the new name or an existing folder as the destination")
    return open_dir(os.path.dirname(path.rstrip("/")) or "/"), name, path


def copy_to(src: int, open_dir, dest: str, src_name: str, job: Copy) -> tuple[int, int, bool]:
    """Copy the open source (closed here) to dest, whose folders open_dir opens:
    (entries, bytes, written into a FIFO or device)."""
    try:
        parent, name, shown = destination(open_dir, dest, src_name)
        try:
            job.run(src, parent, name, shown)
        finally:
            os.close(parent)
    finally:
        os.close(src)
    return job.entries, job.bytes, job.streamed


def copy_out(
    root: int,
    cpath: str,
    host_dest: str,
    label: str,
    shift: int = 0,
    archive: bool = False,
    umask: int = 0o022,
    records: StagingRecords | None = None,
) -> tuple[int, int, bool]:
    try:
        src = open_in_container(root, cpath)
    except FileNotFoundError:
        raise KiwiError(f"{label}: no such file or folder in the container") from None

    def host_dir(path):
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    job = Copy(to_host=True, label=label, shift=shift, archive=archive, umask=umask, records=records)
    return copy_to(src, host_dir, host_dest, leaf_name(cpath, "root"), job)


def copy_in(
    root: int, host_src: str, cpath: str, shift: int = 0, archive: bool = False
) -> tuple[int, int, bool]:
    src = os.open(host_src, os.O_PATH | os.O_CLOEXEC)  # the user's own path: followed

    def container_dir(path):
        return open_in_container(root, path, os.O_PATH | os.O_DIRECTORY)

    job = Copy(to_host=False, label=host_src, shift=shift, archive=archive)
    if not shift:
        return copy_to(src, container_dir, cpath, leaf_name(host_src, "copy"), job)
    from .rootfs import acting_as

    with acting_as(shift):  # a running unprivileged container's files are made by its root
        return copy_to(src, container_dir, cpath, leaf_name(host_src, "copy"), job)


def in_container_view(store, cid: str, work) -> tuple[int, int, bool]:
    """work(root_fd, shift) on the container's root: the live one, or (stopped) an overlay of
    its image and state in a private namespace that goes away with the helper process.
    shift: the base of a running unprivileged container's ids as the host sees them there
    (its stopped state holds the container's own ids: 0).

    A stopped container is copied under its lock (a start waits for the copy, saying so),
    after what a killed `set --storage` left half done is finished, as start, snap and
    mount do: else the copy could land in a state.img that the finishing step then drops.
    One that a start got to first is copied through its live root."""
    from . import runtime

    record = runtime.read_runtime(store, cid)
    if not record:
        from . import privatens, storage_ops

        with store.container_lock(cid):
            record = runtime.read_runtime(store, cid)
            if not record:
                mounted = runtime.read_mount(store, cid)
                if mounted:  # a second overlay on its upper folder would corrupt it
                    raise KiwiError(
                        f"container {cid} is mounted at {mounted}; copy there, or run kiwi unmount {cid} first"
                    )
                runtime.refuse_if_left_running(store, cid)
                config = store.container_config(cid)
                storage_ops.finish_interrupted_change(store, config)
                lower = str(store.image_dir(config["image"]) / "rootfs")
                return privatens.run(on_stopped_root, store, cid, lower, work)
    return on_live_root(store, cid, record, work)


def on_live_root(store, cid: str, record: dict, work):
    """work(root fd, shift) on a running container's root."""
    from . import idmap

    root = os.open(f"/proc/{record['init_pid']}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return work(root, idmap.base_of(store.container_config(cid)) or 0)
    finally:
        os.close(root)


def on_stopped_root(store, cid: str, lower: str, work):
    """In a private mount namespace (privatens.run): state + overlay, then work(root fd)."""
    from . import privatens

    with privatens.work_folder(store, "cp") as base:
        merged = privatens.mount_stopped_root(store, cid, lower, base)
        root = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return work(root, 0)
        finally:
            os.close(root)


def copy(store, source: str, dest: str, archive: bool = False) -> tuple[int, int, str, bool]:
    """kiwi cp: (entries, bytes, the container's id, written into a FIFO or device).
    archive: keep numeric owners and modes (-a), else as a new file of the caller's
    (out) or of the container's root (in)."""
    src_c, src_path = split_ref(source)
    dst_c, dst_path = split_ref(dest)
    if (src_c is None) == (dst_c is None):
        raise KiwiError(
            "kiwi cp copies between a container and the host: kiwi cp <c>:/path host-path, or back"
        )
    cid = store.resolve_container(src_c or dst_c)
    if src_c:
        umask = current_umask()
        records = StagingRecords(str(store.tmp_dir))
        entries, size, streamed = in_container_view(
            store,
            cid,
            lambda root, shift: copy_out(root, src_path, dst_path, source, shift, archive, umask, records),
        )
    else:
        if not os.path.lexists(src_path):
            raise KiwiError(f"no such file or folder: {src_path}")
        entries, size, streamed = in_container_view(
            store, cid, lambda root, shift: copy_in(root, src_path, dst_path, shift, archive)
        )
    return entries, size, cid, streamed
