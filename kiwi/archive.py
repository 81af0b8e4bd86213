"""The portable `.kiwi` archive: a zstd-compressed tar of an image or a container.

Layout of the uncompressed tar stream, in this order:

    kiwi.json         the manifest (plain ustar member, at most 1 MiB)
    rootfs, rootfs/…  part "rootfs": the base image tree
    upper, upper/…    part "upper" (kind "container" only): the overlay upper
                      dir, whiteouts as OCI `.wh.<name>` files and opaque dirs
                      as a `.wh..wh..opq` file, so it is also an OCI layer diff
    two zero blocks   end of archive (plus tar record padding)

The sha256 of a part is the sha256 of that part's exact tar bytes: from its
first header to the end of its last member's padded data. The writer hashes
those bytes as it compresses them (each file is read once); the reader hashes
them as it extracts and refuses the archive when a sum or a size differs.

How the manifest can come first although its sums are known last: the
compressed file is a series of zstd frames,

    [manifest frame][skippable frame up to HEAD_RESERVE][rootfs frame][upper frame][end frame]

The body is compressed from offset HEAD_RESERVE on; at the end the manifest
frame is written at offset 0 and a zstd *skippable frame* fills the gap, which
every zstd decoder (zstd(1), tar -I zstd, python-zstandard) passes over. The
decompressed stream is therefore one ordinary tar: `tar -I zstd -xf` works.
Each part starts a new frame and the manifest records the frame's file offset,
so a reader that already has the base image seeks straight to `upper`.

Manifest: {"format_version": 1, "kind": "container"|"image", "settings": {...},
"image": {...image.json...}, "created": "...Z", "parts": {"rootfs": {"sha256",
"size" (tar bytes), "offset" (compressed file offset), "files", "data_bytes"},
"upper": {...}}}.  Stored mtimes are whole seconds; user and group names are
not stored (numeric ids only), so the same tree always gives the same sums.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import struct
import tarfile
import time
from pathlib import Path

from .errors import KiwiError, disk_full, os_error_message
from .fstree import (
    MAX_SPARSE_REGIONS,
    data_regions,
    more_open_files,
    open_subdir,
    read_xattrs,
    remove_tree,
    walk_stats,
)
from .store import fsync_dir, utc_now

FORMAT_VERSION = 1
KINDS = ("container", "image")
PART_ORDER = ("rootfs", "upper")
MANIFEST_NAME = "kiwi.json"
MANIFEST_LIMIT = 1 << 20
HEAD_RESERVE = 64 << 10
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
SPARSE_STORED_LIMIT = 8**11  # a tar header's size field: beyond it a pax "size" is needed
OVERLAY_XATTR_PREFIX = "trusted.overlay."
OVERLAY_OPAQUE = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
SKIPPABLE_MAGIC = 0x184D2A50
CHUNK = 1 << 20
ZSTD_LEVEL = 3
TAR_ENCODING = dict(encoding="utf-8", errors="surrogateescape")
END_OF_ARCHIVE = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
SETTINGS_NOT_EXPORTED = ("id", "ip", "ipv4")


def _zstd():
    import zstandard  # imported lazily: the CLI start-up time is measured

    return zstandard


# --------------------------------------------------------------------- write


def write_archive(out_path, kind, settings, image_meta, rootfs_dir, upper_dir=None, progress=None) -> dict:
    """Write a .kiwi file atomically (temp name, fsync, rename); returns the manifest."""
    if kind not in KINDS:
        raise ValueError(f"unknown archive kind {kind!r}")
    if (kind == "container") != (upper_dir is not None):
        raise ValueError("a container archive needs upper_dir; an image archive has none")
    out_path = Path(out_path)
    trees = {"rootfs": Path(rootfs_dir)}
    if upper_dir is not None:
        trees["upper"] = Path(upper_dir)
    counter = _Counter(progress, sum(_tree_data_bytes(t) for t in trees.values()))
    # Staging names carry our pid, so `kiwi cleanup` can tell a live writer from a crashed one.
    tmp = out_path.parent / f".kiwi-partial-{os.getpid()}-{secrets.token_hex(4)}-{out_path.name}"
    try:
        with open(tmp, "xb") as raw:
            os.fchmod(raw.fileno(), 0o600)  # it holds a whole filesystem, /etc/shadow too
            raw.seek(HEAD_RESERVE)
            parts = _write_body(raw, trees, counter)
            manifest = _new_manifest(kind, settings, image_meta, parts)
            raw.seek(0)
            raw.write(_head_bytes(manifest))
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, out_path)
        fsync_dir(out_path.parent)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError) and disk_full(e):
            raise KiwiError(os_error_message(e, "write", out_path)) from None
        raise
    return manifest


def _new_manifest(kind, settings, image_meta, parts) -> dict:
    settings = {k: v for k, v in (settings or {}).items() if k not in SETTINGS_NOT_EXPORTED}
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": utc_now(),
        "settings": settings,
        "image": dict(image_meta or {}),
        "parts": parts,
    }


def _head_bytes(manifest: dict) -> bytes:
    """Manifest frame plus a skippable frame that pads the head to HEAD_RESERVE."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
    info = tarfile.TarInfo(MANIFEST_NAME)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    member = info.tobuf(tarfile.USTAR_FORMAT, **TAR_ENCODING) + data + _padding(len(data))
    frame = _zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(member)
    gap = HEAD_RESERVE - len(frame) - 8
    if len(data) > MANIFEST_LIMIT or gap < 0:
        raise KiwiError("the container settings and image description are too large to archive")
    return frame + struct.pack("<II", SKIPPABLE_MAGIC, gap) + bytes(gap)


