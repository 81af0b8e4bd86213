"""Rewriting a real .kiwi file the way an attacker would (tests/security): unpack it,
change kiwi.json or a part's tar bytes, recompute every sum and offset, pack it again
(format: kiwi/archive.py)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import zstandard

HEAD = 64 << 10
SKIPPABLE_MAGIC = 0x184D2A50
PART_ORDER = ("rootfs", "upper")


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def read_kiwi(path: Path) -> tuple[dict, dict[str, bytes]]:
    """kiwi.json and each part's exact tar bytes."""
    with open(path, "rb") as f:
        stream = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    info = tarfile.TarInfo.frombuf(stream[:512], "utf-8", "surrogateescape")
    manifest = json.loads(stream[512 : 512 + info.size])
    pos = 512 + len(padded(stream[512 : 512 + info.size]))
    parts = {}
    for name in PART_ORDER:
        if name in manifest["parts"]:
            size = manifest["parts"][name]["size"]
            parts[name], pos = stream[pos : pos + size], pos + size
    return manifest, parts


def write_kiwi(path: Path, manifest: dict, parts: dict[str, bytes]) -> Path:
    """A valid-looking .kiwi: sums, sizes and frame offsets all match the given bytes."""
    frames = []
    offset = HEAD
    for name in PART_ORDER:
        if name in parts:
            frame = zstandard.ZstdCompressor().compress(parts[name])
            manifest["parts"][name].update(
                sha256=hashlib.sha256(parts[name]).hexdigest(), size=len(parts[name]), offset=offset
            )
            frames.append(frame)
            offset += len(frame)
    data = json.dumps(manifest).encode()
    info = tarfile.TarInfo("kiwi.json")
    info.size = len(data)
    head = zstandard.ZstdCompressor().compress(info.tobuf(tarfile.USTAR_FORMAT) + padded(data))
    gap = HEAD - len(head) - 8
    end = zstandard.ZstdCompressor().compress(b"\0" * 1024)
    Path(path).write_bytes(
        b"".join([head, struct.pack("<II", SKIPPABLE_MAGIC, gap), bytes(gap), *frames, end])
    )
    return Path(path)


def rewrite_kiwi(
    src: Path, dst: Path, settings: dict | None = None, parts: dict[str, bytes] | None = None
) -> Path:
    manifest, old_parts = read_kiwi(src)
    manifest["settings"].update(settings or {})
    return write_kiwi(dst, manifest, {**old_parts, **(parts or {})})


def tar_members(entries) -> bytes:
    """Tar bytes of (TarInfo, data or None) entries, without the end-of-archive blocks."""
    out = io.BytesIO()
    for info, data in entries:
        if data is not None:
            info.size = len(data)
        out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if data:
            out.write(padded(data))
    return out.getvalue()
