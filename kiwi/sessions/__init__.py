"""Managed sessions: a daemon on the host owns the PTY of a shell inside the
container; clients attach and detach through a root-only Unix socket.

  records.py  files, ids, lookup, liveness and state of a session
  proto.py    the framed protocol and its Unix socket
  tty.py      detach key, window size, what a replay leaves out
  daemon.py   the daemon (started by client.new_session)
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