def _write_body(raw, trees: dict, counter) -> dict:
    compressor = _zstd().ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
    writer = compressor.stream_writer(raw, closefd=False, write_size=CHUNK)
    sink = _PartSink(writer, raw)
    parts = {}
    for name in PART_ORDER:
        if name in trees:
            sink.begin_part()
            _write_tree(sink, name, trees[name], counter, upper=(name == "upper"))
            parts[name] = sink.end_part()
    sink.begin_part()
    writer.write(END_OF_ARCHIVE)
    writer.close()  # ends the last frame; closefd=False leaves raw open
    return parts


class _PartSink:
    """Takes a part's tar bytes: hashes and counts them and feeds the compressor."""

    def __init__(self, writer, raw):
        self.writer, self.raw = writer, raw
        self.started = False

    def begin_part(self):
        # A new zstd frame per part, so a reader can seek to it.
        if self.started:
            self.writer.flush(_zstd().FLUSH_FRAME)
        self.started = True
        self.offset = self.raw.tell()
        self.hasher = hashlib.sha256()
        self.size = self.files = self.data_bytes = 0

    def write(self, data):
        self.hasher.update(data)
        self.writer.write(data)
        self.size += len(data)

    def end_part(self) -> dict:
        return {
            "sha256": self.hasher.hexdigest(),
            "size": self.size,
            "offset": self.offset,
            "files": self.files,
            "data_bytes": self.data_bytes,
        }


class _Counter:
    """Progress in bytes of file data (write) or of tar stream (read)."""

    def __init__(self, progress, total):
        self.progress, self.total, self.done = progress, total, 0

    def add(self, n):
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)


def _tree_data_bytes(root: Path) -> int:
    """File data to archive (hard links once): the progress total, from metadata only."""
    total, seen = 0, set()
    for _fd, _name, st in walk_stats(root):
        inode = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and inode not in seen:
            if st.st_nlink > 1:
                seen.add(inode)
            total += st.st_size
    return total


