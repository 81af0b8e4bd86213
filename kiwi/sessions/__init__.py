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

__all__ = ["cleanup", "delete", "kill", "list_sessions", "new_session", "reattach", "stop_all"]
