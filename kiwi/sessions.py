"""Managed sessions: a daemon on the host owns the PTY of a shell inside the
container; clients attach and detach through a root-only Unix socket.

Files, all in kiwi-data/mounts/<id>/sessions/ (0700; removed when the container stops):
  <sid>.json   id, container, created, command, daemon pid, shell relay pid
               (atomic writes; pids carry start times so a recycled pid is never trusted)
  <sid>.sock   the daemon's socket (0600; a peer must also be uid 0 by SO_PEERCRED)
Recent output for replay lives in the daemon's memory (a 64 KiB ring); all of it
also goes to a bounded log beside the container's config (see sessionlog.py).

Exited sessions: when the shell ends while a client is attached, that client
gets the exit status and the session disappears. When it ends with nobody
attached, or through `sessions --kill`, the daemon leaves its record behind with
state `exited` and the status, so the user can still learn how it ended;
`sessions --delete`, `attach --old` (which reports the status) or stopping the
container removes it.

Takeover: a second client is refused while one is attached; with --takeover the
old client gets a DETACH frame saying so and the new one takes its place.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from . import runtime
from . import sessionproto as proto
from .errors import KiwiError
from .sessionlog import SessionLog
from .stdio import RawTerminal, SignalPipe, read_some, set_window_size, terminal_size, write_all
from .store import Store, atomic_write_json, is_container_id, read_json

SID_LEN = 8
SID_RE = re.compile(r"[0-9a-f]{8}\Z")
SID_PREFIX_RE = re.compile(r"[0-9a-f]{1,8}\Z")
RING_SIZE = 64 * 1024
DEFAULT_SIZE = (24, 80)
KILL_GRACE = 2.0  # SIGHUP first, SIGKILL after this
STOP_GRACE = 3.0  # stop_all: SIGTERM to daemons, SIGKILL after this
REQUEST_TIMEOUT = 5.0  # a client's wait for the daemon's first answer
CLIENT_SEND_TIMEOUT = 5.0  # a client that reads nothing this long is dropped
FIRST_FRAME_TIMEOUT = 2.0
MAX_INPUT_BACKLOG = 256 * 1024
# Queries a shell sent to its terminal (cursor position, device attributes, colours).
# Replayed, they would make the new terminal type its answers into the shell.
TERMINAL_QUERIES = re.compile(rb"\x1b\[[>=?]?[0-9;]*[cn]|\x1b\][0-9]+;\?(?:\x07|\x1b\\)")


# --- files ------------------------------------------------------------------------


def sessions_dir(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / "sessions"


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


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- processes ----------------------------------------------------------------------


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def process_alive(pid, start_time) -> bool:
    return isinstance(pid, int) and pid > 1 and runtime.process_start_time(pid) == start_time


def daemon_alive(record: dict) -> bool:
    return process_alive(record.get("daemon_pid"), record.get("daemon_start"))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(parent: int) -> list[int]:
    return [pid for pid in all_pids() if (f := stat_fields(pid)) and int(f[1]) == parent]


def session_members(session_id: int) -> list[int]:
    """Processes of a terminal session (ids as the host sees them), the shell included."""
    return [pid for pid in all_pids() if (f := stat_fields(pid)) and int(f[3]) == session_id]


def signal_session(session_id: int, signals) -> None:
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


# --- terminal helpers ------------------------------------------------------------------


def parse_detach_key(text: str) -> tuple[int, str]:
    """'ctrl-\\' -> (0x1c, 'Ctrl-\\'); any ctrl-<char> with a control code (@, a-z, [, \\, ], ^, _)."""
    value = (text or "").strip()
    if value.lower().startswith("ctrl-") and len(value) == 6:
        char = value[5].upper()
        if "@" <= char <= "_":
            return ord(char) ^ 0x40, f"Ctrl-{char}"
    raise KiwiError(f"invalid detach key {text!r}: use ctrl-<char>, e.g. ctrl-\\ or ctrl-]")


# --- sockets ---------------------------------------------------------------------------


@contextlib.contextmanager
def short_address(path: Path):
    """Unix socket paths are limited to 108 bytes; reach the file through an fd of its folder."""
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


def connect(path: Path, timeout: float) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        with short_address(path) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with short_address(path) as address:
        sock.bind(address)
    os.chmod(path, 0o600)
    sock.listen(8)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def request(store: Store, cid: str, sid: str, kind: int, timeout: float) -> tuple[int, bytes] | None:
    """One request/answer exchange with a session daemon; None when it cannot be reached."""
    sock = connect(socket_path(store, cid, sid), timeout)
    if sock is None:
        return None
    try:
        sock.sendall(proto.pack(kind))
        return proto.recv_frame(sock, proto.FrameReader(), [])
    except (OSError, proto.ProtocolError):
        return None
    finally:
        sock.close()


# --- the daemon ------------------------------------------------------------------------


class Daemon:
    """Owns the PTY master of one shell; serves one attached client at a time."""

    def __init__(self, store: Store, cid: str, sid: str, term: str | None, size: tuple[int, int]):
        self.store, self.cid, self.sid = store, cid, sid
        self.term, self.size = term, size
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
        from .stdio import container_pty

        self.master, slave = container_pty(runtime.running_record(self.store, self.cid)["init_pid"])
        self.log = SessionLog(self.store, self.cid, self.sid)  # for kiwi logs, see sessionlog
        set_window_size(self.master, *self.size)
        try:
            self.relay = runtime.spawn(
                self.store, self.cid, None, fds=(slave, slave, slave), term=self.term, tty=True
            )
        finally:
            os.close(slave)
        shells = children_of(self.relay)
        self.shell_pid = shells[0] if shells else None
        self.shell_start = runtime.process_start_time(self.shell_pid) if self.shell_pid else None
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
            "daemon_start": runtime.process_start_time(os.getpid()),
            "relay_pid": self.relay,
            "shell_pid": self.shell_pid,
            "shell_start": self.shell_start,
            "state": "live",
        }
        atomic_write_json(record_path(self.store, self.cid, self.sid), self.record, mode=0o600)
        self.listener = listen(socket_path(self.store, self.cid, self.sid))

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
            self.exit_status = runtime.exit_code_of(wstatus)

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
        reader, pending = proto.FrameReader(), []
        try:
            if peer_uid(conn) != 0:
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
        try:
            data = self.client.recv(65536)
            frames = self.client_reader.feed(data) if data else None
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
        exit_frame = proto.pack_exit(self.exit_status)
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
                "status": 128 + signal.SIGHUP,
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
    from . import cgroups, rootfs, security, stdio, syscalls  # noqa: F401  (runtime.spawn uses them)


def start_daemon(store: Store, cid: str, sid: str, term: str | None, size: tuple[int, int]) -> None:
    """Double-fork the session daemon; returns once its socket accepts clients."""
    preload_daemon_modules()
    ensure_sessions_dir(store, cid)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        daemon_process(store, cid, sid, term, size, ready_w)
    os.close(ready_w)
    try:
        report = read_line(ready_r)
    finally:
        os.close(ready_r)
        os.waitpid(pid, 0)
    if report != "ok":
        remove_files(store, cid, sid)
        raise KiwiError(
            report[len("error ") :]
            if report.startswith("error ")
            else "the session daemon did not start; see kiwi cleanup"
        )


def read_line(fd: int) -> str:
    """The relay child inherits the pipe, so the report ends at a newline, not at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def daemon_process(store, cid, sid, term, size, ready_w: int) -> None:
    """First child: new session, fork the daemon, leave. Never returns."""
    from . import syscalls as sc

    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        # Holds the PTY master of a shell in the container: no ptrace, no /proc/<pid>/fd of it.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        become_daemon(ready_w)
        daemon = Daemon(store, cid, sid, term, size)
        daemon.start()
    except BaseException as e:  # noqa: BLE001 - reported to the waiting client
        from .errors import describe

        text = e.message if isinstance(e, KiwiError) else f"starting the session failed: {describe(e)}"
        with contextlib.suppress(OSError):
            os.write(ready_w, f"error {text}\n".encode())
        os._exit(1)
    os.write(ready_w, b"ok\n")
    os.close(ready_w)
    try:
        daemon.run()
    finally:
        os._exit(0)