class _TreeWriter:
    """Writes one directory tree as tar members named `<part>/<relpath>`.

    Walks with directory fds and O_NOFOLLOW, so a tree that changes while it is
    read (a running container) can never redirect the walk outside itself.
    """

    KEEP_HOLES = True  # a file with holes as a sparse member (emit_sparse)

    def __init__(self, sink, part, counter, upper):
        self.sink, self.part, self.counter, self.upper = sink, part, counter, upper
        self.first_name_of_inode = {}

    def member_name(self, relpath):
        return f"{self.part}/{relpath}" if relpath else self.part

    def emit(self, info, pax=None, data_fd=None):
        info.uname = info.gname = ""
        info.pax_headers = pax or {}
        self.sink.write(_sparse_header(info) if "GNU.sparse.major" in info.pax_headers else _header(info))
        self.sink.files += 1
        if data_fd is not None and info.size:
            self.copy_data(data_fd, info.size)

    def copy_data(self, fd, size):
        left = size
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:  # the file shrank while we read it: keep the header's promise
                chunk = bytes(min(CHUNK, left))
            self.sink.write(chunk)
            left -= len(chunk)
            self.counter.add(len(chunk))
        self.sink.write(_padding(size))
        self.sink.data_bytes += size

    def emit_sparse(self, info, pax, fd, regions):
        """A file with holes as PAX sparse 1.0 (GNU tar's --sparse-version=1.0): its map of
        data regions, then those regions alone; tarfile, GNU tar and extract.py give the holes
        back. Written whole, a container's 16 TiB file of a few blocks is 16 TiB of zeros to
        read, compress, and write back at restore, past its storage limit."""
        if len(regions) > MAX_SPARSE_REGIONS:  # what extract.py reads back, bounding its memory
            raise KiwiError(
                f"cannot archive {info.name}: it has more than {MAX_SPARSE_REGIONS} separate runs "
                "of data between holes, more than a .kiwi file keeps; copy it without holes "
                "inside the container (cp --sparse=never) or remove it"
            )
        sparse_map = f"{len(regions)}\n".encode() + b"".join(f"{o}\n{n}\n".encode() for o, n in regions)
        sparse_map += _padding(len(sparse_map))
        stored = len(sparse_map) + sum(length for _, length in regions)
        real_name, real_size = info.name, info.size
        folder, _, leaf = real_name.rpartition("/")
        info.name = f"{folder}/GNUSparseFile.0/{leaf}" if folder else f"GNUSparseFile.0/{leaf}"
        info.size = stored
        # path first, so that a reader applies GNU.sparse.name after it.
        sparse_pax = {"path": info.name, **pax}
        sparse_pax |= {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": real_name,
            "GNU.sparse.realsize": str(real_size),
        }
        self.emit(info, sparse_pax)
        self.sink.write(sparse_map)
        for offset, length in regions:
            self.copy_region(fd, offset, length)
        self.sink.write(_padding(stored))
        self.sink.data_bytes += stored - len(sparse_map)
        self.counter.add(real_size - (stored - len(sparse_map)))  # the holes: progress counts st_size

    def copy_region(self, fd, offset, length):
        end = offset + length
        while offset < end:
            chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            if not chunk:  # the file shrank while we read it: keep the map's promise
                chunk = bytes(min(CHUNK, end - offset))
            self.sink.write(chunk)
            offset += len(chunk)
            self.counter.add(len(chunk))

    def write_root(self, root: Path):
        """Depth first with an explicit stack of (dir fd, relpath, names left): any depth."""
        stack = []
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            stack.append(self.enter_dir(fd, ""))
            while stack:
                fd, relpath, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                sub = self.write_child(fd, relpath, name)
                if sub is not None:
                    stack.append(sub)
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def enter_dir(self, fd, relpath):
        """Emit a folder's own entry; returns its stack frame (closes fd on failure)."""
        try:
            xattrs = _xattrs_of_fd(fd)
            # The upper root itself is never opaque; OCI has no marker for it either.
            opaque = xattrs.pop(OVERLAY_OPAQUE, None) == b"y" and self.upper and relpath
            st = os.fstat(fd)
            self.emit(_info(self.member_name(relpath), st, tarfile.DIRTYPE), _pax_for(xattrs))
            if opaque:
                marker = _info(self.member_name(_join(relpath, OPAQUE_MARKER)), st, tarfile.REGTYPE)
                marker.mode, marker.uid, marker.gid = 0o644, 0, 0
                self.emit(marker)
            return fd, relpath, iter(sorted(os.listdir(fd)))
        except BaseException:
            os.close(fd)
            raise

    def write_child(self, dir_fd, dir_relpath, name):
        """Emit one entry; a folder is opened and returned as the next stack frame."""
        relpath = _join(dir_relpath, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed while we walked
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = open_subdir(dir_fd, name)
            return None if fd is None else self.enter_dir(fd, relpath)
        if stat.S_ISREG(mode):
            self.write_file(dir_fd, name, relpath)
        elif stat.S_ISLNK(mode):
            info = _info(self.member_name(relpath), st, tarfile.SYMTYPE)
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            self.emit(info, _pax_for(_xattrs_of_link(dir_fd, name)))
        elif stat.S_ISCHR(mode) and st.st_rdev == 0 and self.upper:
            whiteout = _info(
                self.member_name(_join(dir_relpath, WHITEOUT_PREFIX + name)), st, tarfile.REGTYPE
            )
            whiteout.mode = 0o644
            self.emit(whiteout)
        elif stat.S_ISFIFO(mode):
            self.emit(
                _info(self.member_name(relpath), st, tarfile.FIFOTYPE),
                _pax_for(_xattrs_of_link(dir_fd, name)),
            )
        # Device nodes and sockets are left out: extraction never creates them.
        return None

    def write_file(self, dir_fd, name, relpath):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return  # swapped for something else while we walked
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.first_name_of_inode:
                info = _info(self.member_name(relpath), st, tarfile.LNKTYPE)
                info.linkname = self.first_name_of_inode[key]
                self.emit(info)
                return
            if st.st_nlink > 1:
                self.first_name_of_inode[key] = self.member_name(relpath)
            info = _info(self.member_name(relpath), st, tarfile.REGTYPE)
            info.size = st.st_size
            regions = data_regions(fd, st.st_size, MAX_SPARSE_REGIONS) if self.KEEP_HOLES else []
            if self.KEEP_HOLES and sum(length for _, length in regions) < st.st_size:
                self.emit_sparse(info, _pax_for(_xattrs_of_fd(fd)), fd, regions)
            else:
                self.emit(info, _pax_for(_xattrs_of_fd(fd)), data_fd=fd)
        finally:
            os.close(fd)


def _write_tree(sink, part, root: Path, counter, upper: bool):
    with more_open_files():
        _TreeWriter(sink, part, counter, upper).write_root(root)


def _info(name, st, kind) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _join(dir_relpath, name):
    return f"{dir_relpath}/{name}" if dir_relpath else name


def _header(info) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, **TAR_ENCODING)


