"""The stdio of a command in a container, and Kiwi's relay of it. Never prints.

A container never holds a descriptor of a host file or of the host's terminal:
root inside could reopen one through /proc/self/fd/N (rewrite a file given as
`< file`, fchmod the host's /dev/null) or type into the admin's shell with
TIOCSTI. So each of fds 0-2 of the command is
  - a slave of a fresh PTY of the container's own devpts when our stdin is a
    terminal and that fd is one (Kiwi relays the host terminal to the master);
  - the same fd when it is an anonymous pipe (nothing to reopen on the host) and
    the command runs as host root (a privileged container, no `attach -u`);
  - otherwise a fresh pipe that Kiwi copies to or from the host fd, owned by the
    command's user (Docker's shim and runc do the same), so /dev/stdout reopens.
One poll loop in the kiwi process does all the copying.

Also home of the terminal helpers the session client and daemon share.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import stat
import struct
import termios
import tty

from .proc import write_all

CHUNK = 65536
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): unlock the slave
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the slave from the master, no path lookup
PTMX_DEVICE = os.makedev(5, 2)


# --- terminal helpers ---------------------------------------------------------------


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def set_window_size(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_some(fd: int) -> bytes | None:
    """Up to CHUNK bytes; b"" at the end, None when a non-blocking fd has nothing yet."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # EIO: nobody holds the PTY slave any more


def exit_pidfd(pid: int) -> int | None:
    """A pidfd of our child pid, readable once it exits; None where pidfd_open is refused
    (ENOSYS before Linux 5.3, EPERM from a seccomp profile kiwi runs under, as enter and
    stopping fall back on any refusal): the relay then learns of the exit from SIGCHLD."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


class SignalPipe:
    """SIGWINCH, SIGTERM and SIGHUP (and those given) become bytes on a pipe that a poll
    loop watches."""

    SIGNALS = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, also: tuple[int, ...] = ()):
        self.signals = self.SIGNALS + also

    def __enter__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.saved = {sig: signal.signal(sig, self.handle) for sig in self.signals}
        return self

    def handle(self, signum, frame) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.w, bytes([signum]))

    def read(self) -> bytes:
        try:
            return os.read(self.r, 512)
        except BlockingIOError:
            return b""

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        os.close(self.r)
        os.close(self.w)


class RawTerminal:
    """Raw mode on a terminal; restore() is safe to call any number of times."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = None

    def __enter__(self):
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc):
        self.restore()

    def restore(self) -> None:
        if self.saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None


# --- what the command gets ---------------------------------------------------------------


def container_pty(init_pid: int) -> tuple[int, int]:
    """A new PTY of the container's own devpts: (master, slave), both close-on-exec.

    ptmx is opened beneath the container's root (no symlink followed, no way
    out), must be the PTY multiplexer, and the slave comes from the master
    with TIOCGPTPEER: no path is looked up in the container's tree for it.
    Inside, `tty` shows /dev/pts/N; the host's devpts is never involved."""
    from . import syscalls as sc
    from .errors import KiwiError

    root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        master = sc.openat2(
            root,
            "dev/pts/ptmx",
            os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
            0,
            sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS,
        )
    except OSError as exc:
        raise KiwiError(
            f"cannot open a terminal in the container ({exc.strerror}); "
            "restart it with kiwi stop, then attach"
        ) from None
    finally:
        os.close(root)
    try:
        info = os.fstat(master)
        if not stat.S_ISCHR(info.st_mode) or info.st_rdev != PTMX_DEVICE:
            raise KiwiError(
                "the container's /dev/pts/ptmx is not a terminal multiplexer; "
                "restart it with kiwi stop, then attach"
            )
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    try:
        give_to_container_root([slave], init_pid)  # its terminal is its root's, as with ssh
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def is_anonymous_pipe(fd: int) -> bool:
    """A pipe without a name (a FIFO on the host has a path): nothing to reopen on the host."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:
        return False


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Pump:
    """Copies src to dst; a dst of None discards. close_dst: close dst after src's end."""

    def __init__(self, src: int, dst: int | None, close_dst: bool):
        self.src, self.dst, self.close_dst = src, dst, close_dst
        self.buffer = bytearray()
        self.ended = False

    def wants_input(self) -> bool:
        return not self.ended and len(self.buffer) < CHUNK

    def read(self) -> None:
        data = read_some(self.src)
        if data is None:
            return
        if not data:
            self.ended = True
        elif self.dst is not None:
            self.buffer += data
        self.flush()

    def flush(self) -> None:
        while self.buffer:
            try:
                written = os.write(self.dst, self.buffer)
            except BlockingIOError:
                return
            except OSError:  # the reader is gone: nothing more to copy
                self.buffer.clear()
                self.ended = True
                break
            del self.buffer[:written]
        if self.ended and self.close_dst and self.dst is not None:
            os.close(self.dst)
            self.dst = None

    def drain(self) -> None:
        """What is already there, without waiting for an end that may never come
        (a background job of the command may hold the pipe or the PTY for long)."""
        os.set_blocking(self.src, False)
        while not self.ended and self.dst is not None:
            if self.buffer:
                write_all(self.dst, bytes(self.buffer))
                self.buffer.clear()
            try:
                data = os.read(self.src, CHUNK)
            except OSError:
                return
            if not data:
                return
            self.buffer += data


def container_root_ids(init_pid: int) -> tuple[int, int]:
    """Host uid and gid of the container's root: (0, 0) when privileged."""
    with open(f"/proc/{init_pid}/status") as f:
        ids = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("Uid", "Gid")}
    return ids["Uid"], ids["Gid"]


