"""Kiwi's own tar extractor: streaming, safe, independent of the host's tar.

Decompression is chosen by magic bytes and done with Python's own modules
(lzma, gzip, bz2) or the zstandard package, never with a program from the
host or from the rootfs being imported.

Safety: every path is walked one component at a time with
openat(O_NOFOLLOW | O_DIRECTORY) from the destination's own fd, so no symlink,
not even one the archive created a moment earlier, can redirect a write.
Absolute names, '..' and anything that would go through a symlink are
refused with UnsafeArchiveError naming the member.

Use:
    stats = extract_archive("rootfs.tar.xz", dest, progress=cb)

or, to route the members of one tar into several trees (the .kiwi reader):
    with open_archive(path) as stream, Extractor(dest_a) as a, Extractor(dest_b) as b:
        tar = open_tar_stream(stream, path)
        for member in iter_members(tar, path):
            a.add(tar, member, relpath=...)      # or b.add(...), b.add_whiteout(...)
        a.finish(); b.finish()
"""

from __future__ import annotations

import base64
import bz2
import collections
import errno
import gzip
import hashlib
import io
import lzma
import os
import queue
import stat
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import KiwiError
from .fstree import MAX_SPARSE_REGIONS
from .proc import write_all

DATA_CHUNK = 1 << 20  # decompressed bytes handed over per step, and file copy size
TAR_BUFSIZE = 32 << 10  # tarfile's stream buffer; small reads copy its rest: keep it modest
QUEUE_DEPTH = 16  # decompressed chunks buffered ahead of the extractor
DIR_FD_CACHE = 256  # open directory fds kept (well below the usual 1024 limit)
PROGRESS_INTERVAL = 0.1  # seconds between progress calls
SPACE_RECHECK = 256 << 20  # data bytes written between two statvfs calls
# What one member's metadata may make us hold in memory, which tarfile reads whole before
# anything can look at it: a few KiB of xz expand to gigabytes of GNU long name, pax header
# or sparse map (measured: a 46 KB archive, a 300 MB name, 1.2 GB of kiwi's memory).
MAX_LONG_NAME = 64 << 10  # GNU long names and link targets; Linux takes 4096 bytes at most
MAX_PAX_HEADER = 4 << 20  # pax records: paths, xattrs (64 KiB each at most), sparse 0.x maps
MAX_HEADER_CHAIN = 16  # headers read for one member (StrictTarInfo.fromtarfile)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FORMATS = "tar, tar.gz, tar.xz, tar.zst or tar.bz2"
# Only Kiwi itself may mark overlay metadata (whiteouts, opaque dirs) in a tree
# that becomes an overlay layer; from an archive they could redirect lookups.
_RESERVED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


class UnsafeArchiveError(KiwiError):
    """An archive member would land outside the destination."""


class NoSpaceError(KiwiError):
    """The extracted data does not fit the destination's filesystem."""


@dataclass
class ExtractStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    fifos: int = 0
    skipped: int = 0  # device nodes (and hard links to them): never created
    skipped_xattrs: int = 0  # overlay xattrs an archive may not set
    bytes: int = 0  # regular file data written; hard links count once
    archive_size: int = 0  # set by extract_archive
    sha256: str | None = None  # of the whole archive file; set by extract_archive

    @property
    def entries(self) -> int:
        return self.files + self.dirs + self.symlinks + self.hardlinks + self.whiteouts + self.fifos


# ---------------------------------------------------------------- decompression


def open_archive(path) -> ArchiveStream:
    """The decompressed tar stream of `path`; format found by magic bytes."""
    path = Path(path)
    try:
        raw = open(path, "rb", buffering=0)
    except OSError as e:
        raise KiwiError(f"cannot open {path}: {e.strerror}") from None
    try:
        fmt = _detect_format(raw.read(tarfile.BLOCKSIZE), path)
        raw.seek(0)
        return ArchiveStream(raw, fmt, path)
    except BaseException:
        raw.close()
        raise


