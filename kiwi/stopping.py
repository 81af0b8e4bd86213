"""The first steps of a stop, with os alone: is the container idle, the SIGTERM, the
early release of its bridge. runtime.stop and quickstop.py (which decides from
what the start recorded, without the Store) both take them, then runtime.finish_stop.
"""

from __future__ import annotations

# _signal, not signal: the enums signal builds were ~2 ms of a stop before its SIGTERM (issue 20).
import _signal as signal  # type: ignore[import-not-found]
import os

from .peek import process_start_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from .network import BridgeRemoval

    T = TypeVar("T")

# What runs in a container's cgroup besides its init without being the container's own:
# the limits server (lxfs.c) and its sysinfo handler.
KIWI_HELPERS = ("kiwi-lxfs", "kiwi-sysinfo")


def only_init_and_helpers(pids: list[int], init_pid: int) -> bool:
    """Nothing but the init and Kiwi's helpers runs in the container: nothing there
    could still use the network during a stop's grace period. A process inside that
    names itself like a helper only loses its own network early."""
    # Once per process: a v1 container lists its processes in each of its ~7 cgroups.
    return all(pid == init_pid or process_name(pid) in KIWI_HELPERS for pid in set(pids))


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None  # gone meanwhile


def terminate(record: dict, idle: bool, cid: str, folder_id: str) -> EarlyBridgeRelease | None:
    """SIGTERM to the init (it forwards to everyone); for an idle container, the bridge's
    release starts with it (EarlyBridgeRelease). After the signal, so that a kiwi killed
    meanwhile never leaves a running container without its network."""
    signal_init(record["init_pid"], record["init_start_time"], signal.SIGTERM)
    return EarlyBridgeRelease(cid, folder_id) if idle else None


def signal_init(pid: int, start_time: int, signum: int) -> None:
    """Through a pidfd of the process checked to be the init: were it gone meanwhile and
    its pid taken by another process, that one gets nothing."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # kernels before 5.3: checked, then signalled by pid
        pidfd = None
    try:
        if process_start_time(pid) == start_time:
            if pidfd is None:
                os.kill(pid, signum)
            else:
                signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


class EarlyBridgeRelease:
    """network.release_bridge_early, started with the SIGTERM of an idle container: the
    bridge's deletion (~40 ms in the kernel) overlaps the init's exit and the rest of
    the stop instead of following them (issue 20). Decided in the stopping thread, right
    after the signal and before the runtime's imports; the deletion is sent by
    delete_here (finish_beside: ~1-2 ms after the signal) or else by wait(). The bridge
    lock it holds until wait() makes a concurrent start wait, as after the exit."""

    def __init__(self, cid: str, folder_id: str):
        self.released = False
        self.error: Exception | None = None
        self.removal: BridgeRemoval | None = None
        try:
            from . import network

            self.removal = network.release_bridge_early(cid, folder_id)
        except Exception as e:  # noqa: BLE001 - wait() raises it, where the teardown tells it
            self.error = e

    def delete_here(self) -> None:
        """The bridge's deletion in this thread, now (BridgeRemoval.delete)."""
        if self.removal is not None:
            self.removal.delete()

    def wait(self) -> bool:
        """True when the bridge and NAT are gone; raises what the release raised (once)."""
        removal, self.removal = self.removal, None
        if removal is not None:
            removal.wait()
            self.released = True
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.released

    def wait_quietly(self) -> None:
        """Before an error leaves the stop: never cut short at exit, which could leave the
        NAT without its bridge."""
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - the error on its way out is the one to tell
            pass


def finish_beside(early: EarlyBridgeRelease | None, finish: Callable[[], T]) -> T:
    """finish() (the rest of the stop: runtime.finish_stop) in a thread of its own while
    this thread deletes the bridge early (EarlyBridgeRelease.delete_here): the deletion,
    the longest wait of the stop, starts without waiting for a new thread to get a CPU
    and the GIL, and the imports, the init's exit and the teardown go on beside it.
    Returns what finish returned, raises what it raised."""
    if early is None or early.removal is None:
        return finish()
    from .proc import Background

    result: list[T] = []
    try:
        job = Background(lambda: result.append(finish()))
    except RuntimeError:  # no thread to be had: the teardown's wait() deletes it
        return finish()
    early.delete_here()
    job.wait()
    return result[0]
