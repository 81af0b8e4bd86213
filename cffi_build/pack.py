"""Pack the one-file kiwi: the launcher, then the one-folder bundle.

    python cffi_build/pack.py LAUNCHER BUNDLE_DIR OUTPUT

Layout of OUTPUT (read by cffi_build/launcher.c, which unpacks the bundle once
into a cache folder named by the hash and execs BUNDLE_DIR/kiwi from there):

    launcher (static ELF)
    data     every file's bytes, in index order, as one zstd frame (with checksum)
    index    per entry: type 'd'/'f' (u8), 0 (u8), mode (u16), path length (u32),
             size (u64), path (UTF-8, relative); folders before what they hold
    trailer  "KIWIPAK1", index offset, index size, data offset, data size,
             build time (u64 each, little-endian), hash (16 hex digits, NUL-padded to 24)

The hash covers index and data, so each build gets its own cache folder; the
build time is the mtime of every unpacked file, and tells older builds' cache
folders from newer ones.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import sys
import time
from pathlib import Path

import zstandard

MAGIC = b"KIWIPAK1"
ENTRY = struct.Struct("<BBHIQ")
TRAILER = struct.Struct("<8s5Q24s")
BUNDLE_EXE = "kiwi"


def bundle_entries(root: Path) -> list[tuple[str, Path]]:
    """(relative path, source) for every folder and file, folders first, sorted."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs + sorted(files):
            path = Path(folder) / name
            if path.is_symlink():
                raise SystemExit(f"pack: {path} is a symlink; the launcher unpacks only folders and files")
            entries.append((str(path.relative_to(root)), path))
    return entries


def pack(launcher: Path, bundle: Path, output: Path, level: int = 19) -> str:
    if not (bundle / BUNDLE_EXE).is_file():
        raise SystemExit(f"pack: {bundle / BUNDLE_EXE} is missing")
    index, data = bytearray(), []
    for rel, path in bundle_entries(bundle):
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            kind, mode, size = b"d", 0o700, 0
        else:
            kind, mode, size = b"f", 0o700 if st.st_mode & stat.S_IXUSR else 0o600, st.st_size
            data.append(path.read_bytes())
        name = rel.encode()
        index += ENTRY.pack(kind[0], 0, mode, len(name), size) + name
    # The checksum lets the launcher tell a damaged download from a good one.
    compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    payload = compressor.compress(b"".join(data))
    digest = hashlib.sha256(bytes(index) + payload).hexdigest()[:16]
    built = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    head = launcher.read_bytes()
    data_offset = len(head)
    index_offset = data_offset + len(payload)
    trailer = TRAILER.pack(MAGIC, index_offset, len(index), data_offset, len(payload), built, digest.encode())
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(head + payload + bytes(index) + trailer)
        os.fchmod(f.fileno(), 0o755)
    tmp.replace(output)  # atomic: tests and benchmarks may be running the old one
    return digest


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    digest = pack(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    print(f"packed {argv[2]} (bundle {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