def _detect_format(head: bytes, path: Path) -> str:
    for magic, fmt in (
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x1f\x8b", "gzip"),
        (b"BZh", "bz2"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
    ):
        if head.startswith(magic):
            return fmt
    if head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"  # starts with a zstd skippable frame (e.g. a seekable-format index)
    if _looks_like_tar(head):
        return "tar"
    raise KiwiError(f"{path} is not a {_FORMATS} archive")


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < tarfile.BLOCKSIZE:
        return False
    if head[257:262] == b"ustar":
        return True
    try:  # old v7 archives have no magic, only a valid header checksum
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _open_decoder(fmt: str, raw):
    if fmt == "xz":
        return lzma.LZMAFile(raw, "rb")
    if fmt == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "bz2":
        return bz2.BZ2File(raw, "rb")
    if fmt == "zstd":
        return _ZstdReader(raw)
    return raw


class _ZstdReader:
    """zstd stream_reader (bounded output, all frames) that also notices a cut file.

    The zstandard stream reader ends quietly when its input stops mid-frame,
    so the frame and block headers are followed alongside (contents skipped).
    """

    def __init__(self, raw):
        import zstandard  # only archives that need it pay for the import

        self._frames = _ZstdFrameWalker()
        # Large max window: archives made with `zstd --long` must open too.
        self._reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
            _WatchedInput(raw, self._frames.feed),  # type: ignore[arg-type]  # a duck-typed reader
            read_size=DATA_CHUNK,
            read_across_frames=True,
        )

    def read(self, size: int) -> bytes:
        data = self._reader.read(size)
        if not data:
            self._frames.check_complete()
        return data

    def close(self):
        self._reader.close()


class _WatchedInput:
    """Passes every byte read to `watch` as well."""

    def __init__(self, raw, watch):
        self.raw, self.watch = raw, watch

    def read(self, size=-1):
        data = self.raw.read(size)
        self.watch(data)
        return data

    def readable(self):
        return True


class _ZstdFrameWalker:
    """Follows zstd frame structure (RFC 8878) without decoding, to see where it ends."""

    def __init__(self):
        self._head = b""
        self._need = 4  # bytes of the next header field
        self._skip = 0  # content bytes to pass over
        self._step = self._magic  # what to do with the next header field
        self._checksum = 0
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._need:
                field, self._head = self._head, b""
                self._step(field)

    def check_complete(self) -> None:
        if self._step != self._magic or self._head or self._skip or not self.frames:
            raise EOFError("zstd data ends in the middle of a frame")

    def _expect(self, need: int, step, skip: int = 0) -> None:
        self._need, self._step, self._skip = need, step, skip

    def _magic(self, field: bytes) -> None:
        magic = int.from_bytes(field, "little")
        if magic == 0xFD2FB528:
            self._expect(1, self._frame_header)
        elif magic & 0xFFFFFFF0 == 0x184D2A50:
            self._expect(4, self._skippable_size)
        else:
            raise ValueError("not zstd data")

    def _skippable_size(self, field: bytes) -> None:
        self.frames += 1
        self._expect(4, self._magic, skip=int.from_bytes(field, "little"))

    def _frame_header(self, field: bytes) -> None:
        descriptor = field[0]
        single_segment = descriptor >> 5 & 1
        self._checksum = 4 if descriptor >> 2 & 1 else 0
        window = 0 if single_segment else 1
        dict_id = (0, 1, 2, 4)[descriptor & 3]
        content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
        self._expect(3, self._block, skip=window + dict_id + content_size)

    def _block(self, field: bytes) -> None:
        header = int.from_bytes(field, "little")
        last, kind, size = header & 1, header >> 1 & 3, header >> 3
        if kind == 3:
            raise ValueError("reserved zstd block type")
        content = 1 if kind == 1 else size  # an RLE block stores its byte once
        if last:
            self.frames += 1
            self._expect(4, self._magic, skip=content + self._checksum)
        else:
            self._expect(3, self._block, skip=content)


class _HashingReader:
    """Counts and hashes the compressed bytes as the decoder reads them."""

    def __init__(self, raw):
        self.raw = raw
        self.count = 0
        self.sha256 = hashlib.sha256()

    def read(self, size=-1):
        data = self.raw.read(size)
        self.count += len(data)
        self.sha256.update(data)
        return data

    def readable(self):
        return True

    def close(self):
        self.raw.close()


