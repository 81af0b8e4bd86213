"""copyfiles.in_container_view: which root a `kiwi cp` works on, and under which lock."""

from __future__ import annotations

import contextlib
import os

from kiwi import copyfiles, runtime

CID = "0123456789ab"


class Store:
    """The store as in_container_view uses it: the container's lock and config."""

    def __init__(self):
        self.locked = False

    @contextlib.contextmanager
    def container_lock(self, cid):
        assert cid == CID
        self.locked = True
        try:
            yield
        finally:
            self.locked = False

    def container_config(self, cid):
        return {"id": cid, "privileged": True, "idmap": None, "image": "busybox"}


def test_a_container_a_start_got_to_first_is_copied_through_its_live_root(monkeypatch):
    """Stopped when cp looked, running once cp had its lock (a start held it): the copy goes
    into the running container, instead of failing with 'run kiwi cp again'."""
    records = iter([None, {"init_pid": os.getpid()}])
    monkeypatch.setattr(runtime, "read_runtime", lambda store, cid: next(records))
    store, seen = Store(), []

    def work(root: int, shift: int):
        seen.append(
            (os.path.samestat(os.fstat(root), os.stat(f"/proc/{os.getpid()}/root")), shift, store.locked)
        )
        return 1, 2

    assert copyfiles.in_container_view(store, CID, work) == (1, 2)
    assert seen == [(True, 0, False)]  # its live root, the lock left to its stop
