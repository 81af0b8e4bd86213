"""The session server: one host process per data folder serves every managed
session (the tmux model). A new session costs its own processes (kiwi-exec and
the shell in the container) and a little memory here (session.py: its PTY
master, 64 KiB ring, log and sockets); no Python process of its own.

Files:
  kiwi-data/mounts/session-server.sock   control socket (0600, uid 0 peers only):
                                         CREATE and STOP from kiwi's commands (proto.py)
  kiwi-data/.locks/session-server.lock   held to start the server and to send it
                                         a CREATE, and by the server to exit
Each session keeps its own socket and record (records.py): attach, sessions
and logs reach it as before; a record names the server as its daemon_pid.

Lifetime: started on demand by a new session, under the lock (two attaches at
once end with one server); exits, under the same lock, once it serves no
session. SIGTERM ends every session as a stop does. A SIGKILLed server ends
its sessions too (their terminals hang up); `kiwi cleanup` removes what is
left: records, sockets and shells that ignored the hangup.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time

from .. import proc
from ..errors import KiwiError
from ..store import Store, flock, is_container_id
from . import proto
from .records import REQUEST_TIMEOUT, SID_RE
from .session import FIRST_FRAME_TIMEOUT, Peer, Session

TICK = 0.1  # the poll timeout while a deadline is pending
CREATE_TIMEOUT = 60.0  # starting kiwi-exec in a container on a loaded machine
LINGER_AT_EXIT = 1.0


def control_path(store: Store):
    return store.mounts_dir / "session-server.sock"


def lock_path(store: Store):
    return store.locks_dir / "session-server.lock"


class Server:
    """One poll loop over every session's PTY, sockets and clients, and the control socket."""

    def __init__(self, store: Store):
        self.store = store
        self.pid = os.getpid()
        self.start_time = proc.process_start_time(self.pid)
        self.sessions: dict[tuple[str, str], Session] = {}
        self.greeting: list[Peer] = []  # connected, their first frame not yet in
        self.lingering: list[Peer] = []  # answered: closed once their last frames are sent
        self.stopping = False

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path(self.store))  # a dead server's (the starter holds the lock)
        self.control = proto.listen(control_path(self.store))
        self.control_inode = os.stat(control_path(self.store)).st_ino

    # --- main loop ---
    def run(self) -> None:
        self.install_signals()
        while not self.stopping:
            self.poll_once()
            self.tick()
            self.end_exited()
            if self.idle() and self.close_if_unused():
                return
        for session in self.sessions.values():
            session.end_for_stop()
        self.sessions.clear()
        self.close_control()
        self.flush_lingering()

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)  # kiwi-exec is spawned with default dispositions

    def on_stop_signal(self, signum, frame) -> None:
        self.stopping = True

    def poll_once(self) -> None:
        poller = select.poll()
        handlers = {}

        def add(fd: int, events: int, handler) -> None:
            poller.register(fd, events)
            handlers[fd] = handler

        add(self.wake_r, select.POLLIN, lambda events: self.on_wake())
        add(self.control.fileno(), select.POLLIN, lambda events: self.accept_control())
        for peer in self.greeting:
            add(peer.fileno(), select.POLLIN, lambda events, p=peer: self.on_greeting(p))
        for peer in self.lingering:
            add(peer.fileno(), select.POLLOUT, lambda events, p=peer: self.on_lingering(p))
        for session in self.sessions.values():
            session.watch(add)
        for fd, events in poller.poll(self.timeout_ms()):
            handlers[fd](events)

    def timeout_ms(self) -> int | None:
        waiting = self.greeting or self.lingering or not self.sessions
        return int(TICK * 1000) if waiting or any(s.busy() for s in self.sessions.values()) else None

    def on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 512)
        for session in self.sessions.values():
            session.reap()

    def tick(self) -> None:
        now = time.monotonic()
        for session in self.sessions.values():
            session.tick(now)
        for waiting in (self.greeting, self.lingering):
            for peer in [p for p in waiting if now >= p.deadline]:
                waiting.remove(peer)
                peer.close()

    def end_exited(self) -> None:
        for key, session in list(self.sessions.items()):
            if session.exit_status is not None:
                del self.sessions[key]
                session.end_after_exit()

    def idle(self) -> bool:
        return not (self.sessions or self.greeting or self.lingering)

    def close_if_unused(self) -> bool:
        """Commands connect only while they hold the lock: with it, nobody is about to."""
        try:
            with flock(lock_path(self.store), wait=False):
                self.close_control()
                return True
        except BlockingIOError:
            return False

    def close_control(self) -> None:
        self.control.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(control_path(self.store)).st_ino == self.control_inode:  # ours, not a successor's
                os.unlink(control_path(self.store))

    # --- connections ---
    def accept_control(self) -> None:
        while True:
            try:
                conn, _ = self.control.accept()
            except OSError:
                return
            self.greet(conn, None)

    def greet(self, conn: socket.socket, target: Session | None) -> None:
        """Wait for a connection's first frame, without blocking anyone else."""
        try:
            root = proto.peer_uid(conn) == 0
        except OSError:
            root = False
        if not root:  # the sockets are 0600 in root-only folders; this is the second lock
            conn.close()
            return
        peer = Peer(conn)
        peer.target, peer.deadline = target, time.monotonic() + FIRST_FRAME_TIMEOUT
        self.greeting.append(peer)

    def on_greeting(self, peer: Peer) -> None:
        if peer not in self.greeting:
            return
        frames = peer.receive()
        if frames == []:
            return
        self.greeting.remove(peer)
        if frames is None:
            peer.close()
            return
        (kind, payload), rest = frames[0], frames[1:]
        if peer.target is None:
            self.request(peer, kind, payload)
        elif not peer.target.closed:
            peer.target.request(peer, kind, payload, rest)
        else:
            peer.close()

    def linger(self, peer: Peer) -> None:
        """Close the connection once what is queued for it is sent (or after a timeout)."""
        if not peer.flush() or not peer.out:
            peer.close()
            return
        peer.deadline = time.monotonic() + FIRST_FRAME_TIMEOUT
        self.lingering.append(peer)

    def on_lingering(self, peer: Peer) -> None:
        if peer in self.lingering and (not peer.flush() or not peer.out):
            self.lingering.remove(peer)
            peer.close()

    def flush_lingering(self) -> None:
        deadline = time.monotonic() + LINGER_AT_EXIT
        while self.lingering and time.monotonic() < deadline:
            poller = select.poll()
            for peer in self.lingering:
                poller.register(peer.fileno(), select.POLLOUT)
            poller.poll(int(TICK * 1000))
            for peer in list(self.lingering):
                self.on_lingering(peer)
        for peer in self.lingering:
            peer.close()

    # --- control requests ---
    def request(self, peer: Peer, kind: int, payload: bytes) -> None:
        if kind == proto.CREATE:
            answer = self.create(payload)
        elif kind == proto.STOP:
            answer = self.stop_container(payload)
        else:
            peer.close()
            return
        peer.send(proto.pack_json(proto.ANSWER, answer))
        self.linger(peer)

    def create(self, payload: bytes) -> dict:
        """Start a session; the answer is its error as a forked helper reports one."""
        try:
            session = self.new_session(request_of(payload))
            session.start()
        except Exception as e:  # noqa: BLE001 - the requester's error, never the server's end
            return proc.failure_report(e)
        self.sessions[(session.cid, session.sid)] = session
        return {"kind": "ok"}

    def new_session(self, request: dict) -> Session:
        cid, sid, term = request.get("container"), request.get("session"), request.get("term")
        rows, cols, argv, options = (
            request.get("rows"),
            request.get("cols"),
            request.get("argv"),
            request.get("exec"),
        )
        if not (
            isinstance(cid, str)
            and is_container_id(cid)
            and isinstance(sid, str)
            and SID_RE.match(sid)
            and (cid, sid) not in self.sessions
            and (term is None or isinstance(term, str))
            and all(isinstance(v, int) for v in (rows, cols))
            and (argv is None or (isinstance(argv, list) and all(isinstance(a, str) for a in argv)))
            and (options is None or isinstance(options, dict))
        ):
            raise KiwiError("the session server got a malformed request")
        assert isinstance(rows, int) and isinstance(cols, int)  # checked above; for mypy
        return Session(self, cid, sid, term, (rows, cols), (argv, exec_options_of(options)))

    def stop_container(self, payload: bytes) -> dict:
        """The container is stopping: end its sessions (never another container's)."""
        try:
            cid = proto.unpack_json(payload).get("container")
        except proto.ProtocolError:
            cid = None
        for key in [k for k in self.sessions if k[0] == cid]:
            self.sessions.pop(key).end_for_stop()
        return {"kind": "ok"}