class ArchiveStream(io.RawIOBase):
    """Decompressed bytes of an archive, decoded ahead in a background thread.

    lzma, zlib, bz2 and zstd release the GIL, so decoding runs on another core
    while the main thread writes files, as `tar -xJf` does with its xz child.
    """

    def __init__(self, raw, fmt: str, path: Path):
        super().__init__()
        self.path = path
        self.format = fmt
        self.size = os.fstat(raw.fileno()).st_size
        self._raw = _HashingReader(raw)
        self._decoder = _open_decoder(fmt, self._raw)
        self._chunks: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._stopping = threading.Event()
        self._current = b""
        self._offset = 0
        self._end: bytes | BaseException | None = (
            None  # b"" at a clean end, or the exception that ended decoding
        )
        self._thread = threading.Thread(target=self._pump, name="kiwi-decompress", daemon=True)
        self._thread.start()

    @property
    def compressed_bytes_read(self) -> int:
        return self._raw.count

    def readable(self):
        return True

    def read(self, size=-1):
        if size is None or size < 0:
            return self.readall()
        if self._offset >= len(self._current) and not self._next_chunk():
            return b""
        start, current = self._offset, self._current
        end = min(start + size, len(current))
        self._offset = end
        return current if start == 0 and end == len(current) else current[start:end]

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain_sha256(self) -> str:
        """Stop decoding, hash the rest of the file, return the sha256 of all of it."""
        self._stop_pump()
        while True:
            if not self._raw.read(DATA_CHUNK):
                return self._raw.sha256.hexdigest()

    def close(self):
        if not self.closed:
            self._stop_pump()
            self._decoder.close()
            self._raw.close()
        super().close()

    # -- background side
    def _pump(self):
        try:
            while not self._stopping.is_set():
                chunk = self._decoder.read(DATA_CHUNK)
                self._hand_over(chunk)
                if not chunk:
                    return
        except Exception as e:  # noqa: BLE001 - any decoder failure means a damaged archive
            self._hand_over(
                KiwiError(
                    f"cannot read {self.path}: damaged or truncated {self.format} data ({e});"
                    f" get the archive again"
                )
            )

    def _hand_over(self, item):
        while not self._stopping.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _stop_pump(self):
        self._stopping.set()
        self._thread.join()

    # -- consumer side
    def _next_chunk(self) -> bool:
        if self._end is None:
            item = self._chunks.get()
            if isinstance(item, BaseException) or not item:
                self._end = item
            else:
                self._current, self._offset = item, 0
                return True
        if isinstance(self._end, BaseException):
            raise self._end
        return False


# ---------------------------------------------------------------- tar reading


class Damaged(tarfile.ReadError):
    """A tar stream that is one, damaged or hostile: StrictTarInfo's refusals."""


class StrictTarInfo(tarfile.TarInfo):
    """tarfile ends a stream silently at a bad header; make damage an error. Metadata is
    bounded before tarfile reads it (MAX_LONG_NAME, MAX_PAX_HEADER, MAX_SPARSE_REGIONS), and
    a sparse map that is not numbers is damage, not a ValueError."""

    @classmethod
    def fromtarfile(cls, tar):
        # tarfile reads the header after a pax or GNU long name header by calling this again:
        # hundreds of them in a row for one member ended in a RecursionError (told as "files
        # nested too deeply"). A real member has a few (global pax, pax, long name, long link).
        depth = getattr(tar, "_kiwi_header_depth", 0)
        if depth >= MAX_HEADER_CHAIN:
            raise Damaged(
                f"extended headers follow each other by the dozen at byte {tar.offset}, for one member"
            )
        tar._kiwi_header_depth = depth + 1
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:  # type: ignore[attr-defined]
            if tar.offset == 0:
                raise
            raise Damaged(f"bad tar header at byte {tar.offset} ({e})") from None
        except ValueError as e:  # tarfile's own sparse 0.1 and 1.0 parsers: a map of non-numbers
            raise Damaged(f"bad sparse map at byte {tar.offset} ({e})") from None
        finally:
            tar._kiwi_header_depth = depth

    def _proc_gnulong(self, tar):
        _refuse_oversized("a GNU long name", self.size, MAX_LONG_NAME, tar)
        return super()._proc_gnulong(tar)  # type: ignore[misc]

    def _proc_pax(self, tar):
        _refuse_oversized("a pax header", self.size, MAX_PAX_HEADER, tar)
        return super()._proc_pax(tar)  # type: ignore[misc]

    def _proc_sparse(self, tar):
        """Old GNU sparse: 21 regions per extension block, for as many blocks as each says
        another follows. tarfile's own loop, with MAX_SPARSE_REGIONS counted in the slots
        read, empty ones too: extension blocks that map nothing and say another follows
        were read for as long as the stream went on (75 KB of xz, 1 M blocks: 13 s of CPU)."""
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        slots = 0
        while isextended:
            if slots > MAX_SPARSE_REGIONS:
                raise Damaged(f"an old GNU sparse map of more than {MAX_SPARSE_REGIONS} regions")
            slots += 21
            buf = tar.fileobj.read(tarfile.BLOCKSIZE)
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = tarfile.nti(buf[pos : pos + 12])  # type: ignore[attr-defined]
                    numbytes = tarfile.nti(buf[pos + 12 : pos + 24])  # type: ignore[attr-defined]
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = len(buf) > 504 and bool(buf[504])  # a truncated stream ends the map
        self.sparse = structs
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_gnusparse_10(self, next, pax_headers, tar):
        """PAX sparse 1.0: the region count first, then two numbers a line; checked before
        tarfile reads them all."""
        peek = tar.fileobj.read(tarfile.BLOCKSIZE)
        count = peek.split(b"\n", 1)[0]
        if not count.strip().isdigit():
            raise Damaged(f"the sparse map of {next.name!r} is damaged")
        if int(count) > MAX_SPARSE_REGIONS:
            raise Damaged(
                f"the sparse map of {next.name!r} has {int(count)} regions; Kiwi reads at most "
                f"{MAX_SPARSE_REGIONS}"
            )
        return super()._proc_gnusparse_10(next, pax_headers, _Replay(tar, peek))  # type: ignore[misc]


