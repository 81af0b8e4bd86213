"""The session protocol's frame reader: frames split, joined and broken every way."""

import socket

import pytest

from kiwi.sessions import proto
from kiwi.sessions.proto import DATA, EXIT, HEADER, HELLO, MAX_PAYLOAD, FrameReader, ProtocolError

FRAMES = [
    (HELLO, b'{"rows": 24, "cols": 80, "takeover": false}'),
    (DATA, b""),
    (DATA, bytes(range(256)) * 3),
    (proto.RESIZE, proto.pack_resize(50, 132)[HEADER.size :]),
    (EXIT, proto.pack_exit(-9)[HEADER.size :]),
]
STREAM = b"".join(proto.pack(kind, payload) for kind, payload in FRAMES)


def test_all_frames_in_one_chunk():
    assert FrameReader().feed(STREAM) == FRAMES


def test_one_byte_at_a_time():
    reader = FrameReader()
    got = []
    for i in range(len(STREAM)):
        got += reader.feed(STREAM[i : i + 1])
    assert got == FRAMES and not reader.buffer


def test_split_anywhere():
    for cut in range(1, len(STREAM)):
        reader = FrameReader()
        assert reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:]) == FRAMES, cut


def test_a_partial_frame_waits_for_the_rest():
    frame = proto.pack(DATA, b"hello")
    reader = FrameReader()
    assert reader.feed(frame[:3]) == []  # half a header
    assert reader.feed(frame[3 : HEADER.size]) == []  # a header, no payload yet
    assert reader.feed(frame[HEADER.size : -1]) == []
    assert reader.feed(frame[-1:] + frame[:2]) == [(DATA, b"hello")]
    assert bytes(reader.buffer) == frame[:2]


def test_the_largest_payload_passes():
    payload = b"x" * MAX_PAYLOAD
    assert FrameReader().feed(proto.pack(DATA, payload)) == [(DATA, payload)]


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, 0xFFFFFFFF])
def test_an_oversize_length_is_refused_from_the_header_alone(length):
    with pytest.raises(ProtocolError, match=f"length {length}"):
        FrameReader().feed(HEADER.pack(DATA, length))


@pytest.mark.parametrize("kind", [0, 13, 255])
def test_an_unknown_type_is_refused(kind):
    with pytest.raises(ProtocolError, match=f"type {kind}"):
        FrameReader().feed(proto.pack(DATA, b"ok") + HEADER.pack(kind, 0))


def test_payload_decoders_refuse_bad_payloads():
    assert proto.unpack_resize(proto.pack_resize(1, 65535)[HEADER.size :]) == (1, 65535)
    assert proto.unpack_exit(proto.pack_exit(256)[HEADER.size :]) == 256
    assert proto.unpack_json(proto.pack_json(HELLO, {"rows": 1})[HEADER.size :]) == {"rows": 1}
    for bad in (b"", b"\0\0\0", b"\0" * 5):
        with pytest.raises(ProtocolError):
            proto.unpack_resize(bad)
        with pytest.raises(ProtocolError):
            proto.unpack_exit(bad)
    for bad in (b"", b"[1]", b"\xff", b'"text"', b"{"):
        with pytest.raises(ProtocolError):
            proto.unpack_json(bad)


def test_recv_frame_over_a_socket_pair():
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        reader, pending = FrameReader(), []
        right.sendall(STREAM[:7])
        right.sendall(STREAM[7:])
        got = [proto.recv_frame(left, reader, pending) for _ in FRAMES]
        assert got == FRAMES
        right.shutdown(socket.SHUT_WR)
        assert proto.recv_frame(left, reader, pending) is None
