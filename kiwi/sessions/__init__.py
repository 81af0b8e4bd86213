"""Managed sessions: one session server per data folder (the tmux model) owns the
PTY of every session's shell inside its container; clients attach and detach
through each session's root-only Unix socket.

  records.py  files, ids, lookup, liveness and state of a session
  proto.py    the framed protocol and its Unix socket
  tty.py      detach key, window size, what a replay leaves out
  server.py   the session server: control socket, start on demand, one poll loop
  session.py  one session in it: PTY master, ring, log, its socket and client
  client.py   attach to a new or an existing session
  manage.py   list, kill, delete; stop_all and cleanup for stop and `kiwi cleanup`
"""

# Loaded on first use (PEP 562): `kiwi stop` needs only manage.stop_all, and importing
# the client, server and terminal code for it cost 80-170 ms of its start-up. Plain
# `from . import` statements, so the frozen build's scan still sees every part.
__all__ = [
    "SID_PREFIX_RE",
    "TERMINAL_QUERIES",
    "cleanup",
    "daemon_alive",
    "delete",
    "kill",
    "list_sessions",
    "new_session",
    "read_record",
    "reattach",
    "record_path",
    "session_ids",
    "stop_all",
]


def stop_all(store, cid: str) -> None:
    """manage.stop_all, loaded only when the container has a sessions folder: most stops
    have none, and the records import hashlib and OpenSSL (~14 ms of `kiwi stop`)."""
    import os

    from .. import layout

    if not os.path.isdir(store.runtime_dir(cid) / layout.SESSIONS):  # records.sessions_dir
        return
    from . import manage

    manage.stop_all(store, cid)


def __getattr__(name: str):
    if name in ("new_session", "reattach"):
        from . import client

        return getattr(client, name)
    if name in ("cleanup", "delete", "kill", "list_sessions"):
        from . import manage

        return getattr(manage, name)
    if name in ("SID_PREFIX_RE", "daemon_alive", "read_record", "record_path", "session_ids"):
        from . import records

        return getattr(records, name)
    if name == "TERMINAL_QUERIES":
        from . import tty

        return tty.TERMINAL_QUERIES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