def _refuse_oversized(what: str, size: int, limit: int, tar) -> None:
    if size > limit:
        raise Damaged(f"{what} of {size} bytes at byte {tar.offset}; Kiwi reads at most {limit}")


class _Replay:
    """A tarfile whose fileobj gives `first` back before reading on (a peeked block)."""

    def __init__(self, tar, first: bytes):
        self.fileobj = self
        self._tar, self._first = tar, first

    def read(self, size: int) -> bytes:
        if self._first:
            data, self._first = self._first[:size], self._first[size:]
            return data
        return self._tar.fileobj.read(size)

    def tell(self) -> int:
        return self._tar.fileobj.tell() - len(self._first)


def open_tar_stream(stream, path) -> tarfile.TarFile:
    """tarfile in stream mode ('r|') over an already decompressed stream."""
    try:
        return tarfile.open(
            fileobj=stream,
            mode="r|",
            bufsize=TAR_BUFSIZE,
            encoding="utf-8",
            errors="surrogateescape",
            tarinfo=StrictTarInfo,
        )
    except Damaged as e:  # its first member: a tar stream, damaged
        raise KiwiError(f"cannot read {path}: {e}; the archive is damaged, get it again") from None
    except tarfile.TarError as e:
        raise KiwiError(f"{path} is not a {_FORMATS} archive ({e})") from None


def iter_members(tar: tarfile.TarFile, path):
    """Members in archive order; a damaged archive is a KiwiError."""
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as e:
            raise KiwiError(f"cannot read {path}: {e}; the archive is damaged, get it again") from None
        if member is None:
            return
        # Stream mode never looks back, so don't let tarfile keep every member.
        tar.members.clear()  # type: ignore[attr-defined]  # not in typeshed
        yield member


def extract_archive(path, dest, progress=None) -> ExtractStats:
    """Extract the whole archive at `path` into the directory `dest`.

    progress(done, total): compressed bytes read so far and the file size,
    called at most every PROGRESS_INTERVAL seconds and once at the end.
    """
    with open_archive(path) as stream, Extractor(dest) as extractor:
        report = _Throttled(progress, stream.size)
        tar = open_tar_stream(stream, path)
        for member in iter_members(tar, path):
            extractor.add(tar, member)
            report(stream.compressed_bytes_read)
        stats = extractor.finish()
        stats.sha256 = stream.drain_sha256()
        stats.archive_size = stream.size
        report(stream.size, final=True)
    return stats


class _Throttled:
    def __init__(self, progress, total):
        self.progress, self.total, self.last = progress, total, 0.0

    def __call__(self, done, final=False):
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.progress(done, self.total)


# ---------------------------------------------------------------- paths