def become_daemon(keep_fd: int) -> None:
    """Let go of the client's terminal, folder and every other inherited fd."""
    from . import security

    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)
    security.close_fds_except_stdio(keep=(keep_fd,))
    os.chdir("/")
    os.umask(0o077)


# --- the client ------------------------------------------------------------------------


class Client:
    """Relays this terminal to a session until detach, shell exit, signal or lost daemon.

    run() returns an outcome: ("detached",), ("exit", status), ("detached-by", dict),
    ("signal", signum) or ("lost",)."""

    def __init__(self, sock: socket.socket, reader, pending: list, signals: SignalPipe, detach_byte: int):
        self.sock, self.reader, self.pending = sock, reader, pending
        self.signals, self.detach_byte = signals, detach_byte
        self.stdin_tty = os.isatty(0)
        self.stdin_open = True

    def run(self) -> tuple:
        outcome = self.handle_frames(self.pending)
        while outcome is None:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            poller.register(self.signals.r, select.POLLIN)
            if self.stdin_open:
                poller.register(0, select.POLLIN)
            for fd, _ in poller.poll():
                outcome = self.dispatch(fd)
                if outcome is not None:
                    break
        return outcome

    def dispatch(self, fd: int) -> tuple | None:
        if fd == self.signals.r:
            return self.handle_signals()
        if fd == 0:
            return self.read_stdin()
        return self.read_socket()

    def read_socket(self) -> tuple | None:
        try:
            data = self.sock.recv(65536)
            frames = self.reader.feed(data) if data else None
        except (OSError, proto.ProtocolError):
            frames = None
        if frames is None:
            return ("lost",)
        return self.handle_frames(frames)

    def handle_frames(self, frames: list) -> tuple | None:
        for kind, payload in frames:
            if kind == proto.DATA:
                write_all(1, payload)
            elif kind == proto.EXIT:
                return ("exit", proto.unpack_exit(payload))
            elif kind == proto.DETACH:
                return ("detached-by", proto.unpack_json(payload))
        return None

    def read_stdin(self) -> tuple | None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            if self.stdin_tty:  # a terminal reads nothing only when it hung up
                return ("signal", signal.SIGHUP)
            self.stdin_open = False
            return self.send(proto.pack(proto.DATA, b"\x04"))  # end of piped input: Ctrl-D to the shell
        cut = data.find(bytes([self.detach_byte]))
        if cut < 0:
            return self.send(proto.pack(proto.DATA, data))
        if cut:
            self.send(proto.pack(proto.DATA, data[:cut]))
        self.send(proto.pack(proto.DETACH))
        return ("detached",)

    def handle_signals(self) -> tuple | None:
        for signum in self.signals.read():
            if signum != signal.SIGWINCH:
                return ("signal", signum)
            size = terminal_size(0) or terminal_size(1)
            if size:
                self.send(proto.pack_resize(*size))
        return None

    def send(self, frame: bytes) -> tuple | None:
        try:
            self.sock.sendall(frame)
        except OSError:
            return ("lost",)
        return None