def _sparse_header(info) -> bytes:
    """The headers of a PAX sparse 1.0 member that stores info.size bytes (map and data).
    From SPARSE_STORED_LIMIT on, the ustar size field holds it in base-256 (GNU's form, which
    tarfile and GNU tar read): a pax "size" record would give way to GNU.sparse.realsize in
    readers, which would then look for the next member at the wrong offset. Written whole
    instead (as before), 8 GiB of data and a 16 TiB hole were 16 TiB of zeros in a snapshot."""
    stored = info.size
    if stored < SPARSE_STORED_LIMIT:
        return _header(info)
    info.size = 0
    buf = bytearray(_header(info))
    info.size = stored
    ustar = len(buf) - tarfile.BLOCKSIZE  # the member's own header, after its pax header
    buf[ustar + 124 : ustar + 136] = tarfile.itn(stored, 12, tarfile.GNU_FORMAT)  # type: ignore[attr-defined]  # not in typeshed
    buf[ustar + 148 : ustar + 156] = b" " * 8
    buf[ustar + 148 : ustar + 155] = b"%06o\0" % sum(buf[ustar : ustar + tarfile.BLOCKSIZE])
    return bytes(buf)


def _padding(size) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def _pax_for(xattrs: dict) -> dict:
    return {XATTR_PAX_PREFIX + k: v.decode("utf-8", "surrogateescape") for k, v in sorted(xattrs.items())}


def _xattrs_of_fd(fd) -> dict:
    return _read_xattrs(fd)


def _xattrs_of_link(dir_fd, name) -> dict:
    return _read_xattrs(f"/proc/self/fd/{dir_fd}/{name}")


def _read_xattrs(target) -> dict:
    """Extended attributes to archive; overlayfs' own ones are internal to this host."""
    return {
        name: value
        for name, value in read_xattrs(target).items()
        if not name.startswith(OVERLAY_XATTR_PREFIX) or name == OVERLAY_OPAQUE
    }


# ---------------------------------------------------------------------- read


def read_manifest(path) -> dict:
    """Read and validate kiwi.json only; the rest of the file is not touched."""
    with open(path, "rb") as f:
        return _read_manifest_from(_open_stream(f, 0), path)


def extract_archive(path, rootfs_dest=None, upper_dest=None, progress=None) -> dict:
    """Extract the parts whose destination is given; returns the manifest.

    Sums are checked while streaming; on any problem a KiwiError is raised and
    destinations this call created are removed again (ones that existed
    before may hold part of the content: the caller removes those).
    A part without a destination is not extracted: with no rootfs_dest the
    reader seeks straight to the upper part.
    """
    manifest = read_manifest(path)
    wanted = _wanted_parts(manifest, rootfs_dest, upper_dest)
    dests = [Path(d) for d in (rootfs_dest, upper_dest) if d is not None]
    made_here = [d for d in dests if not os.path.lexists(d)]
    try:
        _extract_parts(path, manifest, wanted, rootfs_dest, upper_dest, progress)
    except BaseException:
        for dest in made_here:  # what existed before is the caller's to clean
            remove_tree(dest, ignore_errors=True)
        raise
    return manifest


