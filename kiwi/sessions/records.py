"""Session records: their files, ids, lookup across containers, and whether
their processes are still the ones recorded.

Files, all in kiwi-data/mounts/<id>/sessions/ (0700; removed when the container stops):
  <sid>.json   id, container, created, command, daemon pid (the session server,
               server.py), relay pid (kiwi-exec, the server's child), shell pid
               (atomic writes; pids carry start times so a recycled pid is never trusted)
  <sid>.sock   the session's socket (0600; a peer must also be uid 0 by SO_PEERCRED)
Recent output for replay lives in the server's memory (a 64 KiB ring per session);
all of it also goes to a bounded log beside the container's config (see log.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
from pathlib import Path

from .. import layout, proc
from ..errors import KiwiError
from ..store import Store, is_container_id, read_json
from . import proto

SID_LEN = 8
SID_RE = re.compile(r"[0-9a-f]{8}\Z")
SID_PREFIX_RE = re.compile(r"[0-9a-f]{1,8}\Z")
KILL_GRACE = 2.0  # SIGHUP first, SIGKILL after this
REQUEST_TIMEOUT = 5.0  # a client's wait for the daemon's first answer


# --- files ------------------------------------------------------------------------


def sessions_dir(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / layout.SESSIONS


def record_path(store: Store, cid: str, sid: str) -> Path:
    return sessions_dir(store, cid) / f"{sid}.json"


def socket_path(store: Store, cid: str, sid: str) -> Path:
    return sessions_dir(store, cid) / f"{sid}.sock"


def read_record(path: Path) -> dict | None:
    try:
        record = read_json(path)
    except (FileNotFoundError, KiwiError):
        return None
    return record if isinstance(record, dict) else None


def remove_files(store: Store, cid: str, sid: str) -> None:
    for path in (socket_path(store, cid, sid), record_path(store, cid, sid)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def session_ids(store: Store, cid: str) -> list[str]:
    try:
        names = os.listdir(sessions_dir(store, cid))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise KiwiError(
            f"the sessions of container {cid} are readable by root only; run: sudo kiwi sessions {cid}"
        ) from None
    stems = {name.rsplit(".", 1)[0] for name in names if name.endswith((".json", ".sock"))}
    return sorted(s for s in stems if SID_RE.match(s))


def containers_with_runtime(store: Store) -> list[str]:
    try:
        return sorted(n for n in os.listdir(store.mounts_dir) if is_container_id(n))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise KiwiError("sessions are readable by root only; run the command with sudo") from None


def find_session(store: Store, ref: str) -> tuple[str, str]:
    """A session id or unique prefix -> (container id, session id), across all containers."""
    if not SID_PREFIX_RE.match(ref or ""):
        raise KiwiError(
            f"invalid session id {ref!r}: sessions have 8 hex digits; see kiwi sessions <container>"
        )
    matches = [
        (cid, sid)
        for cid in containers_with_runtime(store)
        for sid in session_ids(store, cid)
        if sid.startswith(ref)
    ]
    if not matches:
        raise KiwiError(f"no session {ref}; list them with: kiwi sessions <container>")
    if len(matches) > 1:
        raise KiwiError(f"{ref!r} matches {len(matches)} sessions; give more of its id")
    return matches[0]


def new_session_id(store: Store, cid: str) -> str:
    while True:
        sid = secrets.token_hex(SID_LEN // 2)
        if not record_path(store, cid, sid).exists():
            return sid


def ensure_sessions_dir(store: Store, cid: str) -> Path:
    path = sessions_dir(store, cid)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


# --- processes ----------------------------------------------------------------------


def process_alive(pid, start_time) -> bool:
    return isinstance(pid, int) and pid > 1 and proc.process_start_time(pid) == start_time


def daemon_alive(record: dict) -> bool:
    return process_alive(record.get("daemon_pid"), record.get("daemon_start"))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(parent: int) -> list[int]:
    """One small read (a scan of /proc took 30 ms on a loaded host, inside the server's loop);
    the scan where the kernel lacks CONFIG_PROC_CHILDREN. parent: single-threaded."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as children:
            return [int(pid) for pid in children.read().split()]
    except FileNotFoundError:
        return [pid for pid in all_pids() if (f := proc.stat_fields(pid)) and int(f[1]) == parent]


def session_members(session_id: int | None) -> list[int]:
    """Processes of a terminal session (ids as the host sees them), the shell included."""
    return [pid for pid in all_pids() if (f := proc.stat_fields(pid)) and int(f[3]) == session_id]


def signal_session(session_id: int | None, signals) -> None:
    for pid in session_members(session_id):
        for sig in signals:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def command_line(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return None
    return " ".join(p.decode(errors="replace") for p in parts if p) or None


def kill_leftovers(record: dict) -> None:
    """A daemon died without ending its shell (the relay still holds the PTY): end that session."""
    shell, start = record.get("shell_pid"), record.get("shell_start")
    if process_alive(shell, start):
        signal_session(shell, (signal.SIGKILL,))


def forget_lost(store: Store, cid: str, sid: str, record: dict | None) -> None:
    """A session whose daemon is gone (record: its record, if any): end the shell it left, remove its files."""
    if record is not None:
        kill_leftovers(record)
    remove_files(store, cid, sid)


def request(store: Store, cid: str, sid: str, kind: int, timeout: float) -> tuple[int, bytes] | None:
    """One request/answer exchange with a session daemon; None when it cannot be reached."""
    sock = proto.connect(socket_path(store, cid, sid), timeout)
    if sock is None:
        return None
    try:
        sock.sendall(proto.pack(kind))
        return proto.recv_frame(sock, proto.FrameReader(), [])
    except (OSError, proto.ProtocolError):
        return None
    finally:
        sock.close()


def usable_record(store: Store, cid: str, sid: str) -> dict:
    """The record of a live session; an ended or lost one is removed with a clear error."""
    record = read_record(record_path(store, cid, sid))
    if record is not None and record.get("state") == "exited":
        remove_files(store, cid, sid)
        raise KiwiError(
            f"session {sid} has ended (exit status {record.get('exit_status')}); "
            f"start a new one with: kiwi attach {cid}"
        )
    if record is None or not daemon_alive(record):
        forget_lost(store, cid, sid, record)
        raise KiwiError(
            f"session {sid} is gone: its daemon is no longer running "
            f"(its stale files were removed); start a new one with: kiwi attach {cid}"
        )
    return record


def session_state(store: Store, cid: str, sid: str, record: dict | None) -> str:
    if record is None:
        return "stale"
    if record.get("state") == "exited":
        return "exited"
    if not daemon_alive(record):
        return "dead"
    answer = request(store, cid, sid, proto.STATUS, REQUEST_TIMEOUT)
    if answer is None or answer[0] != proto.STATUS:
        return "unresponsive"
    status = proto.unpack_json(answer[1])
    return "attached" if status.get("attached") else status.get("foreground", "idle")


def existing_record(store: Store, cid: str, sid: str) -> dict | None:
    if not SID_RE.match(sid or ""):
        raise KiwiError(f"invalid session id {sid!r}: sessions have 8 hex digits; see kiwi sessions {cid}")
    record = read_record(record_path(store, cid, sid))
    if record is None and not socket_path(store, cid, sid).exists():
        raise KiwiError(f"no session {sid} in container {cid}; see kiwi sessions {cid}")
    return record
