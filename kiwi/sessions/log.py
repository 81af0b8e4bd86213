"""Session logs: what a session's shell printed, on disk, for `kiwi logs`.

Files: kiwi-data/containers/<id>/logs/<sid>.log (and <sid>.log.1, the previous
MiB), folder 0700, files 0600. They sit with the container, not with the
session record in mounts/<id>/ that stop removes, so a log outlives its
session and the container's stop; `sessions --delete` and `delete` remove it.

Bounded: the daemon starts a new file past ROTATE_SIZE and keeps one old one;
a container keeps the logs of its newest KEEP_SESSIONS sessions. The daemon
appends; a write that fails (disk full) is dropped, never the session.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

from ..errors import KiwiError
from ..store import Store

ROTATE_SIZE = 1 << 20
KEEP_SESSIONS = 32
FOLLOW_INTERVAL = 0.2
LOG_RE = re.compile(r"([0-9a-f]{8})\.log\Z")
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def logs_dir(store: Store, cid: str) -> Path:
    return store.container_dir(cid) / "logs"


def log_path(store: Store, cid: str, sid: str) -> Path:
    return logs_dir(store, cid) / f"{sid}.log"


def old_path(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class SessionLog:
    """The daemon's appending end; rotates at ROTATE_SIZE."""

    def __init__(self, store: Store, cid: str, sid: str):
        folder = logs_dir(store, cid)
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        prune(store, cid)
        self.path = log_path(store, cid, sid)
        self.fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        try:
            if self.size + len(data) > ROTATE_SIZE:
                self.rotate()
            self.size += os.write(self.fd, data)
        except OSError:
            pass  # a full disk loses log lines, not the session

    def rotate(self) -> None:
        os.replace(self.path, old_path(self.path))
        os.close(self.fd)
        self.fd = -1
        self.fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def session_logs(store: Store, cid: str) -> list[str]:
    """Session ids with a log, oldest first (by the log's last write)."""
    folder = logs_dir(store, cid)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise KiwiError(
            f"the logs of container {cid} are readable by root only; run: sudo kiwi logs {cid}"
        ) from None
    found = []
    for name in names:
        match = LOG_RE.match(name)
        if match:
            with contextlib.suppress(FileNotFoundError):
                found.append((os.lstat(folder / name).st_mtime_ns, match.group(1)))
    return [sid for _, sid in sorted(found)]


def prune(store: Store, cid: str) -> None:
    """Keep the newest KEEP_SESSIONS - 1 logs, making room for the one about to start."""
    for sid in session_logs(store, cid)[: -(KEEP_SESSIONS - 1)]:
        remove(store, cid, sid)


def remove(store: Store, cid: str, sid: str) -> None:
    path = log_path(store, cid, sid)
    for p in (path, old_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def find(store: Store, ref: str) -> tuple[str, str]:
    """A session id or unique prefix -> (container id, session id), among the sessions with a log."""
    matches = [
        (cid, sid) for cid in store.container_ids() for sid in session_logs(store, cid) if sid.startswith(ref)
    ]
    if not matches:
        raise KiwiError(
            f"no container or session {ref!r} with logs; see kiwi list and kiwi sessions <container>"
        )
    if len(matches) > 1:
        raise KiwiError(f"{ref!r} matches {len(matches)} sessions; give more of its id")
    return matches[0]


def read_file(path: Path) -> bytes:
    f = open_log(path)
    if f is None:
        return b""
    with f:
        return f.read(2 * ROTATE_SIZE)


def read(store: Store, cid: str, sid: str) -> bytes:
    """The whole log; past a rotation it starts at a line, not mid-line."""
    path = log_path(store, cid, sid)
    older = read_file(old_path(path))
    if b"\n" in older:
        older = older[older.index(b"\n") + 1 :]
    return older + read_file(path)


def tail(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines (a last line without a newline counts)."""
    if lines is None:
        return data
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def follow(store: Store, cid: str, sid: str, offset: int, still_running, write) -> None:
    """write() what is appended to the log after `offset` until still_running() says no.

    The open file is read to its end before a rotated-in new file is opened, so
    nothing written around a rotation is lost."""
    path = log_path(store, cid, sid)
    f = open_log(path)
    if f is not None:
        f.seek(offset)
    try:
        while True:
            running = still_running()  # asked first: what it wrote before ending is still read
            if f is not None:
                data = f.read()
                if data:
                    write(data)
                if inode_of(path) not in (None, os.fstat(f.fileno()).st_ino):
                    f.close()
                    f = open_log(path)
                    continue
            else:
                f = open_log(path)
                if f is not None:
                    continue
            if not running:
                return
            time.sleep(FOLLOW_INTERVAL)
    finally:
        if f is not None:
            f.close()


def open_log(path: Path):
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
    except FileNotFoundError:
        return None


def inode_of(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None