def request_of(payload: bytes) -> dict:
    try:
        return proto.unpack_json(payload)
    except proto.ProtocolError:
        raise KiwiError("the session server got a malformed request") from None


def exec_options_of(options: dict | None):
    if options is None:
        return None
    from ..execopts import ExecOptions

    env, workdir, user = options.get("env") or {}, options.get("workdir"), options.get("user")
    if not (
        isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        and (workdir is None or isinstance(workdir, str))
        and (user is None or isinstance(user, str))
    ):
        raise KiwiError("the session server got malformed exec options")
    return ExecOptions(env, workdir, user)


# --- the commands' side ----------------------------------------------------------------


def create_session(
    store: Store, cid: str, sid: str, term: str | None, size: tuple[int, int], command
) -> None:
    """Have the server (started if none runs) start the session; returns once its socket listens.
    command: (argv, execopts.ExecOptions or None); argv None is the container's shell."""
    argv, options = command
    request = {
        "container": cid,
        "session": sid,
        "term": term,
        "rows": size[0],
        "cols": size[1],
        "argv": argv,
        "exec": None
        if options is None
        else {"env": options.env, "workdir": options.workdir, "user": options.user},
    }
    with flock(lock_path(store)):
        answer = ask(store, proto.CREATE, request, CREATE_TIMEOUT)
        if answer is None:
            start_server(store)
            answer = ask(store, proto.CREATE, request, CREATE_TIMEOUT)
    if answer is None:
        raise KiwiError("starting the session failed: the session server does not listen; see kiwi cleanup")
    if answer.get("kind") != "ok":
        import json

        error = proc.parse_report(json.dumps(answer).encode())[1]
        if not isinstance(error, KiwiError):
            error = KiwiError("the session server sent a malformed answer")
        raise error.within("starting the session failed")


