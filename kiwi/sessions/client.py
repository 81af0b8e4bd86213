"""The session client: relays this terminal to a session's daemon until
detach, shell exit, signal or lost daemon, and says how it ended (an Outcome);
commands.py prints the banner and the closing line."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from dataclasses import dataclass

from ..errors import KiwiError, exit_code_for_signal
from ..stdio import RawTerminal, SignalPipe, terminal_size, write_all
from ..store import Store
from . import proto
from .records import REQUEST_TIMEOUT, find_session, new_session_id, socket_path, usable_record
from .server import create_session
from .tty import parse_detach_key, window_size


@dataclass(frozen=True)
class Outcome:
    """How an attachment ended. how: "detached" (the detach key), "exited" (the shell
    ended), "taken-over" (the daemon let go of this client: a takeover or the container
    stopping; reason says which), "signal" (signum: hung up or terminated), "lost" (the
    daemon is gone). status is what `kiwi attach` exits with."""

    how: str
    status: int = 0
    reason: str | None = None
    signum: int = 0


def taken_over(info: dict) -> Outcome:
    status = info.get("status", 0)
    reason = info.get("reason")
    return Outcome(
        "taken-over",
        status=status if isinstance(status, int) else 0,
        reason=None if reason is None else str(reason),
    )


def signalled(signum: int) -> Outcome:
    return Outcome("signal", status=exit_code_for_signal(signum), signum=signum)


class Client:
    """Relays this terminal to a session until detach, shell exit, signal or lost daemon.

    run() returns how it ended as an Outcome."""

    def __init__(self, sock: socket.socket, reader, pending: list, signals: SignalPipe, detach_byte: int):
        self.sock, self.reader, self.pending = sock, reader, pending
        self.signals, self.detach_byte = signals, detach_byte
        self.stdin_tty = os.isatty(0)
        self.stdin_open = True

    def run(self) -> Outcome:
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

    def dispatch(self, fd: int) -> Outcome | None:
        if fd == self.signals.r:
            return self.handle_signals()
        if fd == 0:
            return self.read_stdin()
        return self.read_socket()

    def read_socket(self) -> Outcome | None:
        try:
            data = self.sock.recv(65536)
            frames = self.reader.feed(data) if data else None
        except (OSError, proto.ProtocolError):
            frames = None
        if frames is None:
            return Outcome("lost")
        return self.handle_frames(frames)

    def handle_frames(self, frames: list) -> Outcome | None:
        for kind, payload in frames:
            if kind == proto.DATA:
                write_all(1, payload)
            elif kind == proto.EXIT:
                return Outcome("exited", status=proto.unpack_exit(payload))
            elif kind == proto.DETACH:
                return taken_over(proto.unpack_json(payload))
        return None

    def read_stdin(self) -> Outcome | None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            if self.stdin_tty:  # a terminal reads nothing only when it hung up
                return signalled(signal.SIGHUP)
            self.stdin_open = False
            return self.send(proto.pack(proto.DATA, b"\x04"))  # end of piped input: Ctrl-D to the shell
        cut = data.find(bytes([self.detach_byte]))
        if cut < 0:
            return self.send(proto.pack(proto.DATA, data))
        if cut:
            self.send(proto.pack(proto.DATA, data[:cut]))
        self.send(proto.pack(proto.DETACH))
        return Outcome("detached")

    def handle_signals(self) -> Outcome | None:
        for signum in self.signals.read():
            if signum != signal.SIGWINCH:
                return signalled(signum)
            size = terminal_size(0) or terminal_size(1)
            if size:
                self.send(proto.pack_resize(*size))
        return None

    def send(self, frame: bytes) -> Outcome | None:
        try:
            self.sock.sendall(frame)
        except OSError:
            return Outcome("lost")
        return None


class Attachment:
    """A session that greeted this client (the replay is here, or a refusal was raised);
    relay() then gives it this terminal, in raw mode, until the attachment ends.
    Use as a context manager: the socket and signal handlers go at its end."""

    def __init__(self, sock: socket.socket, sid: str, key: tuple[int, str], takeover: bool):
        self.sock, self.sid, self.takeover = sock, sid, takeover
        self.detach_byte, self.key_name = key
        self.reader = proto.FrameReader()
        self.pending: list[tuple[int, bytes]] = []
        self.replay = b""
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Attachment:
        with self.stack as stack:
            stack.enter_context(self.sock)
            self.signals = stack.enter_context(SignalPipe())
            self.greet()
            self.stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def greet(self) -> None:
        """Say hello, get the replay or a refusal."""
        rows, cols = window_size()
        hello = {"rows": rows, "cols": cols, "takeover": self.takeover}
        try:
            self.sock.sendall(proto.pack_json(proto.HELLO, hello))
            first = proto.recv_frame(self.sock, self.reader, self.pending)
        except (OSError, proto.ProtocolError):
            first = None
        if first is None:
            raise KiwiError(f"session {self.sid} did not answer; see kiwi sessions <container>")
        kind, payload = first
        if kind == proto.REFUSED:
            raise KiwiError(payload.decode(errors="replace"))
        if kind != proto.REPLAY:
            raise KiwiError(f"session {self.sid} answered with an unexpected {proto.NAMES[kind]} frame")
        self.sock.settimeout(None)
        self.replay = payload

    def relay(self) -> Outcome:
        """The replay, then the live session; the terminal is always restored."""
        with RawTerminal(0):
            write_all(1, self.replay)
            return Client(self.sock, self.reader, self.pending, self.signals, self.detach_byte).run()


# --- API used by commands.py -----------------------------------------------------------


def new_session(
    store: Store, cid: str, detach_key: str = "ctrl-\\", argv=None, exec_options=None
) -> Attachment:
    """Have the session server start a session running argv (the container's shell when None; the session ends
    when it ends); enter the result to greet it."""
    key = parse_detach_key(detach_key)
    sid = new_session_id(store, cid)
    term = os.environ.get("TERM") or None
    size = window_size()
    create_session(store, cid, sid, term, size, (argv, exec_options))
    sock = proto.connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(f"session {sid} started but does not accept connections; see kiwi sessions {cid}")
    return Attachment(sock, sid, key, False)


def reattach(
    store: Store, session_id: str, detach_key: str = "ctrl-\\", takeover: bool = False
) -> Attachment:
    """An existing session by id or prefix; enter the result to greet it."""
    key = parse_detach_key(detach_key)
    cid, sid = find_session(store, session_id)
    usable_record(store, cid, sid)
    sock = proto.connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(
            f"session {sid} does not accept connections; try again, "
            f"or end it with: kiwi sessions {cid} --delete {sid}"
        )
    return Attachment(sock, sid, key, takeover)
