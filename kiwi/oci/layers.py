"""OCI layers applied in order onto one tree through kiwi's safe extractor.

Every hostile-tar rule of extract.py holds (no absolute names, no '..', no
write through a symlink, no device nodes, no overlay xattrs). On top, the
layer whiteouts: `.wh.<name>` deletes <name> from the layers below, and
`.wh..wh..opq` empties its folder of what the layers below put there.
"""

from __future__ import annotations

from ..errors import KiwiError
from ..extract import (
    Extractor,
    UnsafeArchiveError,
    iter_members,
    normalise_member_path,
    open_archive,
    open_tar_stream,
)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
AUFS_META = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk, ...): not content


def apply_layer(dest, path, progress=None) -> int:
    """Apply one layer archive (tar, tar.gz, tar.zst, ...) onto dest; returns its entries."""
    with open_archive(path) as stream, Extractor(dest) as extractor:
        tar = open_tar_stream(stream, path)
        added: set[str] = set()
        for member in iter_members(tar, path):
            rel = normalise_member_path(member.name)
            head, _, base = rel.rpartition("/")
            if base == OPAQUE_MARKER:
                extractor.clear_dir(head, added)
            elif base.startswith(AUFS_META):
                continue
            elif base.startswith(WHITEOUT_PREFIX):
                extractor.remove(whiteout_target(head, base, member.name))
            else:
                extractor.add(tar, member, relpath=rel)
                remember_with_parents(added, rel)
            if progress:
                progress(stream.compressed_bytes_read, stream.size)
        stats = extractor.finish()
        if progress:
            progress(stream.size, stream.size)
    return stats.entries


def whiteout_target(head: str, base: str, member_name: str) -> str:
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", "..") or "/" in target:
        raise UnsafeArchiveError(f"layer member {member_name!r} is a malformed whiteout; refusing the image")
    return f"{head}/{target}" if head else target


def remember_with_parents(added: set, rel: str) -> None:
    """rel and its folders come from this layer: an opaque marker must keep them."""
    while rel and rel not in added:
        added.add(rel)
        rel = rel.rpartition("/")[0]


def apply_layers(dest, paths, progress_for=None) -> int:
    """Apply the layers in order; progress_for(i) gives layer i's progress callback."""
    entries = 0
    for i, path in enumerate(paths):
        try:
            entries += apply_layer(dest, path, progress_for(i) if progress_for else None)
        except UnsafeArchiveError as e:
            raise UnsafeArchiveError(f"layer {i + 1} of the image: {e.message}") from None
        except KiwiError as e:
            raise KiwiError(f"layer {i + 1} of the image: {e.message}") from None
    return entries
