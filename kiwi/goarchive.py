"""`.kiwi` files written by the original Go Kiwi: read them through Kiwi's own extractor.

The Go program wrote two forms, both holding meta.json, manifest.json,
config.json (containers), rootfs/ and state/upper/ (overlay whiteouts as 0:0
character devices, opaque folders as trusted.overlay.opaque):

- squashfs (`mksquashfs -comp lz4`; gzip, xz and zstd read too): the kernel's
  squashfs reads it from a read-only loop device, mounted ro,nodev,nosuid,noexec
  in a private mount namespace that dies with the helper process. The
  superblock is checked first, so only a plausible squashfs 4.0 reaches the
  kernel. Nothing is ever run or opened through a symlink from it: its tree is
  walked with O_NOFOLLOW fds and every entry goes through extract.Extractor, so
  the archive obeys the same rules as any tarball (no '..', no absolute names,
  no writes through symlinks, no device nodes, overlay xattrs only as Kiwi
  sets them).
- the older tar.gz: streamed member by member into the same Extractor.

Nothing from the archive widens access: `network: host` is never taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import tarfile
import types

from .errors import KiwiError
from .extract import UnsafeArchiveError
from .fstree import read_xattrs

SQUASHFS_MAGIC = b"hsqs"
GZIP_MAGIC = b"\x1f\x8b"
# squashfs compressor ids the kernel reads and the Go program could choose
SQUASHFS_COMPRESSORS = {1: "gzip", 4: "xz", 5: "lz4", 6: "zstd"}
SQUASHFS_SUPERBLOCK = struct.Struct("<IIiIIHHHHHHqqqqqqqq")
META_FILES = ("meta.json", "manifest.json", "config.json")
META_LIMIT = 1 << 20
ROOTFS, UPPER = "rootfs", "state/upper"
WHITEOUT_DEV = 0
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def archive_format(path) -> str | None:
    """'squashfs' or 'tar.gz' for a Go Kiwi file, None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head == SQUASHFS_MAGIC:
        return "squashfs"
    if head[:2] == GZIP_MAGIC:
        return "tar.gz"
    return None


