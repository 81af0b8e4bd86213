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
# the client, server and terminal code for it cost 80-170 ms of its start-up.
_WHERE = {
    "new_session": "client",
    "reattach": "client",
    "cleanup": "manage",
    "delete": "manage",
    "kill": "manage",
    "list_sessions": "manage",
    "stop_all": "manage",
    "SID_PREFIX_RE": "records",
    "daemon_alive": "records",
    "read_record": "records",
    "record_path": "records",
    "session_ids": "records",
    "TERMINAL_QUERIES": "tty",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(f"{__name__}.{module}")
    return getattr(globals()[module], name)