def attach_client(sock: socket.socket, sid: str, key: tuple[int, str], takeover: bool, banner: str) -> int:
    """Say hello, get the replay (or a refusal), then relay in raw mode; the terminal is always restored."""
    detach_byte, _ = key
    with sock, SignalPipe() as signals:
        rows, cols = terminal_size(0) or terminal_size(1) or DEFAULT_SIZE
        reader, pending = proto.FrameReader(), []
        try:
            sock.sendall(proto.pack_json(proto.HELLO, {"rows": rows, "cols": cols, "takeover": takeover}))
            first = proto.recv_frame(sock, reader, pending)
        except (OSError, proto.ProtocolError):
            first = None
        if first is None:
            raise KiwiError(f"session {sid} did not answer; see kiwi sessions <container>")
        kind, payload = first
        if kind == proto.REFUSED:
            raise KiwiError(payload.decode(errors="replace"))
        if kind != proto.REPLAY:
            raise KiwiError(f"session {sid} answered with an unexpected {proto.NAMES[kind]} frame")
        sock.settimeout(None)
        print(banner, file=sys.stderr, flush=True)
        with RawTerminal(0):
            write_all(1, payload)
            outcome = Client(sock, reader, pending, signals, detach_byte).run()
    return report_outcome(outcome, sid)