def give_to_container_root(fds: list[int], init_pid: int) -> None:
    """The pipes and the PTYs Kiwi makes for a command belong to the container's root:
    in a user namespace, host uid 0 is nobody there, and reopening /dev/stdout
    (/proc/self/fd/1) would be refused. Privileged containers: nothing to do.
    kiwi-exec hands them on to the user of `attach -u` (as runc does)."""
    uid, gid = container_root_ids(init_pid)
    if uid != 0:
        for fd in fds:
            os.fchown(fd, uid, gid)


class Relay:
    """Kiwi's side of a command's stdio; the fds to give the command are in child_fds."""

    def __init__(self, init_pid: int, as_user: bool = False):
        self.pty = os.isatty(0)
        # The caller's own pipe goes through as it is only where the command can reopen
        # it (/dev/stdout): as root of a privileged container. Never chowned: it is not ours.
        self.pass_pipes = not as_user and container_root_ids(init_pid) == (0, 0)
        self.master = None
        self.child_fds: list[int] = []
        self.child_ends: list[int] = []  # ours to close once the command holds them
        self.pumps: list[Pump] = []
        self.ours: list[int] = []  # ours to close at the end
        try:
            slave = self.open_pty(init_pid) if self.pty else None
            for fd in (0, 1, 2):
                self.child_fds.append(self.child_end(fd, slave))
            give_to_container_root(self.child_ends, init_pid)
        except BaseException:
            self.close()
            raise

    def open_pty(self, init_pid: int) -> int:
        self.master, slave = container_pty(init_pid)
        self.ours.append(self.master)
        self.child_ends.append(slave)
        shown = next((fd for fd in (1, 2) if os.isatty(fd)), None)
        self.pumps.append(Pump(0, self.master, close_dst=False))  # keys, Ctrl-C included
        self.pumps.append(Pump(self.master, shown, close_dst=False))
        self.copy_window_size()
        return slave

    def child_end(self, fd: int, slave: int | None) -> int:
        if slave is not None and os.isatty(fd):
            return slave
        if self.pass_pipes and is_anonymous_pipe(fd):
            return fd
        r, w = os.pipe2(os.O_CLOEXEC)
        host = fd if is_open(fd) else None
        if fd == 0:
            self.child_ends.append(r)
            os.set_blocking(w, False)
            if host is None:
                os.close(w)  # nothing to read: the command sees the end at once
            else:
                self.pumps.append(Pump(host, w, close_dst=True))  # the pump owns w
            return r
        self.child_ends.append(w)
        self.ours.append(r)
        os.set_blocking(r, False)
        self.pumps.append(Pump(r, host, close_dst=False))
        return w

    @property
    def term(self) -> str | None:
        return os.environ.get("TERM") if self.pty else None

    def copy_window_size(self) -> None:
        size = terminal_size(0) or terminal_size(1)
        if size and self.master is not None:
            set_window_size(self.master, *size)

    def started(self) -> None:
        """The command holds its ends now; ours must go, or no end of input is ever seen."""
        for fd in self.child_ends:
            os.close(fd)
        self.child_ends = []

    def run(self, helper: int) -> int:
        """Copy until kiwi-exec (our child, pid helper) has ended; returns its status."""
        from .proc import wait_exit_code

        exited = exit_pidfd(helper)
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
        try:
            # Without a pidfd (kernels before 5.3) the helper's exit is its SIGCHLD.
            with SignalPipe(() if exited is not None else (signal.SIGCHLD,)) as signals:
                if exited is None:  # it may have exited before the handler was set: look once
                    signals.handle(signal.SIGCHLD, None)
                with RawTerminal(0 if self.pty else -1):
                    while not self.poll_once(exited, signals, helper):
                        pass
                    for pump in self.pumps:
                        if pump.src != 0:  # the command's output; its input no longer matters
                            pump.drain()
            return wait_exit_code(helper)
        finally:
            if exited is not None:
                os.close(exited)
            for sig, handler in ignored.items():
                signal.signal(sig, handler)

    def poll_once(self, exited: int | None, signals: SignalPipe, helper: int) -> bool:
        """One round of copying; True once the helper has exited."""
        masks = {signals.r: select.POLLIN}
        if exited is not None:
            masks[exited] = select.POLLIN
        for pump in self.pumps:
            if pump.wants_input():
                masks[pump.src] = masks.get(pump.src, 0) | select.POLLIN
            if pump.buffer:
                masks[pump.dst] = masks.get(pump.dst, 0) | select.POLLOUT
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        ready = dict(poller.poll())
        child_exited = False
        if signals.r in ready:
            child_exited = self.handle_signals(signals, helper)
        for pump in self.pumps:
            if pump.wants_input() and ready.get(pump.src, 0) & (
                select.POLLIN | select.POLLHUP | select.POLLERR
            ):
                pump.read()
            elif pump.buffer and ready.get(pump.dst, 0) & (select.POLLOUT | select.POLLERR):
                pump.flush()
        return exited in ready if exited is not None else child_exited

    def handle_signals(self, signals: SignalPipe, helper: int) -> bool:
        """Passes them on; True when a SIGCHLD came and the helper has exited (not reaped:
        wait_exit_code does that)."""
        child_exited = False
        for signum in signals.read():
            if signum == signal.SIGWINCH:
                self.copy_window_size()
            elif signum == signal.SIGCHLD:
                child_exited = (
                    child_exited
                    or os.waitid(os.P_PID, helper, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
                )
            else:  # SIGTERM, SIGHUP: kiwi-exec passes them on to the command
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper, signum)
        return child_exited

    def close(self) -> None:
        owned = [p.dst for p in self.pumps if p.close_dst and p.dst is not None]
        for fd in self.child_ends + self.ours + owned:
            os.close(fd)
        self.child_ends, self.ours, self.pumps = [], [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
