"""Entering a running container: kiwi-exec, started from a sealed memfd, joins the
container's cgroups and namespaces, confines itself and executes the command.

With os, fcntl and signal alone (no json, pathlib, re or the cffi module): both
runtime.spawn and the everyday `kiwi attach c -- cmd` (quickattach.py) enter
through enter_container, whose imports are a third of a warm attach (issue 20).
"""

from __future__ import annotations

import os

from .errors import EXIT_ERROR, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, KiwiError
from .fstree import copy_range
from .peek import process_start_time
from .proc import read_to_end, wait_exit_code

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# kiwi-exec joins them in this order: a user namespace first, the mount namespace last.
NAMESPACES = ["user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt"]
HELPER_FD_BASE = 64  # spawn_helper moves the helper's fds above this before placing them
EXEC_NAME = "kiwi-exec"


def helper_candidates(name: str) -> list[str]:
    """Where a static helper (kiwi-init, kiwi-exec) may be: beside this module; in a
    PyInstaller build also under _MEIPASS."""
    import sys

    candidates = [os.path.join(os.path.dirname(os.path.realpath(__file__)), name)]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates += [os.path.join(bundle, "kiwi", name), os.path.join(bundle, name)]
    return candidates


def find_helper(name: str) -> str | None:
    """The first of helper_candidates that is a file; None when there is none."""
    return next((path for path in helper_candidates(name) if os.path.isfile(path)), None)


class Entry:
    """What enter_container needs of a container start: its cgroup.procs files, whether
    it has its own network namespace, the sysinfo handler's socket, the seccomp
    program (a function of whether the handler answers), kiwi-exec's capability mask
    (hex), and kiwi-exec's own file."""

    def __init__(self, procs, own_net, handler_socket, program, caps, helper, command_procs=()):
        self.procs, self.own_net, self.handler_socket = procs, own_net, handler_socket
        self.program, self.caps, self.helper = program, caps, helper
        self.command_procs = list(command_procs)  # kiwi-exec -C: the command's alone


def enter_container(
    entry: Entry,
    init_pid: int,
    init_start_time: int | None,
    argv: list[str],
    env: dict,
    options: list[str],
    fds,
    tty: bool,
) -> int:
    """Start kiwi-exec to run argv in the container of init_pid (started at init_start_time,
    its runtime record's); returns its pid (our child) once the command runs, or raises
    what kiwi-exec reported. options: kiwi-exec's own beyond the fds (-w, -u...), env:
    the command's whole environment."""
    opened: list[int] = []
    try:
        cgroup_fds = open_procs_files(entry.procs)
        opened += cgroup_fds
        command_fds = open_procs_files(entry.command_procs)
        opened += command_fds
        ns_fds = open_init_namespaces(init_pid, init_start_time, entry.own_net)
        opened += ns_fds
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        opened += [err_r, err_w]
        handler = connect_unix(entry.handler_socket) if entry.handler_socket else None
        opened += [handler] if handler is not None else []
        program = seccomp_pipe(entry.program(handler is not None))
        opened.append(program)
        memfd = sealed_copy(entry.helper, os.path.basename(entry.helper))
        opened.append(memfd)
        # kiwi-exec's fds: 0-2 stdio, 3 error pipe, 4 seccomp, then cgroups, namespaces, handler.
        layout = [*fds, err_w, program, *cgroup_fds, *ns_fds, *command_fds]
        head = ["-k", entry.caps]
        head += [f"-c{5 + i}" for i in range(len(cgroup_fds))]
        head += [f"-n{5 + len(cgroup_fds) + i}" for i in range(len(ns_fds))]
        head += [f"-C{5 + len(cgroup_fds) + len(ns_fds) + i}" for i in range(len(command_fds))]
        if handler is not None:
            head += [f"-s{len(layout)}"]
            layout.append(handler)
        head += ["-t"] if tty else []
        pid = spawn_helper(memfd, layout, [os.path.basename(entry.helper), *head, *options, "--", *argv], env)
        opened.remove(err_w)
        os.close(err_w)
        message = read_to_end(err_r).decode(errors="replace")
    finally:
        for fd in opened:
            os.close(fd)
    if message:
        status = wait_exit_code(pid)
        error = KiwiError(message.strip().splitlines()[-1])
        error.exit_code = status if status in (EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND) else EXIT_ERROR
        raise error
    return pid


def open_procs_files(paths: list[str]) -> list[int]:
    """Where a process joins the container's cgroup by writing "0" (kiwi-exec, kiwi-lxfs,
    start stage 1: nothing of the host side needs to be in the container's cgroup), one
    per cgroup.procs path given: open_join_file. The writer must be single-threaded."""
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(open_join_file(path))
            refuse_container_made(fds[-1], path)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise KiwiError(
            f"cannot open the container's cgroup {os.path.dirname(path)}: {exc.strerror}"
        ) from exc
    except KiwiError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def refuse_container_made(fd: int, path: str) -> None:
    """Kiwi joins only cgroups host root made: a cgroup.procs the container's root owns
    belongs to a cgroup it made in place of Kiwi's leaf (a delegated container may remove
    the leaf the command joins) and may have frozen or limited, to hang or kill what
    enters. Checked on the open file: a cgroup removed and remade after the open is
    another file."""
    if os.fstat(fd).st_uid != 0:
        raise KiwiError(
            f"the container made the cgroup {os.path.dirname(path)} itself; "
            "restart it (kiwi stop, kiwi start) to attach"
        )


