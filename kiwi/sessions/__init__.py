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

from .client import new_session, reattach
from .manage import cleanup, delete, kill, list_sessions, stop_all
from .records import SID_PREFIX_RE, daemon_alive, read_record, record_path, session_ids
from .tty import TERMINAL_QUERIES

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
