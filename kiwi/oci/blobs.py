"""A digest-addressed blob cache: <data>/blobs/sha256/<hex>.

A blob enters the cache only after its bytes hashed to its name. A download
in progress is <hex>.partial, held with flock; an interrupted one is resumed
with a Range request, a wrong one (digest, size) is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
from pathlib import Path

from ..errors import KiwiError
from ..proc import write_all
from .reference import DIGEST

CHUNK = 1 << 20


def cache_dir(store) -> Path:
    return store.root / "blobs" / "sha256"


def blob_path(store, digest: str) -> Path:
    if not DIGEST.fullmatch(digest or ""):
        raise KiwiError(f"{digest!r} is not a sha256 digest; the image is damaged")
    return cache_dir(store) / digest.split(":", 1)[1]


def ensure_cache(store) -> Path:
    store.ensure_layout()
    folder = cache_dir(store)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def fetch(store, registry, repository: str, descriptor: dict, progress=None) -> Path:
    """The cached blob of descriptor, downloaded (or resumed) and verified if needed."""
    digest, size = descriptor_digest_size(descriptor)
    final = blob_path(store, digest)
    if final.exists():
        return final
    ensure_cache(store)
    check_space(final.parent, size)
    partial = final.with_name(final.name + ".partial")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another pull of the same blob finishes first
        if final.exists():
            return final
        _download(fd, registry, repository, digest, size, progress)
        os.fsync(fd)
        os.rename(partial, final)
        return final
    except KiwiError as e:
        if not getattr(e, "resumable", False):
            _unlink(partial)
        raise
    except BaseException:
        raise  # an interrupted download stays as .partial and is resumed next time
    finally:
        os.close(fd)


def _download(fd, registry, repository, digest, size, progress) -> None:
    hasher, have = _hash_existing(fd, size)
    response = registry.open_blob(repository, digest, offset=have)
    with response:
        if have and response.status != 206:  # the registry ignored Range: start again
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            hasher, have = hashlib.sha256(), 0
        done = have
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _resumable(
                    f"the download of {digest} broke off ({e}); run the command again to resume"
                ) from None
            if not chunk:
                break
            done += len(chunk)
            if done > size:
                raise KiwiError(f"the blob {digest} is larger than its manifest says; refusing the image")
            hasher.update(chunk)
            write_all(fd, chunk)
            if progress:
                progress(done, size)
    if done < size:
        raise _resumable(
            f"the download of {digest} stopped after {done} of {size} bytes; run the command again to resume"
        )
    if "sha256:" + hasher.hexdigest() != digest:
        raise KiwiError(f"the blob {digest} does not match its digest; refusing the image")


def _hash_existing(fd, size):
    hasher = hashlib.sha256()
    have = os.fstat(fd).st_size
    if have > size:
        os.ftruncate(fd, 0)
        have = 0
    os.lseek(fd, 0, os.SEEK_SET)
    left = have
    while left:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            break
        hasher.update(chunk)
        left -= len(chunk)
    os.lseek(fd, have, os.SEEK_SET)
    return hasher, have


def add_file(store, source, digest: str | None = None, size: int | None = None) -> tuple[Path, str, int]:
    """Copy a local file (path or open binary file) into the cache, verified when digest is
    given; returns (path, digest, size)."""
    ensure_cache(store)
    tmp = cache_dir(store) / f".add-{os.getpid()}-{os.urandom(4).hex()}"
    hasher, total = hashlib.sha256(), 0
    try:
        with contextlib.ExitStack() as stack:
            src = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
            dst = stack.enter_context(open(tmp, "xb"))
            for chunk in iter(lambda: src.read(CHUNK), b""):
                hasher.update(chunk)
                dst.write(chunk)
                total += len(chunk)
                if size is not None and total > size:
                    break
            dst.flush()
            os.fsync(dst.fileno())
        actual = "sha256:" + hasher.hexdigest()
        if digest is not None and (actual != digest or (size is not None and total != size)):
            raise KiwiError(f"the blob {digest} in the image does not match its digest; the image is damaged")
        final = blob_path(store, actual)
        os.rename(tmp, final)
        return final, actual, total
    finally:
        _unlink(tmp)


def descriptor_digest_size(descriptor) -> tuple[str, int]:
    if not isinstance(descriptor, dict):
        raise KiwiError("the image manifest is damaged (a descriptor is not an object)")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise KiwiError(f"the image names a blob by {digest!r}; only sha256 digests are supported")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise KiwiError(f"the image gives no valid size for {digest}; it is damaged")
    return digest, size


def check_space(folder: Path, size: int) -> None:
    st = os.statvfs(folder)
    if size > st.f_bavail * st.f_frsize:
        from ..sizes import format_size

        raise KiwiError(
            f"a layer of {format_size(size)} does not fit in {folder} ({format_size(st.f_bavail * st.f_frsize)} free); free some space"
        )


def _resumable(message: str) -> KiwiError:
    error = KiwiError(message)
    error.resumable = True  # type: ignore[attr-defined]
    return error


def _unlink(path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