def open_join_file(procs: str) -> int:
    """The join file of the cgroup whose cgroup.procs is procs, open for writing: on a v1
    hierarchy `tasks` beside it, on v2 (which has none) procs itself. "0" written to
    either moves a single-threaded writer whole; but every write to cgroup.procs takes
    the kernel's cgroup_threadgroup_rwsem for writing, which waits an RCU grace period
    (6-11 ms on a 2-core host, in each start and attach), while "0" to `tasks` moves the
    writer's own thread under cgroup_mutex alone (kernel/cgroup/cgroup.c,
    cgroup_procs_write_start): 0.1 ms (issue 20)."""
    try:
        return os.open(os.path.join(os.path.dirname(procs), "tasks"), os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.open(procs, os.O_WRONLY | os.O_CLOEXEC)


def open_init_namespaces(pid: int, start_time: int | None, include_net: bool) -> list[int]:
    """open_namespaces of the init (pid, start_time), and of nobody else: a pid freed and
    reused by another process between a caller's check and the opens would hand us that
    process's namespaces. A pidfd taken before the start time is checked stays that
    process's; once the files are open, it must not have exited. A kernel without
    pidfd_open (< 5.3): the start time checked after the opens (the init held the pid
    all along if it still holds it then)."""
    pidfd = pin_process(pid, start_time)
    try:
        fds = open_namespaces(pid, include_net)
        if has_exited(pidfd) if pidfd is not None else process_start_time(pid) != start_time:
            for fd in fds:
                os.close(fd)
            raise KiwiError(f"the container's init (pid {pid}) exited while kiwi entered it")
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return fds


def pin_process(pid: int, start_time: int | None) -> int | None:
    """A pidfd of the process (pid, start_time); None on a kernel without pidfd_open.
    KiwiError when pid is no longer that process."""
    gone = KiwiError(f"the container's init (pid {pid}) has exited: the container is not running")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise gone from None
    except OSError:
        return None  # ENOSYS: open_init_namespaces checks the start time afterwards
    if process_start_time(pid) != start_time:
        os.close(pidfd)
        raise gone
    return pidfd


def has_exited(pidfd: int) -> bool:
    """Whether the pidfd's process has exited (the kernel makes the pidfd readable then)."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def open_namespaces(pid: int, include_net: bool) -> list[int]:
    fds = []
    try:
        for ns in NAMESPACES:
            if ns == "net" and not include_net:
                continue
            try:
                fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if ns == "time":
                    continue  # a kernel without time namespaces
                raise
            fds.append(fd)
            if ns in ("user", "time") and os.fstat(fd).st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino:
                fds.pop()  # the host's own: setns into it would fail
                os.close(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def container_env(config: dict, shell: str | None, term: str | None) -> dict:
    hostname = config.get("name") or config["id"]
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "LANG": "C.UTF-8",
        "HOSTNAME": hostname,
        "TERM": term or "xterm",
    }
    if shell:
        env["SHELL"] = shell
    return env


def connect_unix(path: str) -> int | None:
    """A connection to a Unix stream socket (close-on-exec, non-blocking), or None when
    nobody listens there."""
    try:
        return connect_unix_or_raise(path)
    except OSError:
        return None


def connect_unix_or_raise(path: str) -> int:
    """connect_unix's connection; raises what the connect met (BlockingIOError: a full
    backlog). _socket, not socket: its enums cost more than an attach's work."""
    import _socket

    client = _socket.socket(
        _socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
    )
    try:
        client.connect(path)
    except OSError:
        client.close()
        raise
    return client.detach()


def seccomp_pipe(program: bytes) -> int:
    """A pipe holding the filter (far below a pipe's capacity); returns its read end."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(w, program)
    finally:
        os.close(w)
    return r


def sealed_copy(path: str, name: str) -> int:
    """A sealed, close-on-exec memfd holding the file at path (a static helper).

    Executing from the memfd means nothing in the container ever sees or can
    rewrite a host file of Kiwi (the runc CVE-2019-5736 class of attack): the
    /proc/<pid>/exe of the helper is the memfd, and its seals refuse writes.
    """
    import fcntl

    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            size = os.fstat(src).st_size
            if copy_range(src, fd, 0, size) != size:
                import errno

                raise OSError(errno.EIO, f"{path} shrank while it was copied")
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(src)
    return fd


def spawn_helper(memfd: int, layout: list[int], argv: list[str], env: dict) -> int:
    """posix_spawn the sealed helper with layout[i] as its fd i (nothing else is inherited).

    Its /proc/self/exe is the memfd, never a host file. The fds are first moved
    above every target, so no placement overwrites a source still to be placed, nor
    the memfd itself (it is executed after the placements)."""
    import fcntl
    import signal

    high = []
    try:
        for fd in [memfd, *layout]:
            high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HELPER_FD_BASE))
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high[1:])]
        return os.posix_spawn(
            f"/proc/self/fd/{high[0]}",
            argv,
            env,
            file_actions=actions,
            setsigmask=(),
            setsigdef=signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP},
        )
    finally:
        for fd in high:
            os.close(fd)
