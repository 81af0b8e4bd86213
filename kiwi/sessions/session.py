"""One managed session inside the session server (server.py): the PTY master of
its shell, the ring of recent output, its log, its socket and one attached client.

Takeover: a second client is refused while one is attached; with --takeover the
old client gets a DETACH frame saying so and the new one takes its place.

Nothing here blocks the server: frames for a slow client are queued up to
CLIENT_BACKLOG, past that the shell's output waits in its PTY (only this
session's shell stalls), and a client that takes nothing for
CLIENT_SEND_TIMEOUT is dropped.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time

from .. import proc, runtime
from ..errors import exit_code_for_signal
from ..stdio import read_some, set_window_size
from ..store import atomic_write_json, utc_now
from . import proto
from .log import SessionLog
from .records import (
    KILL_GRACE,
    children_of,
    command_line,
    ensure_sessions_dir,
    process_alive,
    record_path,
    remove_files,
    signal_session,
    socket_path,
)
from .tty import TERMINAL_QUERIES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from ..execopts import ExecOptions
    from .server import Server

RING_SIZE = 64 * 1024
CLIENT_SEND_TIMEOUT = 5.0  # a client that takes nothing this long is dropped
FIRST_FRAME_TIMEOUT = 2.0
MAX_INPUT_BACKLOG = 256 * 1024
CLIENT_BACKLOG = 256 * 1024  # queued for a client before the PTY is left unread
DRAIN_LIMIT = 4 * RING_SIZE  # read from an ended shell's PTY, against a job that floods it


class Peer:
    """A nonblocking connection: frames in through a FrameReader, frames out through a queue."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.reader = proto.FrameReader()
        self.out = bytearray()
        self.stuck_since: float | None = None
        self.deadline = 0.0  # while greeting or lingering (server.py)
        self.target: Session | None = None  # whom its first frame is for; None: the server

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> bool:
        self.out += frame
        return self.flush()

    def flush(self) -> bool:
        """Send what the socket takes now; False when the peer is gone."""
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                if self.stuck_since is None:
                    self.stuck_since = time.monotonic()
                return True
            except OSError:
                return False
            del self.out[:sent]
            self.stuck_since = None
        return True

    def stuck(self, now: float) -> bool:
        return self.stuck_since is not None and now - self.stuck_since > CLIENT_SEND_TIMEOUT

    def receive(self) -> list | None:
        """The frames that arrived; None when the peer closed or broke the protocol."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        try:
            return self.reader.feed(data)
        except proto.ProtocolError:
            return None

    def close(self) -> None:
        self.sock.close()


class Session:
    """The PTY master of one shell; serves one attached client at a time."""

    def __init__(
        self, server: Server, cid: str, sid: str, term: str | None, size: tuple[int, int], command=None
    ):
        self.server, self.store, self.cid, self.sid = server, server.store, cid, sid
        self.term, self.size = term, size
        # None: the container's shell
        self.argv: list[str] | None
        self.exec_options: ExecOptions | None
        self.argv, self.exec_options = command or (None, None)
        self.ring = bytearray()
        self.ring_trimmed = False
        self.to_shell = bytearray()
        self.client: Peer | None = None
        self.killers: list[Peer] = []
        self.kill_deadline: float | None = None
        self.killed = False
        self.master_eof = False
        self.exit_status: int | None = None
        self.shell_pid: int | None = None
        self.shell_start: int | None = None
        self.closed = False  # its PTY and socket are closed: the server drops it

    # --- setup, before the client hears "ok" ---
    def start(self) -> None:
        # A PTY of the container's devpts (see stdio.container_pty); kiwi-exec
        # gives the shell a session of its own with the slave as its terminal.
        from ..stdio import container_pty

        self.master, slave = container_pty(runtime.running_record(self.store, self.cid)["init_pid"])
        try:
            self.log = SessionLog(self.store, self.cid, self.sid)  # for kiwi logs, see log.py
        except BaseException:
            os.close(slave)
            os.close(self.master)
            raise
        try:
            set_window_size(self.master, *self.size)
            try:
                self.relay = runtime.spawn(
                    self.store,
                    self.cid,
                    self.argv,
                    fds=(slave, slave, slave),
                    term=self.term,
                    tty=True,
                    exec_options=self.exec_options,
                )
            finally:
                os.close(slave)
            shells = children_of(self.relay)
            self.shell_pid = shells[0] if shells else None
            self.shell_start = proc.process_start_time(self.shell_pid) if self.shell_pid else None
            self.publish()
        except BaseException:
            if process_alive(self.shell_pid, self.shell_start):
                signal_session(self.shell_pid, (signal.SIGKILL,))
            self.log.close()
            os.close(self.master)
            remove_files(self.store, self.cid, self.sid)
            raise

    def publish(self) -> None:
        """Record first, socket second: a socket never exists without its record."""
        self.record = {
            "id": self.sid,
            "container": self.cid,
            "created": utc_now(),
            "command": (command_line(self.shell_pid) if self.shell_pid else None) or "shell",
            "daemon_pid": self.server.pid,  # the session server (records.daemon_alive)
            "daemon_start": self.server.start_time,
            "relay_pid": self.relay,
            "shell_pid": self.shell_pid,
            "shell_start": self.shell_start,
            "state": "live",
        }
        ensure_sessions_dir(self.store, self.cid)
        atomic_write_json(record_path(self.store, self.cid, self.sid), self.record, mode=0o600)
        self.listener = proto.listen(socket_path(self.store, self.cid, self.sid))

    # --- what the server's poll loop watches ---
    def watch(self, add) -> None:
        """add(fd, events, handler) for every fd of this session that has something to do."""
        add(self.listener.fileno(), select.POLLIN, lambda events: self.accept_all())
        if not self.master_eof:
            backlogged = self.client is not None and len(self.client.out) >= CLIENT_BACKLOG
            events = (0 if backlogged else select.POLLIN) | (select.POLLOUT if self.to_shell else 0)
            add(self.master, events, self.on_master)
        client = self.client
        if client is not None:
            events = (select.POLLIN if len(self.to_shell) < MAX_INPUT_BACKLOG else 0) | (
                select.POLLOUT if client.out else 0
            )
            add(client.fileno(), events, lambda events: self.on_client(client, events))

    def busy(self) -> bool:
        """Something here waits for a deadline (the server then polls with a timeout)."""
        return self.kill_deadline is not None or (self.client is not None and bool(self.client.out))

    def tick(self, now: float) -> None:
        if self.kill_deadline is not None and now >= self.kill_deadline:
            self.kill_deadline = None
            signal_session(self.shell_pid, (signal.SIGKILL,))
        if self.client is not None and self.client.stuck(now):
            self.drop_client()

    def reap(self) -> None:
        try:
            pid, wstatus = os.waitpid(self.relay, os.WNOHANG)
        except ChildProcessError:
            self.exit_status = self.exit_status if self.exit_status is not None else 255
            return
        if pid:
            self.exit_status = proc.exit_code_of(wstatus)

    # --- the PTY ---
    def on_master(self, events: int) -> None:
        if self.closed:  # ended while handling this round's events; the fd may be reused
            return
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            self.read_master()
        if events & select.POLLOUT and not self.master_eof:
            self.write_to_shell()

    def read_master(self) -> None:
        data = read_some(self.master)
        if data is None:
            return
        if not data:
            self.master_eof = True
            return
        self.remember(data)
        self.send_to_client(proto.pack(proto.DATA, data))

    def remember(self, data: bytes) -> None:
        self.log.write(data)
        self.ring += data
        if len(self.ring) > RING_SIZE:
            del self.ring[: len(self.ring) - RING_SIZE]
            self.ring_trimmed = True

    def replay(self) -> bytes:
        """The ring without terminal queries; a trimmed ring starts at a line, not mid-sequence."""
        data = bytes(self.ring)
        if self.ring_trimmed and b"\n" in data:
            data = data[data.index(b"\n") + 1 :]
        return TERMINAL_QUERIES.sub(b"", data)

    def write_to_shell(self) -> None:
        try:
            written = os.write(self.master, self.to_shell[:4096])
        except BlockingIOError:
            return
        except OSError:
            self.to_shell.clear()
            return
        del self.to_shell[:written]

    def drain_master(self) -> None:
        """The shell has ended: whatever it printed last still sits in the PTY."""
        drained = 0
        while not self.master_eof and drained < DRAIN_LIMIT:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            drained += len(data)
            self.remember(data)
            self.send_to_client(proto.pack(proto.DATA, data))

    # --- connections ---
    def accept_all(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # none left (BlockingIOError) or a failed one
                return
            self.server.greet(conn, self)

    def request(self, peer: Peer, kind: int, payload: bytes, pending: list) -> None:
        """The first frame on this session's socket (server.py waited for it)."""
        if kind == proto.HELLO:
            self.attach(peer, payload, pending)
        elif kind == proto.STATUS:
            peer.send(proto.pack_json(proto.STATUS, self.status()))
            self.server.linger(peer)
        elif kind == proto.KILL:
            self.killers.append(peer)
            self.start_kill()
        else:
            peer.close()

    def status(self) -> dict:
        return {"attached": self.client is not None, "foreground": self.foreground_state()}

    def foreground_state(self) -> str:
        """`running` when a job other than the shell holds the terminal, else `idle`."""
        try:
            return "idle" if os.tcgetpgrp(self.master) == self.shell_pid else "running"
        except OSError:
            return "idle"

    def attach(self, peer: Peer, payload: bytes, pending: list) -> None:
        try:
            hello = proto.unpack_json(payload)
        except proto.ProtocolError:
            peer.close()
            return
        if self.client is not None and not hello.get("takeover"):
            peer.send(
                proto.pack(
                    proto.REFUSED,
                    (
                        f"session {self.sid} is attached on another terminal; take it over with: "
                        f"kiwi attach --old {self.sid} --takeover"
                    ).encode(),
                )
            )
            self.server.linger(peer)
            return
        if self.client is not None:
            self.drop_client(
                {"reason": f"session {self.sid} was taken over by another terminal", "status": 0}
            )
        self.apply_size(hello.get("rows"), hello.get("cols"))
        if not peer.send(proto.pack(proto.REPLAY, self.replay())):
            peer.close()
            return
        self.client = peer
        self.handle_client_frames(pending)

    def apply_size(self, rows, cols) -> None:
        if all(isinstance(v, int) and 0 < v < 65536 for v in (rows, cols)):
            set_window_size(self.master, rows, cols)

    def on_client(self, client: Peer, events: int) -> None:
        if client is not self.client:  # dropped while handling this round's events
            return
        if events & select.POLLOUT and not client.flush():
            self.drop_client()
            return
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            frames = client.receive()
            if frames is None:
                self.drop_client()
                return
            self.handle_client_frames(frames)

    def handle_client_frames(self, frames: list) -> None:
        for kind, payload in frames:
            if kind == proto.DATA:
                self.to_shell += payload
            elif kind == proto.RESIZE:
                with contextlib.suppress(proto.ProtocolError):
                    self.apply_size(*proto.unpack_resize(payload))
            elif kind == proto.DETACH:
                self.drop_client()
                return

    def send_to_client(self, frame: bytes) -> None:
        if self.client is not None and not self.client.send(frame):
            self.drop_client()

    def drop_client(self, detach: dict | None = None) -> None:
        """Let go of the client; with detach, it hears why once it has read what is queued."""
        client, self.client = self.client, None
        if client is None:
            return
        if detach is None:
            client.close()
            return
        client.send(proto.pack_json(proto.DETACH, detach))
        self.server.linger(client)

    # --- ending ---
    def start_kill(self) -> None:
        if self.killed or not process_alive(self.shell_pid, self.shell_start):
            return
        self.killed = True
        signal_session(self.shell_pid, (signal.SIGHUP, signal.SIGCONT))
        self.kill_deadline = time.monotonic() + KILL_GRACE

    def end_after_exit(self) -> None:
        self.drain_master()
        if self.killed:
            signal_session(self.shell_pid, (signal.SIGKILL,))  # jobs that ignored SIGHUP
        # Files first: whoever hears EXIT may delete the record at once.
        self.remove_socket()
        if self.client is not None and not self.killed:  # the user saw it end
            remove_files(self.store, self.cid, self.sid)
        else:
            self.record.update(state="exited", exit_status=self.exit_status, ended=utc_now())
            with contextlib.suppress(OSError):
                atomic_write_json(record_path(self.store, self.cid, self.sid), self.record, mode=0o600)
        exit_frame = proto.pack_exit(255 if self.exit_status is None else self.exit_status)
        for peer in [*self.killers, *([self.client] if self.client else [])]:
            peer.send(exit_frame)
            self.server.linger(peer)
        self.client, self.killers = None, []
        self.close_terminal()

    def end_for_stop(self) -> None:
        """The container is stopping: tell the client, hang up the shell, leave no files."""
        self.drop_client(
            {
                "reason": f"container {self.cid} is stopping; session {self.sid} ended",
                "status": exit_code_for_signal(signal.SIGHUP),
            }
        )
        for peer in self.killers:
            peer.close()
        self.killers = []
        if process_alive(self.shell_pid, self.shell_start):
            signal_session(self.shell_pid, (signal.SIGHUP, signal.SIGCONT))
        self.close_terminal()
        self.remove_socket()
        remove_files(self.store, self.cid, self.sid)

    def close_terminal(self) -> None:
        self.closed = True
        os.close(self.master)
        self.log.close()

    def remove_socket(self) -> None:
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.store, self.cid, self.sid))
