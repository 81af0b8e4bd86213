"""Files written whole or not at all, and read with a bound: atomic JSON, fsync of a
folder, flock, and the one error for a full host disk.

The bottom layer with errors.py: store.py, hoststate.py and every layer above use it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from .errors import KiwiError

JSON_FIRST_READ = 64 << 10


def atomic_write_json(path: Path | str, obj, mode: int = 0o644, durable: bool = True) -> None:
    """Write JSON so that a crash leaves either the old file or the new one.
    durable=False: no fsync, for records that no host crash outlives (a running container's:
    its processes die with the host; a damaged record reads as none). Readers still see the
    old file or the new one, never half of it."""
    path = Path(path)
    try:
        fd, tmp = new_temp_file(path)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(obj, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fchmod(f.fileno(), mode)
                if durable:
                    os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            fsync_dir(path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise host_full(path.parent, f"writing {path.name}") from None
        raise


def new_temp_file(path: Path) -> tuple[int, Path]:
    """tempfile.mkstemp's .<name>.XXXXXXXX.tmp beside path (0600, never through a link),
    without importing tempfile (shutil, random: ~3 ms of each container start, issue 20)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue


def remove_temp_files(path: Path) -> None:
    """What new_temp_file left beside path for a writer killed before its rename. Only for
    a file whose writers hold a lock the caller holds too: a live writer's file goes as well."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def is_disk_full(error: OSError) -> bool:
    import errno

    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def host_full(path: Path, what: str) -> KiwiError:
    """The one line for ENOSPC on the host side."""
    import shutil

    from .sizes import format_size

    try:
        free = format_size(shutil.disk_usage(path).free)
    except OSError:
        free = "no space"
    return KiwiError(
        f"the host's disk is full ({free} free where {path} lives) while {what}; "
        "free some space and run the command again"
    )


def utc_now(when: float | None = None) -> str:
    """The time records and archives carry: 2026-12-01T19:00:00Z (now, or `when` in epoch seconds)."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path | str, limit: int = 1 << 20):
    """Read a small JSON file; a damaged one is a clear error, not a traceback."""
    with open(path, "rb") as f:
        # read(n) allocates n bytes up front: a 1 MB buffer per small file cost
        # `kiwi list` 0.1 ms a container. Read a small first chunk, the rest only if any.
        data = f.read(min(limit + 1, JSON_FIRST_READ))
        if len(data) == JSON_FIRST_READ:
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise KiwiError(f"{path} is larger than {limit} bytes; it is not a Kiwi file")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply for the parser
        raise KiwiError(f"{path} is damaged ({e}); fix or remove it") from None


@contextlib.contextmanager
def flock(path: Path, wait: bool = True, shared: bool = False):
    """Hold a lock file; wait=False raises BlockingIOError when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)
