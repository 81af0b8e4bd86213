"""Freeze a running container for a consistent copy, and never leave it frozen.

Before freezing, freeze.json in the container's runtime folder records who
froze it (pid + start time). SIGTERM, SIGHUP and SIGINT unwind through the
thaw; a SIGKILL cannot, so whoever next finds a lease whose owner is dead
(list, attach, start, stop, cleanup) thaws the container and drops the lease.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from . import layout
from .errors import KiwiError, exit_code_for_signal
from .store import Store, atomic_write_json, read_json

LEASE = layout.FREEZE_LEASE
UNWIND_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Interrupted(KiwiError):
    """A signal ended the command; the container was thawed on the way out."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the container was thawed")
        self.exit_code = exit_code_for_signal(signum)


def lease_file(store: Store, cid: str):
    return store.runtime_dir(cid) / LEASE


def read_lease(store: Store, cid: str) -> dict | None:
    try:
        lease = read_json(lease_file(store, cid))
    except (FileNotFoundError, NotADirectoryError, PermissionError, KiwiError):
        return None
    return lease if isinstance(lease, dict) else {}


@contextlib.contextmanager
def unwinding_signals():
    """TERM/HUP/INT raise Interrupted, so every finally below runs. Only the first: a second
    signal raised inside a finally that was already unwinding (a generator closed on the way
    out printed "Exception ignored in" with a traceback), and replaced the first's exit."""
    import sys

    caught: list[int] = []

    def interrupt(signum, frame):
        if caught:
            return  # on the way out already, for the first signal
        caught.append(signum)
        raise Interrupted(signum)

    def unraisable(info):
        """A signal raised inside a finalizer (a generator closed by the collector) is lost
        there, as Python cannot raise it: no traceback, and the next signal raises again."""
        if isinstance(info.exc_value, Interrupted):
            caught.clear()
        else:
            hook(info)

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    old = {s: signal.signal(s, interrupt) for s in UNWIND_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook


@contextlib.contextmanager
def signals_blocked():
    """A second signal must not cut the thaw short; it is delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, UNWIND_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def frozen_if_running(store: Store, cid: str):
    """Freeze a running container's processes for a consistent copy; thaw on every way out."""
    from . import runstate

    if not runstate.read_runtime(store, cid):
        yield
        return
    group = runstate.container_cgroup(store, cid)
    with unwinding_signals():
        atomic_write_json(lease_file(store, cid), runstate.own_identity(), mode=0o600)
        try:
            group.freeze()
            yield
        finally:
            with signals_blocked():
                group.thaw()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lease_file(store, cid))


def thaw_if_abandoned(store: Store, cid: str, locked: bool = False) -> bool:
    """Thaw a container whose freezer died (kill -9 of snap/commit). True when it did.

    Under the container lock, so a new snap's fresh lease is never taken for
    the dead one; callers that hold the lock already pass locked=True."""
    from .runstate import owner_alive

    lease = read_lease(store, cid)
    if lease is None or owner_alive(lease):
        return False
    if locked:
        return thaw_abandoned(store, cid, lease)
    deadline = time.monotonic() + 3
    while True:  # the dead owner's helper child may hold the lock a moment longer
        try:
            with store.container_lock(cid, wait=False):
                return thaw_abandoned(store, cid, lease)
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        except PermissionError:
            return False  # not root: list shows it, root's next command thaws it


def thaw_abandoned(store: Store, cid: str, lease: dict) -> bool:
    from .runstate import container_cgroup

    if read_lease(store, cid) != lease:
        return False  # another process dealt with it, or froze it anew
    group = container_cgroup(store, cid)
    if group.exists():
        group.thaw()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lease_file(store, cid))
    return True


def thaw_unleased(store: Store, cid: str) -> bool:
    """Under the container lock (cleanup): a frozen cgroup that no live lease explains."""
    from .runstate import container_cgroup, owner_alive

    if thaw_if_abandoned(store, cid, locked=True):
        return True
    lease = read_lease(store, cid)
    if lease is not None and owner_alive(lease):
        return False
    group = container_cgroup(store, cid)
    if group.exists() and group.is_frozen_quietly():
        group.thaw()
        return True
    return False
