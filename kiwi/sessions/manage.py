"""Listing, ending and removing sessions: `kiwi sessions`, `kiwi stop`, `kiwi cleanup`.

Exited sessions: when the shell ends while a client is attached, that client
gets the exit status and the session disappears. When it ends with nobody
attached, or through `sessions --kill`, the daemon leaves its record behind with
state `exited` and the status, so the user can still learn how it ended;
`sessions --delete`, `attach --old` (which reports the status) or stopping the
container removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from .. import runstate
from ..errors import KiwiError
from ..store import Store
from . import proto
from .records import (
    KILL_GRACE,
    REQUEST_TIMEOUT,
    SID_LEN,
    SID_RE,
    containers_with_runtime,
    daemon_alive,
    existing_record,
    forget_lost,
    kill_leftovers,
    read_record,
    record_path,
    remove_files,
    request,
    session_ids,
    session_state,
    sessions_dir,
)

STOP_GRACE = 3.0  # stop_all: the session server's answer, SIGKILL to the shells after this


def list_sessions(store: Store, cid: str) -> list[dict]:
    """States: attached, running (a job holds the terminal), idle, exited (kept until delete);
    dead/stale mark leftovers of a crashed daemon that kiwi cleanup removes."""
    rows = []
    for sid in session_ids(store, cid):
        record = read_record(record_path(store, cid, sid))
        row = {
            "id": sid,
            "state": session_state(store, cid, sid, record),
            "created": (record or {}).get("created", "-"),
            "command": (record or {}).get("command", "-"),
        }
        if row["state"] == "exited":
            row["exit_status"] = (record or {}).get("exit_status")
        rows.append(row)
    return rows


def kill(store: Store, cid: str, sid: str) -> None:
    """End the session's processes; the daemon then ends and leaves an `exited` record."""
    record = existing_record(store, cid, sid)
    if record is not None and record.get("state") == "exited":
        raise KiwiError(
            f"session {sid} has already ended (exit status {record.get('exit_status')}); "
            f"remove it with: kiwi sessions {cid} --delete {sid}"
        )
    if record is None or not daemon_alive(record):
        forget_lost(store, cid, sid, record)
        return
    answer = request(store, cid, sid, proto.KILL, KILL_GRACE + REQUEST_TIMEOUT)
    if answer is None or answer[0] != proto.EXIT:
        raise KiwiError(f"session {sid} did not end; stop the container with: kiwi stop {cid}")


def delete(store: Store, cid: str, sid: str) -> None:
    record = existing_record(store, cid, sid)
    if record is not None and record.get("state") != "exited":
        kill(store, cid, sid)
    remove_files(store, cid, sid)


def stop_all(store: Store, cid: str) -> None:
    """End every session of the container (the session server hangs up their shells,
    SIGKILL for what is left) and remove their files."""
    records = [r for sid in session_ids(store, cid) if (r := read_record(record_path(store, cid, sid)))]
    if any(daemon_alive(r) for r in records):
        from . import server  # only with a live server: `kiwi stop` of a container without sessions skips it

        server.stop_container(store, cid, STOP_GRACE)
    for record in records:
        kill_leftovers(record)
    shutil.rmtree(sessions_dir(store, cid), ignore_errors=True)


def cleanup(store: Store) -> list[str]:
    """Remove what a crashed session server left: records and sockets without a live
    server, its control socket, and every session file of a container that is not running."""
    from . import server

    removed = [line] if (line := server.remove_stale_control(store)) else []
    for cid in containers_with_runtime(store):
        running = runstate.read_runtime(store, cid) is not None
        for sid in session_ids(store, cid):
            line = clean_session(store, cid, sid, running)
            if line:
                removed.append(line)
        removed += clean_temp_files(store, cid)
        if not running:
            remove_empty_runtime_dir(store, cid)
    return removed


def remove_empty_runtime_dir(store: Store, cid: str) -> None:
    """A container that died without `stop`: teardown could not remove its runtime
    folder while sessions/ was in it. Under its lock, so a start is never disturbed."""
    folders = (sessions_dir(store, cid), store.runtime_dir(cid))
    if not store.container_dir(cid).exists():  # no container, no start to disturb
        remove_empty_folders(folders)
        return
    try:
        with store.container_lock(cid, wait=False):
            remove_empty_folders(folders)
    except BlockingIOError:
        pass


def remove_empty_folders(folders) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def clean_session(store: Store, cid: str, sid: str, running: bool) -> str | None:
    record = read_record(record_path(store, cid, sid))
    if record is not None and daemon_alive(record):
        return None
    if record is not None and record.get("state") == "exited":
        if running:
            return None  # kept on purpose until `sessions --delete`
        remove_files(store, cid, sid)
        return f"ended session {sid} of stopped container {cid}"
    forget_lost(store, cid, sid, record)
    return f"session {sid} of container {cid} (its daemon had died)"


def clean_temp_files(store: Store, cid: str) -> list[str]:
    """Half-written records (atomic_write_json's temp files) of dead daemons."""
    removed: list[str] = []
    folder = sessions_dir(store, cid)
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(".tmp") and SID_RE.match(name[1 : 1 + SID_LEN]):
            record = read_record(record_path(store, cid, name[1 : 1 + SID_LEN]))
            if record is None or not daemon_alive(record):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / name)
                removed.append(f"half-written session record {folder / name}")
    return removed