def check_superblock(path) -> None:
    """Refuse what is not a sane squashfs 4.0 before the kernel parses any of it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(SQUASHFS_SUPERBLOCK.size)
    bad = KiwiError(f"{path} is not a valid squashfs archive; the file is damaged or hostile")
    if len(raw) < SQUASHFS_SUPERBLOCK.size:
        raise bad
    (
        magic,
        inodes,
        _mtime,
        block_size,
        fragments,
        compression,
        block_log,
        _flags,
        ids,
        major,
        minor,
        root_inode,
        bytes_used,
        *tables,
    ) = SQUASHFS_SUPERBLOCK.unpack(raw)
    if compression not in SQUASHFS_COMPRESSORS:
        raise KiwiError(
            f"{path} uses squashfs compressor {compression}; Kiwi reads gzip, xz, lz4"
            f" and zstd, make the archive again with one of them"
        )
    sane = (
        magic == int.from_bytes(SQUASHFS_MAGIC, "little")
        and (major, minor) == (4, 0)
        and 12 <= block_log <= 20
        and block_size == 1 << block_log
        and SQUASHFS_SUPERBLOCK.size < bytes_used <= size
        and 0 < ids <= 65536
        and inodes > 0
        and fragments >= 0
        and root_inode >= 0
        and all(t == -1 or 0 < t <= bytes_used for t in tables)
    )
    if not sane:
        raise bad


# ------------------------------------------------------------------ reading


@contextlib.contextmanager
def opened_archive(path, fmt):
    """Inside a private mount namespace: an fd of the archive's top folder (squashfs).

    The mount is detached at once and its folder removed: only the fd keeps it
    alive, so nothing is left on any path, even if the helper is killed.
    """
    fd = _mount_detached(path, fmt)
    try:
        yield fd
    except OSError as e:  # the kernel's reader refused a damaged or crafted inode
        raise KiwiError(
            f"{path} is damaged or hostile: reading it failed ({e.strerror}); it cannot be used"
        ) from None
    finally:
        os.close(fd)  # the last reference: the mount and its loop device go away


def _mount_detached(path, fmt) -> int:
    import tempfile

    from . import loop
    from . import syscalls as sc

    mnt = tempfile.mkdtemp(prefix="kiwi-go-archive-")
    try:
        with loop.attach(path, read_only=True) as dev:
            flags = sc.MS_RDONLY | sc.MS_NODEV | sc.MS_NOSUID | sc.MS_NOEXEC
            try:
                sc.mount(str(dev), mnt, "squashfs", flags, None)
            except OSError as e:
                raise KiwiError(
                    f"cannot read {path} as squashfs ({e.strerror}); the file is"
                    f" damaged, or this kernel lacks squashfs {fmt} support"
                ) from None
        try:
            return os.open(mnt, _NOFOLLOW_DIR)
        finally:
            sc.umount(mnt, sc.MNT_DETACH)
    finally:
        os.rmdir(mnt)


def read_small_file(dir_fd: int, name: str, path) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KiwiError(f"{path}: cannot read its {name} ({e.strerror}); the file is damaged") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KiwiError(f"{path}: its {name} is not a plain file; the file is damaged or hostile")
        data = f.read(META_LIMIT + 1)
    if len(data) > META_LIMIT:
        raise KiwiError(f"{path}: its {name} is over {META_LIMIT} bytes; the file is damaged or hostile")
    return data


def json_object(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as e:
        raise KiwiError(f"{what} is damaged ({e})") from None
    if not isinstance(value, dict):
        raise KiwiError(f"{what} is not a JSON object; it is damaged")
    return value


def parse_meta(found: dict, path) -> dict:
    """{'meta', 'manifest', 'config', 'identity'} from the archive's JSON files."""
    info = {}
    for name in META_FILES:
        data = found.get(name)
        key = name[: -len(".json")]
        info[key] = None if data is None else json_object(data, f"{path}: its {name}")
    if info["meta"] is None or info["manifest"] is None:
        raise KiwiError(f"{path} is not a Go Kiwi archive (no meta.json and manifest.json)")
    kind = info["meta"].get("kind")
    if kind not in ("container", "image"):
        raise KiwiError(f"{path}: its meta.json has kind {kind!r}; the file is damaged")
    if kind == "container" and info["config"] is None:
        raise KiwiError(f"{path}: a container archive without config.json; the file is damaged")
    info["identity"] = image_identity(info["manifest"])
    return info


def image_identity(manifest: dict) -> str:
    """What makes two Go images the same (as the Go program decided): a digest of it."""
    keys = ("name", "format", "source", "prepared_by", "description", "created_at")
    text = json.dumps([str(manifest.get(k) or "").strip() for k in keys])
    return hashlib.sha256(text.encode()).hexdigest()


def squashfs_info(path, fmt) -> dict:
    """Child side: JSON files plus the bytes each part declares (for the space checks)."""
    with opened_archive(path, fmt) as top:
        info = parse_meta({n: read_small_file(top, n, path) for n in META_FILES}, path)
        info["sizes"] = {part: declared_bytes(top, part, path) for part in (ROOTFS, UPPER)}
        info["has_rootfs"] = True
    return info


def tar_info(path) -> dict:
    """The JSON files at the start of an older tar.gz archive (the Go program put them first)."""
    from .extract import iter_members, normalise_member_path, open_archive, open_tar_stream

    found, name = {}, ""
    with open_archive(path) as stream:
        tar = open_tar_stream(stream, path)
        for member in iter_members(tar, path):
            name = normalise_member_path(member.name)
            if name not in META_FILES:
                break
            if not member.isreg() or member.size > META_LIMIT:
                raise KiwiError(f"{path}: its {name} is not a small plain file; the file is damaged")
            found[name] = tar.extractfile(member).read()
    info = parse_meta(found, path)
    info["sizes"] = {ROOTFS: 0, UPPER: 0}  # checked while streaming (ENOSPC, storage size)
    # Older Go snapshots hold no rootfs: they rely on the image being there already.
    info["has_rootfs"] = name == ROOTFS or name.startswith(ROOTFS + "/")
    return info


