"""The first steps of a stop, with os alone: is the container idle, the SIGTERM, the
early release of its bridge. runtime.stop and quickstop.py (which decides from
what the start recorded, without the Store) both take them, then runtime.finish_stop.
"""

from __future__ import annotations

import os
import signal

from .proc import Background, process_start_time

# What runs in a container's cgroup besides its init without being the container's own:
# the limits server (lxfs.c) and its sysinfo handler.
KIWI_HELPERS = ("kiwi-lxfs", "kiwi-sysinfo")


def only_init_and_helpers(pids: list[int], init_pid: int) -> bool:
    """Nothing but the init and Kiwi's helpers runs in the container: nothing there
    could still use the network during a stop's grace period. A process inside that
    names itself like a helper only loses its own network early."""
    return all(pid == init_pid or process_name(pid) in KIWI_HELPERS for pid in pids)


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
    """network.release_bridge_early in a thread, started with the SIGTERM of an idle
    container: the bridge's deletion (~40 ms in the kernel) overlaps the init's exit
    (~25-40 ms, its ext4 unmount) instead of following it (issue 20). The bridge lock
    it holds meanwhile makes a concurrent start wait, as after the exit."""

    def __init__(self, cid: str, folder_id: str):
        self.released = False
        self.job = Background(self._release, cid, folder_id)

    def _release(self, cid: str, folder_id: str) -> None:
        from . import network

        self.released = network.release_bridge_early(cid, folder_id)

    def wait(self) -> bool:
        """True when the bridge and NAT are gone; raises what the release raised."""
        self.job.wait()
        return self.released

    def wait_quietly(self) -> None:
        """Before an error leaves the stop: never cut short at exit, which could leave the
        NAT without its bridge."""
        try:
            self.job.wait()
        except Exception:  # noqa: BLE001 - the error on its way out is the one to tell
            pass
