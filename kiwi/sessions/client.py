"""The session client: relays this terminal to a session's daemon until
detach, shell exit, signal or lost daemon."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys

from ..errors import KiwiError
from ..stdio import RawTerminal, SignalPipe, terminal_size, write_all
from ..store import Store
from . import proto
from .daemon import start_daemon
from .records import REQUEST_TIMEOUT, find_session, new_session_id, socket_path, usable_record
from .tty import parse_detach_key, window_size


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
        rows, cols = window_size()
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
    size = window_size()
    start_daemon(store, cid, sid, term, size)
    sock = proto.connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(f"session {sid} started but does not accept connections; see kiwi sessions {cid}")
    return attach_client(sock, sid, key, False, f"kiwi: session {sid} (detach with {key[1]})")


def reattach(store: Store, session_id: str, detach_key: str = "ctrl-\\", takeover: bool = False) -> int:
    key = parse_detach_key(detach_key)
    cid, sid = find_session(store, session_id)
    usable_record(store, cid, sid)
    sock = proto.connect(socket_path(store, cid, sid), REQUEST_TIMEOUT)
    if sock is None:
        raise KiwiError(
            f"session {sid} does not accept connections; try again, "
            f"or end it with: kiwi sessions {cid} --delete {sid}"
        )
    return attach_client(
        sock, sid, key, takeover, f"kiwi: reattached to session {sid} (detach with {key[1]})"
    )