def read_info(path, fmt) -> dict:
    from . import privatens

    if fmt == "squashfs":
        check_superblock(path)
        return privatens.run(squashfs_info, str(path), fmt)
    return tar_info(path)


def open_part(top: int, part: str, path) -> int | None:
    """fd of rootfs/ or state/upper/ ('': the top) inside the archive, reached without
    following symlinks."""
    fd = os.dup(top)
    try:
        for name in part.split("/") if part else ():
            try:
                sub = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError:
                raise UnsafeArchiveError(
                    f"{path}: its {part} is not a folder; refusing the archive, it is unsafe"
                ) from None
            os.close(fd)
            fd = sub
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def walk(top_fd: int, path):
    """(relpath, dir_fd, name, lstat) of every entry below top_fd, parents first; no symlink
    is ever followed. The folder itself comes first as ('', top_fd, '', stat)."""
    yield "", top_fd, "", os.fstat(top_fd)
    try:
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top_fd, follow_symlinks=False):
            base = "" if dirpath == "." else dirpath[2:]
            for name in sorted(dirnames + filenames):
                if name in (".", "..") or "/" in name or "\0" in name:
                    raise UnsafeArchiveError(
                        f"{path} has an entry named {name!r} in {base or '/'!r};"
                        f" refusing the archive, it is unsafe"
                    )
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                yield (f"{base}/{name}" if base else name), dir_fd, name, st
    except RecursionError:
        raise KiwiError(f"{path} is nested too deeply to read") from None


def declared_bytes(top: int, part: str, path) -> int:
    fd = open_part(top, part, path)
    if fd is None:
        return 0
    try:
        return sum(st.st_size for _, _, _, st in walk(fd, path) if stat.S_ISREG(st.st_mode))
    finally:
        os.close(fd)


# ------------------------------------------------------------------ extraction


def extract_part(path, fmt, part: str, dest: str, progress=None) -> None:
    """Child side (private mount namespace): copy one part of the archive into dest."""
    from .extract import Extractor

    if fmt == "tar.gz":
        return extract_tar_part(path, part, dest)
    with opened_archive(path, fmt) as top:
        fd = open_part(top, part, path)
        if fd is None:
            if part != UPPER:
                raise KiwiError(f"{path} has no rootfs/ folder; the file is damaged")
            os.makedirs(dest, exist_ok=True)  # a container without changes
            return None
        try:
            with Extractor(dest, allow_whiteouts=(part == UPPER)) as extractor:
                feed_tree(extractor, fd, part == UPPER, path)
                extractor.finish()
        finally:
            os.close(fd)


def feed_tree(extractor, top_fd: int, upper: bool, path) -> None:
    """Every entry of a mounted tree as an archive member, through the Extractor's rules."""
    first_name_of_inode = {}
    for rel, dir_fd, name, st in walk(top_fd, path):
        mode = st.st_mode
        member = tarfile.TarInfo(rel or ".")
        member.mode, member.uid, member.gid = stat.S_IMODE(mode), st.st_uid, st.st_gid
        member.mtime = st.st_mtime
        # listxattr has no dir_fd form; /proc/self/fd keeps the lookup inside dir_fd
        xattrs = read_xattrs(f"/proc/self/fd/{dir_fd}/{name}" if name else top_fd)
        member.pax_headers = {
            "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
        }
        if stat.S_ISDIR(mode):
            member.type = tarfile.DIRTYPE
            extractor.add(None, member, relpath=rel)
            if upper and rel and xattrs.get("trusted.overlay.opaque") == b"y":
                extractor.set_opaque(rel)
        elif stat.S_ISCHR(mode) and upper and st.st_rdev == os.makedev(WHITEOUT_DEV, WHITEOUT_DEV):
            extractor.add_whiteout(rel)
        elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and upper:
            raise UnsafeArchiveError(
                f"{path} has a device node {rel!r} in its changes; refusing the archive, it is unsafe"
            )
        elif st.st_nlink > 1 and not stat.S_ISDIR(mode) and st.st_ino in first_name_of_inode:
            member.type = tarfile.LNKTYPE
            member.linkname = first_name_of_inode[st.st_ino]
            extractor.add(None, member, relpath=rel, linkpath=member.linkname)
        else:
            if st.st_nlink > 1:
                first_name_of_inode[st.st_ino] = rel
            add_entry(extractor, member, rel, dir_fd, name, st)