def normalise_member_path(name: str) -> str:
    """'./usr//bin/' -> 'usr/bin'; '' is the destination itself.

    Refuses absolute names and '..' instead of rewriting them.
    """
    if name.startswith("/"):
        raise UnsafeArchiveError(
            f"archive member {name!r} has an absolute path; refusing the archive, it is unsafe"
        )
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"archive member {name!r} climbs out with '..'; refusing the archive, it is unsafe"
        )
    return "/".join(parts)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """Exact nanoseconds: a pax mtime as a float would lose the last digits."""
    text = member.pax_headers.get("mtime")
    if text:
        negative = text.startswith("-")
        seconds, _, fraction = text.lstrip("-").partition(".")
        if seconds.isdigit() and (not fraction or fraction.isdigit()):
            ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
            return -ns if negative else ns
    return int(member.mtime * 1_000_000_000)


def _member_xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """Extended attributes from pax headers: GNU tar's and libarchive's spelling."""
    found = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decoded the bytes with surrogateescape; this restores them exactly
            found.append((key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")))
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            found.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
    return found


def _data_regions(tar, member) -> list[tuple[int, int]]:
    """(offset, length) of the data a regular member really stores; the rest are holes.

    A sparse member (GNU or PAX, as tarfile parses them) stores only its map's
    regions: a 180-byte archive can declare terabytes, so holes are never written.
    """
    if member.sparse is None:
        return [(0, member.size)]
    regions, end = [], 0
    for offset, length in member.sparse:
        if not length:
            continue  # unused map slots
        if offset < end or length < 0 or offset + length > member.size:
            raise KiwiError(
                f"archive member {member.name!r} has a damaged sparse map; the archive is damaged"
            )
        regions.append((offset, length))
        end = offset + length
    if sum(length for _, length in regions) > tar.offset - member.offset_data:
        raise KiwiError(
            f"archive member {member.name!r} maps more data than it stores; the archive is damaged"
        )
    return regions


class _FreeSpace:
    """Refuses a file whose data cannot fit the destination's filesystem, before writing it.

    Real bytes are counted as they are claimed; statvfs is asked again only after
    SPACE_RECHECK bytes, or when a file would not fit the last answer.
    """

    def __init__(self, fd: int, dest: Path):
        self.fd, self.dest = fd, dest
        self._refresh()

    def _refresh(self) -> None:
        st = os.fstatvfs(self.fd)
        self.block, self.free, self.claimed = st.f_frsize or 4096, st.f_bavail * st.f_frsize, 0

    def claim(self, regions, member_name: str) -> None:
        """regions: (offset, length) of data; each block it touches is allocated."""
        block = self.block
        need = sum((-(-(offset + length) // block) - offset // block) * block for offset, length in regions)
        if need > self.free or self.claimed > SPACE_RECHECK:
            self._refresh()
            if need > self.free:
                from .sizes import format_size

                raise NoSpaceError(
                    f"archive member {member_name!r} needs {format_size(need)} but the filesystem"
                    f" of {self.dest} has only {format_size(self.free)} free; free some space"
                    f" and try again"
                )
        self.free -= need
        self.claimed += need


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: list


# ---------------------------------------------------------------- extraction


class Extractor:
    """Creates archive members, one at a time, under `dest`.

    add(tar, member, relpath=None, linkpath=None)
        Check and create ONE member. relpath: where it goes, relative to dest
        (default: the member's own name, normalised). linkpath: for a hard
        link, its target relative to dest (default: member.linkname) - pass it
        when relpath strips a prefix, so both use the same root.
        The member's data must be read before tar moves to the next member.
    add_whiteout(relpath) / set_opaque(relpath)
        Overlay whiteout (0/0 char device) / opaque directory; only with
        allow_whiteouts=True.
    finish() -> ExtractStats
        Apply directory owners, modes and times (deferred so that read-only
        directories never block the members inside them) and close.

    FIFOs are created (harmless: a name two processes meet at). Device nodes
    are never created; they count as stats.skipped.
    A later member with the same name replaces an earlier one, as with tar.
    """

    def __init__(self, dest, allow_whiteouts: bool = False):
        self.dest = Path(dest)
        self.allow_whiteouts = allow_whiteouts
        self.stats = ExtractStats()
        self._as_root = os.geteuid() == 0
        self.dest.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._space = _FreeSpace(self._root_fd, self.dest)
        self._dir_fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._deferred: dict[str, _DirMeta] = {}
        self._skipped: set[str] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        while self._dir_fds:
            os.close(self._dir_fds.popitem()[1])
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- public API
    def add(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        relpath: str | None = None,
        linkpath: str | None = None,
    ) -> None:
        rel = normalise_member_path(member.name if relpath is None else relpath)
        try:
            if member.isdir():
                self._add_dir(rel, member)
            elif not rel:
                raise KiwiError(
                    f"archive member {member.name!r} names the top folder"
                    f" but is not a directory; the archive is damaged"
                )
            elif member.isreg():
                self._add_file(tar, rel, member)
            elif member.issym():
                self._add_symlink(rel, member)
            elif member.islnk():
                self._add_hardlink(rel, member, linkpath)
            elif member.isfifo():
                self._add_fifo(rel, member)
            else:
                self._locate(rel, member.name)  # its folder still exists, as with tar
                self.stats.skipped += 1
                self._skipped.add(rel)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    f"no space left in {self.dest} while extracting"
                    f" {member.name!r}; free some space and try again"
                ) from None
            raise KiwiError(f"cannot extract {member.name!r} into {self.dest}: {e.strerror}") from None

    def add_whiteout(self, relpath: str, mtime: float | None = None) -> None:
        rel = self._whiteout_path(relpath)
        parent, leaf = self._locate(rel, relpath)
        try:
            self._create(
                parent,
                leaf,
                rel,
                relpath,
                lambda: os.mknod(leaf, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent),
            )
            if mtime is not None:  # the archive's time, as for every other member
                ns = int(mtime * 1_000_000_000)
                os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            raise KiwiError(f"cannot create whiteout {relpath!r} in {self.dest}: {e.strerror}") from None
        self.stats.whiteouts += 1

    def set_opaque(self, relpath: str) -> None:
        rel = self._whiteout_path(relpath)
        fd = self._dir_fd(rel, relpath, create=True)
        try:
            os.setxattr(fd, "trusted.overlay.opaque", b"y")
        except OSError as e:
            raise KiwiError(f"cannot mark {relpath!r} opaque in {self.dest}: {e.strerror}") from None

    def remove(self, relpath: str) -> None:
        """Delete what relpath names, a folder with all it holds (an OCI layer's whiteout).

        Reached like every member, never through a symlink; nothing there is not an error."""
        from .fstree import remove_tree

        rel = normalise_member_path(relpath)
        if not rel:
            raise UnsafeArchiveError(f"a whiteout {relpath!r} names the top folder; refusing the archive")
        head, _, leaf = rel.rpartition("/")
        try:
            parent = self._dir_fd(head, relpath, create=False)
        except UnsafeArchiveError:
            raise
        except KiwiError:
            return  # its folder is not there (or not a folder): nothing to delete
        self._forget_dir(rel)
        self._skipped.discard(rel)
        try:
            remove_tree(f"/proc/self/fd/{parent}/{leaf}")
        except OSError as e:
            raise KiwiError(f"cannot delete {relpath!r} in {self.dest}: {e.strerror}") from None

    def clear_dir(self, relpath: str, keep) -> None:
        """Delete what the folder holds except the paths in keep (an OCI opaque directory)."""
        rel = normalise_member_path(relpath)
        for name in os.listdir(self._dir_fd(rel, relpath, create=True)):
            child = f"{rel}/{name}" if rel else name
            if child not in keep:
                self.remove(child)

    def finish(self) -> ExtractStats:
        # Deepest first and the top folder last, after everything inside is written.
        for rel in sorted(self._deferred, key=lambda p: p.count("/") if p else -1, reverse=True):
            try:
                self._apply_dir_meta(self._dir_fd(rel, rel, create=False), rel, self._deferred[rel])
            except OSError as e:
                raise KiwiError(
                    f"cannot set owner, mode, attributes or time of {rel!r} in {self.dest}: {e.strerror}"
                ) from None
        self._deferred.clear()
        self.close()
        return self.stats

    # -- member kinds
    def _add_dir(self, rel: str, member) -> None:
        if rel:
            parent, leaf = self._locate(rel, member.name)
            try:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
                    self._clear_slot(parent, leaf, rel, member.name)
                    os.mkdir(leaf, 0o700, dir_fd=parent)
            self.stats.dirs += 1  # the top folder itself is not an entry of the tree
        self._deferred[rel] = _DirMeta(
            member.mode & 0o7777, member.uid, member.gid, _mtime_ns(member), _member_xattrs(member)
        )

    def _add_file(self, tar, rel: str, member) -> None:
        regions = _data_regions(tar, member)
        self._space.claim(regions, member.name)
        parent, leaf = self._locate(rel, member.name)
        fd = self._create(
            parent, leaf, rel, member.name, lambda: os.open(leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        )
        try:
            if member.size:
                self._copy_data(tar, member, fd, regions)
            if member.sparse is not None:
                os.ftruncate(fd, member.size)  # the holes up to the end stay holes
            if self._as_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid
            self._set_xattrs(fd, member)  # after chown, which clears file caps
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += member.size

    def _add_symlink(self, rel: str, member) -> None:
        parent, leaf = self._locate(rel, member.name)
        self._create(parent, leaf, rel, member.name, lambda: os.symlink(member.linkname, leaf, dir_fd=parent))
        if self._as_root:
            os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        # setxattr has no dir_fd form; /proc/self/fd/N is our own directory, never the archive's
        self._set_xattrs(f"/proc/self/fd/{parent}/{leaf}", member, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(leaf, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        self.stats.symlinks += 1

    def _add_fifo(self, rel: str, member) -> None:
        parent, leaf = self._locate(rel, member.name)
        self._create(parent, leaf, rel, member.name, lambda: os.mkfifo(leaf, 0o600, dir_fd=parent))
        if self._as_root:
            os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(leaf, member.mode & 0o7777, dir_fd=parent)  # after chown, which clears setuid
        self._set_xattrs(f"/proc/self/fd/{parent}/{leaf}", member, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(leaf, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        self.stats.fifos += 1

    def _add_hardlink(self, rel: str, member, linkpath: str | None) -> None:
        target = self._hardlink_target(member, linkpath)
        if target in self._skipped:
            self.stats.skipped += 1
            self._skipped.add(rel)
            return
        if target == rel:
            return
        # dup: finding the link's own folder may push the target's fd out of the cache
        target_parent = os.dup(self._locate(target, member.name, create=False)[0])
        target_leaf = target.rpartition("/")[2]
        try:
            parent, leaf = self._locate(rel, member.name)
            self._create(
                parent,
                leaf,
                rel,
                member.name,
                lambda: os.link(
                    target_leaf, leaf, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False
                ),
            )
        except FileNotFoundError:
            raise KiwiError(
                f"hard link {member.name!r} points to {member.linkname!r},"
                f" which the archive does not contain before it"
            ) from None
        finally:
            os.close(target_parent)
        self.stats.hardlinks += 1

    def _hardlink_target(self, member, linkpath: str | None) -> str:
        try:
            target = normalise_member_path(member.linkname if linkpath is None else linkpath)
        except UnsafeArchiveError:
            raise UnsafeArchiveError(
                f"hard link {member.name!r} points outside the target ({member.linkname!r});"
                f" refusing the archive, it is unsafe"
            ) from None
        if not target:
            raise KiwiError(f"hard link {member.name!r} points to the top folder; the archive is damaged")
        return target

    def _whiteout_path(self, relpath: str) -> str:
        if not self.allow_whiteouts:
            raise UnsafeArchiveError(
                f"archive member {relpath!r} is an overlay whiteout, which is not allowed here;"
                f" refusing the archive"
            )
        rel = normalise_member_path(relpath)
        if not rel:
            raise UnsafeArchiveError("an overlay whiteout names the top folder; refusing the archive")
        return rel

    # -- helpers
    def _copy_data(self, tar, member, fd: int, regions) -> None:
        source = self._data_source(tar, member)
        for offset, length in regions:
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)  # over a hole: no blocks written
            self._copy_region(source, member, fd, length)

    def _copy_region(self, source, member, fd: int, remaining: int) -> None:
        while remaining:
            try:
                data = source.read(min(remaining, DATA_CHUNK))
            except tarfile.ReadError:
                data = b""
            if not data:
                raise KiwiError(
                    f"the archive ends in the middle of {member.name!r}; it is truncated, get it again"
                )
            write_all(fd, data)
            remaining -= len(data)

    @staticmethod
    def _data_source(tar, member):
        """Where the member's stored bytes come from (a sparse file's data regions back to back).

        In stream mode the data follows the header, so read the stream itself and
        spare extractfile()'s two extra layers of buffering (one copy less per byte)
        and its filling of a sparse file's holes with zeros.
        """
        if tar.fileobj.tell() != member.offset_data:
            tar.fileobj.seek(member.offset_data)
        return tar.fileobj

    def _set_xattrs(self, target, member, follow_symlinks: bool = True) -> None:
        for name, value in _member_xattrs(member):
            if name.startswith(_RESERVED_XATTR_PREFIXES):
                self.stats.skipped_xattrs += 1
                continue
            if not self._as_root and not name.startswith("user."):
                continue  # like tar as a normal user: the other namespaces need root
            try:
                os.setxattr(target, name, value, follow_symlinks=follow_symlinks)
            except OSError as e:
                raise KiwiError(
                    f"cannot set extended attribute {name!r} of {member.name!r} in {self.dest}: {e.strerror}"
                ) from None

    def _apply_dir_meta(self, fd: int, rel: str, meta: _DirMeta) -> None:
        if self._as_root:
            os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, meta.mode)
        for name, value in meta.xattrs:
            if name.startswith(_RESERVED_XATTR_PREFIXES):
                self.stats.skipped_xattrs += 1
            elif self._as_root or name.startswith("user."):
                os.setxattr(fd, name, value)
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _create(self, parent: int, leaf: str, rel: str, member_name: str, make):
        """Run make(); if the name is taken, remove what is there (tar's rule) and retry."""
        try:
            return make()
        except FileExistsError:
            self._clear_slot(parent, leaf, rel, member_name)
            return make()

    def _clear_slot(self, parent: int, leaf: str, rel: str, member_name: str) -> None:
        self._skipped.discard(rel)
        if not stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
            os.unlink(leaf, dir_fd=parent)
            return
        self._forget_dir(rel)
        try:
            os.rmdir(leaf, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise KiwiError(
                    f"archive member {member_name!r} would replace the non-empty"
                    f" directory {rel!r}; the archive is damaged"
                ) from None
            raise

    def _locate(self, rel: str, member_name: str, create: bool = True) -> tuple[int, str]:
        """(fd of the folder that holds rel, last component of rel)."""
        head, _, leaf = rel.rpartition("/")
        return self._dir_fd(head, member_name, create), leaf

    def _dir_fd(self, path: str, member_name: str, create: bool) -> int:
        """An fd of dest/path reached without following any symlink; cached."""
        if not path:
            return self._root_fd
        fd = self._dir_fds.get(path)
        if fd is not None:
            self._dir_fds.move_to_end(path)
            return fd
        parts = path.split("/")
        depth, fd = self._deepest_cached_ancestor(parts)
        for i in range(depth, len(parts)):
            sub = "/".join(parts[: i + 1])
            fd = self._open_subdir(fd, parts[i], sub, member_name, create)
            self._remember(sub, fd)
        return fd

    def _deepest_cached_ancestor(self, parts: list[str]) -> tuple[int, int]:
        for depth in range(len(parts) - 1, 0, -1):
            fd = self._dir_fds.get("/".join(parts[:depth]))
            if fd is not None:
                return depth, fd
        return 0, self._root_fd

    def _open_subdir(self, parent: int, name: str, path: str, member_name: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise KiwiError(
                    f"archive member {member_name!r} needs {path!r}, which the archive does not contain"
                ) from None
            os.mkdir(name, 0o755, dir_fd=parent)  # a folder the archive implies but does not list
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if _is_symlink(parent, name):
                raise UnsafeArchiveError(
                    f"archive member {member_name!r} would be written through the symlink"
                    f" {path!r}; refusing the archive, it is unsafe"
                ) from None
            raise KiwiError(
                f"archive member {member_name!r} needs {path!r} to be a folder,"
                f" but the archive made it a file"
            ) from None

    def _remember(self, path: str, fd: int) -> None:
        self._dir_fds[path] = fd
        while len(self._dir_fds) > DIR_FD_CACHE:
            os.close(self._dir_fds.popitem(last=False)[1])

    def _forget_dir(self, rel: str) -> None:
        """A folder is going away: drop the cached fds and deferred metadata of it and below."""
        prefix = rel + "/"
        for path in [p for p in self._dir_fds if p == rel or p.startswith(prefix)]:
            os.close(self._dir_fds.pop(path))
        for path in [p for p in self._deferred if p == rel or p.startswith(prefix)]:
            del self._deferred[path]
