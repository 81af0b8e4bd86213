"""The framed protocol between a session daemon and its clients, over a root-only Unix socket.

Every frame is a 1-byte type, a 4-byte big-endian payload length and the
payload. Terminal bytes travel in DATA frames, so control messages (resize,
detach, exit status) can never be confused with what the user types or what
the shell prints.

A connection starts with one request frame from the client:
  HELLO  {"rows", "cols", "takeover"}  -> REPLAY (recent output), then DATA both
                                          ways, RESIZE/DETACH from the client,
                                          DETACH/EXIT from the daemon; or REFUSED
  STATUS                               -> STATUS {"attached", "foreground"}
  KILL                                 -> EXIT (status) once the shell has ended

On the session server's control socket (server.py), from kiwi's own commands:
  CREATE {"container", "session", ...} -> ANSWER {"kind": "ok"} once the session's
                                          socket listens, or the error as proc reports it
  STOP   {"container"}                 -> ANSWER once every session of it has ended
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from pathlib import Path

HELLO, REPLAY, DATA, RESIZE, DETACH, EXIT, REFUSED, STATUS, KILL, CREATE, STOP, ANSWER = range(1, 13)
NAMES = {
    HELLO: "HELLO",
    REPLAY: "REPLAY",
    DATA: "DATA",
    RESIZE: "RESIZE",
    DETACH: "DETACH",
    EXIT: "EXIT",
    REFUSED: "REFUSED",
    STATUS: "STATUS",
    KILL: "KILL",
    CREATE: "CREATE",
    STOP: "STOP",
    ANSWER: "ANSWER",
}

HEADER = struct.Struct(">BI")
MAX_PAYLOAD = 1 << 20  # far above the 64 KiB replay; a bigger length means a broken peer


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def pack(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def pack_json(kind: int, obj) -> bytes:
    return pack(kind, json.dumps(obj).encode())


def pack_resize(rows: int, cols: int) -> bytes:
    return pack(RESIZE, struct.pack(">HH", rows, cols))


def pack_exit(status: int) -> bytes:
    return pack(EXIT, struct.pack(">i", status))


def unpack_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != 4:
        raise ProtocolError("bad RESIZE frame")
    return struct.unpack(">HH", payload)


def unpack_exit(payload: bytes) -> int:
    if len(payload) != 4:
        raise ProtocolError("bad EXIT frame")
    return struct.unpack(">i", payload)[0]


def unpack_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload)
    except ValueError:
        raise ProtocolError("bad JSON payload") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj


class FrameReader:
    """Reassembles frames from whatever chunks recv() returns."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self.buffer)
            if kind not in NAMES or length > MAX_PAYLOAD:
                raise ProtocolError(f"bad frame header (type {kind}, length {length})")
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            frames.append((kind, bytes(self.buffer[HEADER.size : end])))
            del self.buffer[:end]
        return frames


def recv_frame(sock: socket.socket, reader: FrameReader, pending: list) -> tuple[int, bytes] | None:
    """Block (within the socket's timeout) for the next frame; None when the peer closed."""
    while not pending:
        data = sock.recv(65536)
        if not data:
            return None
        pending.extend(reader.feed(data))
    return pending.pop(0)


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