def add_entry(extractor, member, rel, dir_fd, name, st) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        member.type, member.size = tarfile.REGTYPE, st.st_size
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb", buffering=0) as f:
            # The Extractor reads a member's data from tar.fileobj when it sits at
            # member.offset_data (0 here): hand it the file itself.
            extractor.add(types.SimpleNamespace(fileobj=f), member, relpath=rel)
        return
    if stat.S_ISLNK(mode):
        member.type = tarfile.SYMTYPE
        member.linkname = os.readlink(name, dir_fd=dir_fd)
    elif stat.S_ISCHR(mode):
        member.type = tarfile.CHRTYPE
    elif stat.S_ISBLK(mode):
        member.type = tarfile.BLKTYPE
    elif stat.S_ISFIFO(mode):
        member.type = tarfile.FIFOTYPE
    else:
        return  # sockets: nothing to restore
    extractor.add(None, member, relpath=rel)


def extract_tar_part(path, part: str, dest: str) -> None:
    """One part of an older tar.gz archive; Go wrote whiteouts as 0:0 char devices and
    opaque folders as a trusted.overlay.opaque xattr (tar --xattrs)."""
    from .extract import Extractor, iter_members, normalise_member_path, open_archive, open_tar_stream

    prefix = part + "/"
    with open_archive(path) as stream, Extractor(dest, allow_whiteouts=(part == UPPER)) as extractor:
        tar = open_tar_stream(stream, path)
        seen = False
        for member in iter_members(tar, path):
            name = normalise_member_path(member.name)
            if name == "state.img":
                raise KiwiError(
                    f"{path} holds its changes in an ext4 state.img, which Kiwi does not"
                    f" mount from an archive; restore it with the original Kiwi and"
                    f" snapshot it again"
                )
            if name != part and not name.startswith(prefix):
                continue
            seen = True
            add_tar_member(extractor, tar, member, name[len(prefix) :], part, path)
        if part == ROOTFS and not seen:
            raise KiwiError(f"{path} has no rootfs/ folder; the file is damaged")
        extractor.finish()


def add_tar_member(extractor, tar, member, rel, part, path) -> None:
    from .extract import normalise_member_path

    upper = part == UPPER
    if upper and member.ischr() and member.devmajor == 0 and member.devminor == 0:
        extractor.add_whiteout(rel)
        return
    if upper and (member.ischr() or member.isblk()):
        raise UnsafeArchiveError(
            f"{path} has a device node {member.name!r} in its changes; refusing the archive, it is unsafe"
        )
    linkpath = None
    if member.islnk():
        target = normalise_member_path(member.linkname)
        if not target.startswith(part + "/"):
            raise UnsafeArchiveError(
                f"hard link {member.name!r} points outside its part"
                f" ({member.linkname!r}); refusing the archive, it is unsafe"
            )
        linkpath = target[len(part) + 1 :]
    extractor.add(tar, member, relpath=rel, linkpath=linkpath)
    opaque = member.pax_headers.get("SCHILY.xattr.trusted.overlay.opaque")
    if upper and member.isdir() and rel and opaque == "y":
        extractor.set_opaque(rel)