def _extract_parts(path, manifest, wanted, rootfs_dest, upper_dest, progress):
    from .extract import open_archive

    if not wanted:
        return
    counter = _Counter(progress, sum(manifest["parts"][p]["size"] for p in wanted))
    if wanted[0] == "rootfs":
        stream = open_archive(path)  # decompresses ahead in a thread
        _guarded(path, _skip_manifest, stream, path)
    else:
        stream = _open_at(path, manifest["parts"]["upper"]["offset"])
    with stream:
        for part in wanted:
            dest = rootfs_dest if part == "rootfs" else upper_dest
            _guarded(path, _extract_part, stream, manifest["parts"][part], part, dest, counter, path)
        if wanted[-1] == [p for p in PART_ORDER if p in manifest["parts"]][-1]:
            _guarded(path, _check_end, stream)


def _wanted_parts(manifest, rootfs_dest, upper_dest) -> list:
    wanted = []
    if rootfs_dest is not None:
        wanted.append("rootfs")
    if upper_dest is not None and "upper" in manifest["parts"]:
        wanted.append("upper")
    return wanted


def _open_stream(f, offset):
    f.seek(offset)
    return _zstd().ZstdDecompressor().stream_reader(f, read_size=CHUNK, read_across_frames=True)


def _open_at(path, offset):
    """A decompressed stream from a part's own frame (closes the file with it)."""
    f = open(path, "rb")
    try:
        f.seek(offset)
        return (
            _zstd()
            .ZstdDecompressor()
            .stream_reader(f, read_size=CHUNK, read_across_frames=True, closefd=True)
        )
    except BaseException:
        f.close()
        raise


def _guarded(path, func, *args):
    """Turn a damaged stream into one clear line for the user."""
    try:
        return func(*args)
    except KiwiError:
        raise
    except (tarfile.TarError, EOFError) as e:
        raise KiwiError(f"{path} is damaged ({e}); it cannot be used") from None
    except Exception as e:
        if isinstance(e, _zstd().ZstdError):
            raise KiwiError(f"{path} is damaged (zstd: {e}); it cannot be used") from None
        raise


def _read_exact(stream, size) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_manifest_from(stream, path) -> dict:
    return _guarded(path, _parse_manifest, stream, path)


def _skip_manifest(stream, path):
    """Move a fresh stream past kiwi.json (read_manifest already checked it)."""
    _parse_manifest(stream, path)


def _parse_manifest(stream, path) -> dict:
    header = _read_exact(stream, tarfile.BLOCKSIZE)
    not_kiwi = KiwiError(f"{path} is not a Kiwi archive (no {MANIFEST_NAME} at its start)")
    if len(header) < tarfile.BLOCKSIZE:
        raise not_kiwi
    try:
        info = tarfile.TarInfo.frombuf(header, **TAR_ENCODING)
    except tarfile.HeaderError:
        raise not_kiwi from None
    if info.name != MANIFEST_NAME or not info.isreg():
        raise not_kiwi
    if info.size > MANIFEST_LIMIT:
        raise KiwiError(
            f"{path}: its {MANIFEST_NAME} is {info.size} bytes, over the "
            f"{MANIFEST_LIMIT}-byte limit; the file is damaged or hostile"
        )
    data = _read_exact(stream, info.size + len(_padding(info.size)))
    if len(data) < info.size:
        raise KiwiError(f"{path} is truncated; it cannot be used")
    try:
        manifest = json.loads(data[: info.size])
    except ValueError as e:
        raise KiwiError(f"{path}: its {MANIFEST_NAME} is damaged ({e})") from None
    _validate_manifest(manifest, path)
    return manifest


def _validate_manifest(m, path):
    def bad(what):
        return KiwiError(f"{path}: invalid {MANIFEST_NAME} ({what}); the file is damaged")

    if not isinstance(m, dict):
        raise bad("not an object")
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        raise KiwiError(
            f"{path} uses archive format version {version!r}; this Kiwi reads "
            f"version {FORMAT_VERSION} — use a Kiwi that matches the file"
        )
    if m.get("kind") not in KINDS:
        raise bad(f"kind {m.get('kind')!r}")
    for key in ("settings", "image", "parts"):
        if not isinstance(m.get(key), dict):
            raise bad(f"{key} missing")
    expected = ["rootfs", "upper"] if m["kind"] == "container" else ["rootfs"]
    if sorted(m["parts"]) != sorted(expected):
        raise bad(f"parts {sorted(m['parts'])} for kind {m['kind']}")
    for name, part in m["parts"].items():
        _validate_part(part, name, bad)


