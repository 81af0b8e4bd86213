"""The session daemon: owns the PTY master of one shell in the container and
serves one attached client at a time (see kiwi/sessions/__init__.py).

Takeover: a second client is refused while one is attached; with --takeover the
old client gets a DETACH frame saying so and the new one takes its place.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time

from .. import proc, runtime
from ..errors import KiwiError, exit_code_for_signal
from ..stdio import read_some, set_window_size
from ..store import Store, atomic_write_json, utc_now
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

RING_SIZE = 64 * 1024
CLIENT_SEND_TIMEOUT = 5.0  # a client that reads nothing this long is dropped
FIRST_FRAME_TIMEOUT = 2.0
MAX_INPUT_BACKLOG = 256 * 1024


class Daemon:
    """Owns the PTY master of one shell; serves one attached client at a time."""

    def __init__(
        self, store: Store, cid: str, sid: str, term: str | None, size: tuple[int, int], command=None
    ):
        self.store, self.cid, self.sid = store, cid, sid
        self.term, self.size = term, size
        # None: the container's shell
        self.argv: list[str] | None
        self.exec_options: ExecOptions | None
        self.argv, self.exec_options = command or (None, None)
        self.ring = bytearray()
        self.ring_trimmed = False
        self.to_shell = bytearray()
        self.client: socket.socket | None = None
        self.client_reader: proto.FrameReader | None = None
        self.killers: list[socket.socket] = []
        self.kill_deadline: float | None = None
        self.killed = False
        self.stopping = False
        self.master_eof = False
        self.exit_status: int | None = None

    # --- setup, before the client hears "ready" ---
    def start(self) -> None:
        # A PTY of the container's devpts (see stdio.container_pty); kiwi-exec
        # gives the shell a session of its own with the slave as its terminal.
        from ..stdio import container_pty

        self.master, slave = container_pty(runtime.running_record(self.store, self.cid)["init_pid"])
        self.log = SessionLog(self.store, self.cid, self.sid)  # for kiwi logs, see log.py
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
        try:
            self.publish()
        except BaseException:
            if process_alive(self.shell_pid, self.shell_start):
                signal_session(self.shell_pid, (signal.SIGKILL,))
            raise

    def publish(self) -> None:
        """Record first, socket second: a socket never exists without its record."""
        self.record = {
            "id": self.sid,
            "container": self.cid,
            "created": utc_now(),
            "command": (command_line(self.shell_pid) if self.shell_pid else None) or "shell",
            "daemon_pid": os.getpid(),
            "daemon_start": proc.process_start_time(os.getpid()),
            "relay_pid": self.relay,
            "shell_pid": self.shell_pid,
            "shell_start": self.shell_start,
            "state": "live",
        }
        atomic_write_json(record_path(self.store, self.cid, self.sid), self.record, mode=0o600)
        self.listener = proto.listen(socket_path(self.store, self.cid, self.sid))

    # --- main loop ---
    def run(self) -> None:
        self.install_signals()
        self.reap()
        while self.exit_status is None and not self.stopping:
            self.poll_once()
            self.check_kill_deadline()
        if self.stopping and self.exit_status is None:
            self.end_for_stop()
        else:
            self.end_after_exit()

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)

    def on_stop_signal(self, signum, frame) -> None:
        self.stopping = True

    def poll_once(self) -> None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        poller.register(self.listener, select.POLLIN)
        if not self.master_eof:
            poller.register(self.master, select.POLLIN | (select.POLLOUT if self.to_shell else 0))
        # A takeover while handling these events may reuse the old client's fd number.
        self.polled_client = self.client
        if self.client is not None and len(self.to_shell) < MAX_INPUT_BACKLOG:
            poller.register(self.client, select.POLLIN)
        for fd, events in poller.poll(self.poll_timeout_ms()):
            self.dispatch(fd, events)

    def poll_timeout_ms(self) -> int | None:
        if self.kill_deadline is None:
            return None
        return max(0, int((self.kill_deadline - time.monotonic()) * 1000) + 1)

    def dispatch(self, fd: int, events: int) -> None:
        if fd == self.wake_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
            self.reap()
        elif fd == self.listener.fileno():
            self.accept_all()
        elif fd == self.master:
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self.read_master()
            if events & select.POLLOUT and not self.master_eof:
                self.write_to_shell()
        elif self.client is not None and self.client is self.polled_client and fd == self.client.fileno():
            self.read_client()

    def reap(self) -> None:
        try:
            pid, wstatus = os.waitpid(self.relay, os.WNOHANG)
        except ChildProcessError:
            self.exit_status = self.exit_status if self.exit_status is not None else 255
            return
        if pid:
            self.exit_status = proc.exit_code_of(wstatus)

    # --- the PTY ---
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
        while not self.master_eof:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.remember(data)
            self.send_to_client(proto.pack(proto.DATA, data))

    # --- connections ---
    def accept_all(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.handle_connection(conn)

    def handle_connection(self, conn: socket.socket) -> None:
        conn.settimeout(FIRST_FRAME_TIMEOUT)
        reader = proto.FrameReader()
        pending: list[tuple[int, bytes]] = []
        try:
            if proto.peer_uid(conn) != 0:
                raise PermissionError("session sockets are for root only")
            frame = proto.recv_frame(conn, reader, pending)
        except (OSError, proto.ProtocolError):
            frame = None
        if frame is None:
            conn.close()
            return
        kind, payload = frame
        if kind == proto.HELLO:
            self.attach(conn, reader, pending, payload)
        elif kind == proto.STATUS:
            self.answer_status(conn)
        elif kind == proto.KILL:
            self.killers.append(conn)
            self.start_kill()
        else:
            conn.close()

    def answer_status(self, conn: socket.socket) -> None:
        state = {"attached": self.client is not None, "foreground": self.foreground_state()}
        with contextlib.suppress(OSError):
            conn.sendall(proto.pack_json(proto.STATUS, state))
        conn.close()

    def foreground_state(self) -> str:
        """`running` when a job other than the shell holds the terminal, else `idle`."""
        try:
            return "idle" if os.tcgetpgrp(self.master) == self.shell_pid else "running"
        except OSError:
            return "idle"

    def attach(self, conn: socket.socket, reader, pending: list, payload: bytes) -> None:
        try:
            hello = proto.unpack_json(payload)
        except proto.ProtocolError:
            conn.close()
            return
        if self.client is not None and not hello.get("takeover"):
            with contextlib.suppress(OSError):
                conn.sendall(
                    proto.pack(
                        proto.REFUSED,
                        (
                            f"session {self.sid} is attached on another terminal; take it over with: "
                            f"kiwi attach --old {self.sid} --takeover"
                        ).encode(),
                    )
                )
            conn.close()
            return
        if self.client is not None:
            self.drop_client(
                {"reason": f"session {self.sid} was taken over by another terminal", "status": 0}
            )
        self.apply_size(hello.get("rows"), hello.get("cols"))
        conn.settimeout(CLIENT_SEND_TIMEOUT)
        try:
            conn.sendall(proto.pack(proto.REPLAY, self.replay()))
        except OSError:
            conn.close()
            return
        self.client, self.client_reader = conn, reader
        self.handle_client_frames(pending)

    def apply_size(self, rows, cols) -> None:
        if all(isinstance(v, int) and 0 < v < 65536 for v in (rows, cols)):
            set_window_size(self.master, rows, cols)

    def read_client(self) -> None:
        client, reader = self.client, self.client_reader
        if client is None or reader is None:
            return
        try:
            data = client.recv(65536)
            frames = reader.feed(data) if data else None
        except (OSError, proto.ProtocolError):
            frames = None
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
        if self.client is None:
            return
        try:
            self.client.sendall(frame)
        except OSError:  # gone, or stuck for CLIENT_SEND_TIMEOUT: it is detached
            self.drop_client()

    def drop_client(self, detach: dict | None = None) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if detach is not None:
            with contextlib.suppress(OSError):
                client.sendall(proto.pack_json(proto.DETACH, detach))
        client.close()

    # --- ending ---
    def start_kill(self) -> None:
        if self.killed or not process_alive(self.shell_pid, self.shell_start):
            return
        self.killed = True
        signal_session(self.shell_pid, (signal.SIGHUP, signal.SIGCONT))
        self.kill_deadline = time.monotonic() + KILL_GRACE

    def check_kill_deadline(self) -> None:
        if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
            self.kill_deadline = None
            signal_session(self.shell_pid, (signal.SIGKILL,))

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
        self.send_to_client(exit_frame)
        self.drop_client()
        for conn in self.killers:
            with contextlib.suppress(OSError):
                conn.sendall(exit_frame)
            conn.close()
        os.close(self.master)

    def end_for_stop(self) -> None:
        """The container is stopping: tell the client, hang up the shell, leave no files."""
        self.drop_client(
            {
                "reason": f"container {self.cid} is stopping; session {self.sid} ended",
                "status": exit_code_for_signal(signal.SIGHUP),
            }
        )
        for conn in self.killers:
            conn.close()
        if process_alive(self.shell_pid, self.shell_start):
            signal_session(self.shell_pid, (signal.SIGHUP, signal.SIGCONT))
        os.close(self.master)
        self.remove_socket()
        remove_files(self.store, self.cid, self.sid)

    def remove_socket(self) -> None:
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.store, self.cid, self.sid))


def preload_daemon_modules() -> None:
    """The daemon closes every inherited fd, the launcher's lock on this build's
    unpack folder too, so a newer kiwi build may remove that folder while the
    daemon lives: it must have imported everything it will ever use before."""
    from .. import cgroups, rootfs, security, stdio, syscalls  # noqa: F401  (runtime.spawn uses them)


def start_daemon(
    store: Store, cid: str, sid: str, term: str | None, size: tuple[int, int], command=None
) -> None:
    """Double-fork the session daemon; returns once its socket accepts clients.
    command: (argv, execopts.ExecOptions) to run instead of the shell."""
    preload_daemon_modules()
    ensure_sessions_dir(store, cid)
    child = proc.Child(daemon_process, store, cid, sid, term, size, command)
    try:
        # Up to "ok", not EOF: the daemon keeps its end of the pipe open.
        ready = ("ok", None) in child.read(until="ok")
    except KiwiError as e:
        remove_files(store, cid, sid)
        raise e.within("starting the session failed") from None
    finally:
        child.close()
        child.wait()
    if not ready:
        remove_files(store, cid, sid)
        raise KiwiError("the session daemon did not start; see kiwi cleanup")


def daemon_process(report, store, cid, sid, term, size, command=None) -> None:
    """First child: new session, fork the daemon, leave."""
    from .. import syscalls as sc

    os.setsid()
    if os.fork() != 0:
        return
    # Holds the PTY master of a shell in the container: no ptrace, no /proc/<pid>/fd of it.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    proc.child_main(report, run_daemon, store, cid, sid, term, size, command)


def run_daemon(report, store, cid, sid, term, size, command=None) -> None:
    """The daemon: says "ok" once its socket listens, then serves until the session ends."""
    become_daemon(report.fd)
    daemon = Daemon(store, cid, sid, term, size, command)
    daemon.start()
    report.send("ok")
    os.close(report.fd)
    report.fd = -1  # the number may be reused: nothing more goes to it
    daemon.run()


def become_daemon(keep_fd: int) -> None:
    """Let go of the client's terminal, folder and every other inherited fd."""
    from .. import security

    proc.stdio_to_devnull()
    security.close_fds_except_stdio(keep=(keep_fd,))
    os.chdir("/")
    os.umask(0o077)
