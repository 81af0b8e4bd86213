"""sessionlog: rotation, tail, pruning and following across a rotation, on real files."""

from __future__ import annotations

from kiwi.sessions import log as sessionlog
from kiwi.store import Store

CID = "0123456789ab"


def make_store(tmp_path) -> Store:
    store = Store(tmp_path / "kiwi-data")
    store.container_dir(CID).mkdir(parents=True)
    return store


def test_rotation_keeps_one_old_file_and_reads_from_a_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sessionlog, "ROTATE_SIZE", 100)
    store = make_store(tmp_path)
    log = sessionlog.SessionLog(store, CID, "aaaaaaaa")
    for i in range(40):
        log.write(f"line-{i:02d}\n".encode())  # 8 bytes each: rotates every 12 lines
    log.close()
    data = sessionlog.read(store, CID, "aaaaaaaa")
    assert data.endswith(b"line-39\n") and len(data) <= 200
    assert data.startswith(b"line-")  # the older file's first, partial line is dropped
    assert sessionlog.tail(data, 2) == b"line-38\nline-39\n"
    assert sessionlog.tail(b"a\nb", 1) == b"b" and sessionlog.tail(data, 0) == b""


def test_prune_keeps_the_newest_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(sessionlog, "KEEP_SESSIONS", 3)
    store = make_store(tmp_path)
    for n in range(5):
        sessionlog.SessionLog(store, CID, f"{n:08x}").close()
    assert sessionlog.session_logs(store, CID)[-1] == "00000004"
    assert len(sessionlog.session_logs(store, CID)) == 3


def test_follow_reads_across_a_rotation(tmp_path, monkeypatch):
    monkeypatch.setattr(sessionlog, "ROTATE_SIZE", 64)
    monkeypatch.setattr(sessionlog, "FOLLOW_INTERVAL", 0)
    store = make_store(tmp_path)
    log = sessionlog.SessionLog(store, CID, "bbbbbbbb")
    chunks = iter(range(200))

    def session_writes_more() -> bool:
        """The follower's "still running?" writes the next 30 bytes: a rotation (64) between polls."""
        for _ in range(3):
            i = next(chunks, None)
            if i is None:
                log.close()
                return False
            log.write(f"chunk-{i:03d}\n".encode())
        return True

    got = bytearray()
    sessionlog.follow(store, CID, "bbbbbbbb", 0, session_writes_more, got.extend)
    # Every rotation renames the file the follower holds open: it reads that one to
    # its end before it opens the new one, so nothing is lost or repeated.
    assert bytes(got) == b"".join(f"chunk-{i:03d}\n".encode() for i in range(200))