def _validate_part(part, name, bad):
    if not isinstance(part, dict):
        raise bad(f"part {name}")
    digest = part.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise bad(f"sha256 of {name}")
    for key in ("size", "offset"):
        value = part.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f"{key} of {name}")


class _PartReader:
    """A file object over exactly one part of the stream, hashing what passes."""

    def __init__(self, stream, size, counter):
        self.stream, self.left, self.counter = stream, size, counter
        self.hasher = hashlib.sha256()

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        if not n:
            return b""
        data = self.stream.read(n)
        self.left -= len(data)
        self.hasher.update(data)
        self.counter.add(len(data))
        return data

    def drain(self):
        while self.left and self.read(CHUNK):
            pass


def _extract_part(stream, part, name, dest, counter, path):
    from .extract import Extractor, iter_members, open_tar_stream

    reader = _PartReader(stream, part["size"], counter)
    with Extractor(dest, allow_whiteouts=(name == "upper")) as extractor:
        router = _MemberRouter(extractor, name)
        tar = open_tar_stream(reader, path)
        for member in iter_members(tar, path):
            router.add(tar, member)
        reader.drain()
        if reader.left:
            raise KiwiError(f"{path} is truncated in its {name} part; it cannot be used")
        if reader.hasher.hexdigest() != part["sha256"]:
            raise KiwiError(
                f"the {name} part of {path} does not match its sha256; the file is damaged or was altered"
            )
        extractor.finish()


class _MemberRouter:
    """Routes `<part>/…` members into the part's Extractor; OCI whiteouts become overlay ones."""

    def __init__(self, extractor, part):
        self.extractor, self.part = extractor, part

    def relpath(self, name):
        if name == self.part:
            return ""
        prefix = self.part + "/"
        if not name.startswith(prefix):
            raise KiwiError(f"the archive has a member {name!r} outside its {self.part} part")
        return name[len(prefix) :]

    def add(self, tar, member):
        relpath = self.relpath(member.name)
        base = relpath.rsplit("/", 1)[-1]
        if self.part == "upper" and base.startswith(WHITEOUT_PREFIX):
            self.add_whiteout(relpath, base, member.mtime)
        elif member.islnk():
            self.extractor.add(tar, member, relpath=relpath, linkpath=self.relpath(member.linkname))
        else:
            self.extractor.add(tar, member, relpath=relpath)

    def add_whiteout(self, relpath, base, mtime=None):
        parent = relpath[: -len(base)].rstrip("/")
        if base == OPAQUE_MARKER:
            self.extractor.set_opaque(parent)
            return
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise KiwiError(f"the archive has an invalid whiteout {relpath!r}")
        self.extractor.add_whiteout(_join(parent, target), mtime)


def _check_end(stream):
    """After the last part only the end-of-archive zeros may follow."""
    tail = _read_exact(stream, tarfile.RECORDSIZE + len(END_OF_ARCHIVE) + 1)
    if len(tail) < len(END_OF_ARCHIVE):
        raise KiwiError("the archive is truncated at its end; it cannot be used")
    if len(tail) > tarfile.RECORDSIZE + len(END_OF_ARCHIVE) or tail.strip(tarfile.NUL):
        raise KiwiError("the archive has unexpected data after its last part")


# -------------------------------------------------------------- image reuse


def image_content_hash(rootfs_dir_or_manifest) -> str:
    """The sha256 of an image's rootfs part, as written in kiwi.json.

    From a manifest it is read off; from a rootfs folder it is computed by
    serialising the tree exactly as write_archive would (reads every file).
    Images restored from an archive or pulled keep it in image.json as
    `rootfs_sha256`, so the expensive form is rarely needed.
    """
    if isinstance(rootfs_dir_or_manifest, dict):
        return rootfs_dir_or_manifest["parts"]["rootfs"]["sha256"]
    sink = _HashOnlySink()
    _write_tree(sink, "rootfs", Path(rootfs_dir_or_manifest), _Counter(None, 0), upper=False)
    return sink.hasher.hexdigest()


class _HashOnlySink:
    def __init__(self):
        self.hasher = hashlib.sha256()
        self.files = self.data_bytes = 0

    def write(self, data):
        self.hasher.update(data)


# ------------------------------------------------------------------ helpers


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