def stop_container(store: Store, cid: str, timeout: float) -> None:
    """Ask the server to end the container's sessions; its leftovers are the caller's."""
    with contextlib.suppress(KiwiError):
        ask(store, proto.STOP, {"container": cid}, timeout)


def ask(store: Store, kind: int, request: dict, timeout: float) -> dict | None:
    """One request on the control socket; None when no server listens there."""
    sock = proto.connect(control_path(store), REQUEST_TIMEOUT)
    if sock is None:
        return None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(proto.pack_json(kind, request))
            frame = proto.recv_frame(sock, proto.FrameReader(), [])
            if frame is not None and frame[0] == proto.ANSWER:
                return proto.unpack_json(frame[1])
        except (OSError, proto.ProtocolError):
            pass
    raise KiwiError("the session server did not answer; see kiwi sessions <container> and kiwi cleanup")


def remove_stale_control(store: Store) -> str | None:
    """The control socket of a server that died (SIGKILL): for `kiwi cleanup`."""
    path = control_path(store)
    if not os.path.lexists(path):
        return None
    try:
        with flock(lock_path(store), wait=False):
            sock = proto.connect(path, REQUEST_TIMEOUT)
            if sock is not None:
                sock.close()
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    except BlockingIOError:  # a command is starting or asking the server: it is alive
        return None
    return f"the socket of a session server that had died ({path})"


def preload_server_modules() -> None:
    """The server closes every inherited fd, the launcher's lock on this build's
    unpack folder too, so a newer kiwi build may remove that folder while the
    server lives: it must have imported everything it will ever use before."""
    import json  # noqa: F401
    import resource  # noqa: F401  (fstree.more_open_files)

    from .. import cgroups, execopts, freeze, rootfs, runstate, security, stdio, syscalls  # noqa: F401
    from ..oci import config  # noqa: F401  (runtime.spawn uses them)


def start_server(store: Store) -> None:
    """Double-fork the server; returns once its control socket listens. The caller holds the lock."""
    preload_server_modules()
    child = proc.Child(server_process, store)
    try:
        # Up to "ok", not EOF: the server keeps its end of the pipe open.
        ready = ("ok", None) in child.read(until="ok")
    except KiwiError as e:
        raise e.within("starting the session server failed") from None
    finally:
        child.close()
        child.wait()
    if not ready:
        raise KiwiError("the session server did not start; see kiwi cleanup")


def server_process(report, store) -> None:
    """First child: new session, fork the server, leave."""
    from .. import syscalls as sc

    os.setsid()
    if os.fork() != 0:
        return
    # Holds the PTY masters of shells in containers: no ptrace, no /proc/<pid>/fd of it.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write("kiwi-sessions")  # what ps -o comm and top show; its argv is the first attach's
    proc.child_main(report, run_server, store)


def run_server(report, store) -> None:
    """The server: says "ok" once its control socket listens, then serves until idle."""
    from ..fstree import more_open_files

    become_daemon(report.fd)
    server = Server(store)
    server.listen()
    report.send("ok")
    os.close(report.fd)
    report.fd = -1  # the number may be reused: nothing more goes to it
    with more_open_files():  # each session holds about four fds here
        server.run()


def become_daemon(keep_fd: int) -> None:
    """Let go of the client's terminal, folder and every other inherited fd."""
    from .. import security

    proc.stdio_to_devnull()
    security.close_fds_except_stdio(keep=(keep_fd,))
    os.chdir("/")
    os.umask(0o077)