def report_outcome(outcome: tuple, sid: str) -> int:
    """After the terminal is restored: say what happened, return the exit status."""
    what = outcome[0]
    if what == "exit":
        return outcome[1]
    if what == "lost":
        raise KiwiError(f"lost the connection to session {sid}: its daemon ended")
    if what == "detached":
        tell(f"kiwi: detached from session {sid}; reattach with: kiwi attach --old {sid}")
        return 0
    if what == "detached-by":
        info = outcome[1]
        tell(f"kiwi: {info.get('reason', f'detached from session {sid}')}")
        status = info.get("status", 0)
        return status if isinstance(status, int) else 0
    tell(f"kiwi: detached from session {sid} (signal {outcome[1]}); reattach with: kiwi attach --old {sid}")
    return 128 + outcome[1]


def tell(line: str) -> None:
    """A message on the client's terminal, on a line of its own."""
    with contextlib.suppress(OSError):
        sys.stderr.write("\r\n" + line + "\n")
        sys.stderr.flush()


# --- API used by commands.py -----------------------------------------------------------


def new_session(store: Store, cid: str, detach_key: str = "ctrl-\\") -> int:
    key = parse_detach_key(detach_key)
    sid = new_session_id(store, cid)
    term = os.environ.get("TERM") or None
    size = terminal_size(0) or terminal_size(1) or DEFAULT_SIZE
    start_daemon(store, cid, sid, term, size)
    sock = connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(f"session {sid} started but does not accept connections; see kiwi sessions {cid}")
    return attach_client(sock, sid, key, False, f"kiwi: session {sid} (detach with {key[1]})")


def reattach(store: Store, session_id: str, detach_key: str = "ctrl-\\", takeover: bool = False) -> int:
    key = parse_detach_key(detach_key)
    cid, sid = find_session(store, session_id)
    usable_record(store, cid, sid)
    sock = connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(
            f"session {sid} does not accept connections; try again, "
            f"or end it with: kiwi sessions {cid} --delete {sid}"
        )
    return attach_client(
        sock, sid, key, takeover, f"kiwi: reattached to session {sid} (detach with {key[1]})"
    )


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
        if record is not None:
            kill_leftovers(record)
        remove_files(store, cid, sid)
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
            row["exit_status"] = record.get("exit_status")
        rows.append(row)
    return rows


def existing_record(store: Store, cid: str, sid: str) -> dict | None:
    if not SID_RE.match(sid or ""):
        raise KiwiError(f"invalid session id {sid!r}: sessions have 8 hex digits; see kiwi sessions {cid}")
    record = read_record(record_path(store, cid, sid))
    if record is None and not socket_path(store, cid, sid).exists():
        raise KiwiError(f"no session {sid} in container {cid}; see kiwi sessions {cid}")
    return record


def kill(store: Store, cid: str, sid: str) -> None:
    """End the session's processes; the daemon then ends and leaves an `exited` record."""
    record = existing_record(store, cid, sid)
    if record is not None and record.get("state") == "exited":
        raise KiwiError(
            f"session {sid} has already ended (exit status {record.get('exit_status')}); "
            f"remove it with: kiwi sessions {cid} --delete {sid}"
        )
    if record is None or not daemon_alive(record):
        if record is not None:
            kill_leftovers(record)
        remove_files(store, cid, sid)
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
    """End every session daemon of the container (SIGTERM, then SIGKILL) and remove their files."""
    daemons = []
    for sid in session_ids(store, cid):
        record = read_record(record_path(store, cid, sid))
        if record and daemon_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["daemon_pid"], signal.SIGTERM)
            daemons.append(record)
    deadline = time.monotonic() + STOP_GRACE
    while any(daemon_alive(r) for r in daemons) and time.monotonic() < deadline:
        time.sleep(0.02)
    for record in daemons:
        if daemon_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["daemon_pid"], signal.SIGKILL)
        kill_leftovers(record)
    shutil.rmtree(sessions_dir(store, cid), ignore_errors=True)


def cleanup(store: Store) -> list[str]:
    """Remove what crashed daemons left: records and sockets without a live daemon,
    and every session file of a container that is not running."""
    removed = []
    for cid in containers_with_runtime(store):
        running = runtime.read_runtime(store, cid) is not None
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
    if record is not None:
        kill_leftovers(record)
    remove_files(store, cid, sid)
    return f"session {sid} of container {cid} (its daemon had died)"


def clean_temp_files(store: Store, cid: str) -> list[str]:
    """Half-written records (atomic_write_json's temp files) of dead daemons."""
    removed = []
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
