"""Limits visible inside a container (what lxcfs does for Incus): `free`, /proc/meminfo,
/proc/cpuinfo, /proc/stat, `nproc --all`/`getconf _NPROCESSORS_ONLN` and `uptime` show
the container's memory limit and usage, its CPUs and its own uptime, live.

kiwi-lxfs (cffi_build/lxfs.c) is a tiny read-only FUSE server. Kiwi starts it on
the host side from a sealed memfd (never a host file the container could reach)
while the start's first stage makes the namespaces, in the container's cgroup only: no
namespace of the container, so nothing inside can see or join it. The container's
PID 1, while it builds the root (runtime.Starter.stage2), opens /dev/fuse in the
container's user namespace, mounts the connection in its own mount namespace,
hands it straight to the waiting server over a socket pair and binds the server's
files over the /proc and /sys ones. The server ends when the container's mount
namespace goes (the kernel aborts the connection) or with the cgroup. Without FUSE
the container starts anyway and `kiwi inspect` says why its files are the host's.

sysinfo(2) (busybox `free` and `uptime`) reads no file: kiwi-exec's seccomp filter
hands each call to a second process of the server, kiwi-sysinfo, over a seccomp
listener that kiwi-exec sends it through the socket SOCKET in the container's runtime
folder (host root's, 0700: nothing inside reaches it). Its uptime comes from the
container's time namespace (runtime.start_own_boot_clock). See docs/SECURITY.md.
"""

from __future__ import annotations

import contextlib
import os
from array import array  # here, not in send_fds: stage 2 would import it on its own path

from . import syscalls as sc
from .runstate import SYSINFO_SOCKET as SOCKET

NAME = "kiwi-lxfs"
# The server's file -> the path it covers beneath the container's root.
FILES = (
    ("meminfo", "proc/meminfo"),
    ("cpuinfo", "proc/cpuinfo"),
    ("stat", "proc/stat"),
    ("uptime", "proc/uptime"),
    ("online", "sys/devices/system/cpu/online"),
    ("loadavg", "proc/loadavg"),
    ("swaps", "proc/swaps"),
)
ACTIVE = "active"
NOT_TAKEN = "its server did not take the connection"  # the server's own exit tells why


# --- in the container's PID 1, before its root is sealed ------------------------------


def mount_connection(mountpoint: str, sock, report) -> int | None:
    """Mount a new FUSE connection on mountpoint (in this mount namespace) and send it to
    the server (sock: its socket pair's other end, spawn_server); returns an O_PATH fd
    of the mount's root, or None (reported) when this kernel or machine has no FUSE or
    no server takes it. Call it in the user namespace the mount belongs to: the kernel
    refuses a /dev/fuse opened elsewhere."""
    try:
        fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        report.send("lxfs", f"no FUSE on this host (/dev/fuse: {e.strerror})")
        return None
    try:
        options = f"fd={fuse},rootmode=40000,user_id=0,group_id=0,allow_other"
        flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
        try:
            sc.mount(NAME, mountpoint, "fuse", flags, options)
        except OSError as e:
            report.send("lxfs", f"cannot mount FUSE here ({e.strerror})")
            return None
        # Before anything looks into the mount: the server must have it to answer.
        # With our PID namespace: a privileged container's sysinfo handler runs in it.
        pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            send_fds(sock, b"F", [fuse, pidns])
        except OSError as e:  # kiwi could not start it, or it ended: no one would answer
            report.send("lxfs", f"{NOT_TAKEN} ({e.strerror})")
            return None
        finally:
            os.close(pidns)
        report.send("lxfs", ACTIVE)
    finally:
        os.close(fuse)  # the server's copy alone keeps the connection
    return os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def bind_files(server_root: int, root_fd: int, report) -> None:
    """Bind the server's files over their /proc and /sys paths beneath root_fd (/proc and
    /sys mounted there). When the server does not answer, the container keeps the host's
    files (reported) instead of failing to start."""
    from .rootfs import open_in_root

    bound = []
    try:
        for name, target in FILES:
            try:
                destination = open_in_root(root_fd, target)
            except FileNotFoundError:
                continue  # e.g. no /sys/devices/system/cpu/online on this kernel
            try:
                source = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=server_root)
                try:
                    sc.mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{destination}", None, sc.MS_BIND)
                    bound.append(os.dup(destination))
                finally:
                    os.close(source)
            finally:
                os.close(destination)
    except OSError as e:
        for fd in bound:
            with contextlib.suppress(OSError):
                sc.umount(f"/proc/self/fd/{fd}", sc.MNT_DETACH)
        report.send("lxfs", f"its server did not answer ({e.strerror})")
    finally:
        for fd in bound:
            os.close(fd)
        os.close(server_root)


# --- on the host side ----------------------------------------------------------------


def server_argv(cgroup, procs: int, uid: int, root: str, userns: bool) -> list[str]:
    """Where the server reads the container's memory and CPU figures; procs: how many
    cgroup.procs fds it gets to join; uid: the ids it then runs as; root: an empty folder
    it is confined to; userns: its sysinfo handler joins the container's user namespace."""
    argv = [NAME, "-v", "2" if cgroup.version == "v2" else "1", "-p", str(procs), "-u", str(uid)]
    argv += ["-r", root, "-j", "user" if userns else "pid"]
    for option, controller in (("-m", "memory"), ("-s", "cpuset"), ("-q", "cpu"), ("-a", "cpuacct")):
        directory = cgroup.path(controller)
        if directory is not None:
            argv += [option, str(directory)]
    return argv


def server_uid(idmap_base: int | None) -> int:
    """The container's own nobody (host id <base>+65534): no host account, and the processes
    that have it are in the container's PID namespace, where the server is not. A privileged
    container has no id block: the host's nobody."""
    return NOBODY if idmap_base is None else idmap_base + NOBODY


NOBODY = 65534


def send_fds(sock, data: bytes, fds: list[int]) -> None:
    """socket.send_fds on a socket of _socket: the socket module's enum conversions
    (~1.6 ms) would be imported by every start for this one message (issue 20)."""
    import _socket

    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array("i", fds))])


def listen(rdir) -> int:
    """The socket the sysinfo handler takes seccomp listeners on (host root's only).
    _socket, not socket: see send_fds."""
    import _socket

    path = os.path.join(rdir, SOCKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(64)
        return server.detach()
    finally:
        server.close()


class Server:
    """A kiwi-lxfs on its way: the helper's pid and the read end of its stderr."""

    def __init__(self, pid: int, errors: int):
        self.pid, self.errors = pid, errors

    def finish(self) -> tuple[str, str, list[int] | None]:
        """(files, sysinfo, handler) once the helper has exited: for the first two ACTIVE
        or why not; handler: the sysinfo handler's [pid, start time] (or None), for
        sysinfo_now. The helper exits once it has the connection and has forked the
        servers, or when the container's PID 1 closed its end without sending one."""
        from .proc import read_to_end, wait_exit_code

        try:
            message = read_to_end(self.errors).decode(errors="replace").strip()
        finally:
            os.close(self.errors)
        status = wait_exit_code(self.pid)
        if status != 0:
            reason = f"its server failed: {message or f'exit status {status}'}"
            return reason, reason, None
        # A message with status 0 (no sysinfo handler): the files are served all the same,
        # and kiwi-exec, finding no handler on the socket, leaves sysinfo(2) the host's.
        pid, message = handler_pid(message)
        return ACTIVE, sysinfo_status(message), handler_identity(pid)

    def abandon(self) -> None:
        """The start failed: end the helper now (what it forked is in the container's
        cgroup, which the start's teardown empties)."""
        import signal

        from .proc import wait_exit_code

        os.close(self.errors)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        wait_exit_code(self.pid)


def spawn_server(connection: int, userns: int | None, cgroup, spawn_helper, uid: int, rdir) -> Server | str:
    """Start kiwi-lxfs, which waits on connection (a socket pair's end) for the FUSE
    connection and the PID namespace the container's PID 1 sends (mount_connection);
    returns the Server, or why it did not start. Its sysinfo handler joins the
    container's PID namespace and, unprivileged, its user namespace.

    The helper joins the cgroup (its CPU and memory are the container's, and stop
    kills it with the rest), forks the servers and exits: Server.finish waits for that."""
    from . import security
    from .errors import KiwiError, describe

    opened = []
    try:  # never fails the start: the container then shows the host's files
        memfd = security.helper_memfd(NAME)
        opened.append(memfd)
        procs = cgroup.open_procs_files()
        opened += procs
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(null)
        listener = listen(rdir)
        opened.append(listener)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        opened += [err_r, err_w]
        argv = server_argv(cgroup, len(procs), uid, os.path.join(rdir, "lxfs"), userns is not None)
        # fd 5 is the PID namespace's place until the connection brings it.
        namespaces = [null, null if userns is None else userns]
        pid = spawn_helper(memfd, [null, null, err_w, connection, listener, *namespaces, *procs], argv, {})
        opened.remove(err_r)
    except (OSError, KiwiError) as e:
        return f"its server did not start ({describe(e)})"
    finally:
        for fd in opened:
            os.close(fd)
    return Server(pid, err_r)


HANDLER_PID = "kiwi-lxfs: sysinfo handler pid "


def handler_pid(message: str) -> tuple[int | None, str]:
    """kiwi-lxfs' stderr split into the handler's host pid (its line from lxfs.c
    report_handler_pid, None without one) and the rest."""
    pid, rest = None, []
    for line in message.splitlines():
        number = line.removeprefix(HANDLER_PID)
        if number != line and number.isdigit():
            pid = int(number)
        else:
            rest.append(line)
    return pid, "\n".join(rest)


def handler_identity(pid: int | None) -> list[int] | None:
    """[pid, start time] of the handler, read before anything in the container runs (its
    init waits for us): a later pid reuse cannot pass for it."""
    from .peek import process_start_time

    start = process_start_time(pid) if pid else None
    return None if start is None else [pid, start]


def sysinfo_status(message: str) -> str:
    """ACTIVE, or why the handler did not start from kiwi-lxfs' line on a good exit
    ("kiwi-lxfs: no sysinfo handler: <what>: <error>")."""
    if not message:
        return ACTIVE
    why = message.splitlines()[-1].removeprefix("kiwi-lxfs: ").removeprefix("no sysinfo handler: ")
    return f"its sysinfo handler did not start ({why})"


def sysinfo_now(recorded: str | None, rdir, handler=None, cgroup=None) -> str | None:
    """What a running container's sysinfo(2) is now: the start's verdict, unless the
    handler (handler: its [pid, start time] recorded at start) has ended, been stopped or
    frozen since (root inside may do each, or the OOM killer kill it), or no longer
    takes connections: only it holds the listening socket, so a refused connection
    proves it gone."""
    if recorded != ACTIVE:
        return recorded
    held = handler_held(handler, cgroup)
    if held is not None:
        return held
    from .enter import connect_unix_or_raise

    try:
        fd = connect_unix_or_raise(os.path.join(rdir, SOCKET))
    except BlockingIOError:
        return HANDLER_STUCK
    except (ConnectionRefusedError, FileNotFoundError):
        return HANDLER_GONE
    except OSError:
        return recorded  # cannot tell (e.g. no access): the start's verdict
    os.close(fd)  # it reads end-of-file and drops the connection
    return ACTIVE


def handler_held(handler, cgroup=None) -> str | None:
    """Why the recorded handler cannot answer now (ended, stopped, frozen in a cgroup of
    the container's, cgroups.Cgroup), or None when it can as far as its process shows
    (or no handler was recorded: an older Kiwi's start). A stopped handler still accepts
    connections (the backlog): only its state tells, while every sysinfo(2) inside
    waits for it."""
    if not (isinstance(handler, list) and len(handler) == 2 and all(type(n) is int for n in handler)):
        return None
    from .peek import stat_fields

    pid, start = handler
    fields = stat_fields(pid)
    if not fields or fields[0] == b"Z" or int(fields[19]) != start:
        return HANDLER_GONE
    if fields[0] in (b"T", b"t"):
        return HANDLER_STOPPED
    if cgroup is not None and cgroup.holds_frozen(pid):
        return HANDLER_FROZEN
    return None


HANDLER_GONE = (
    "its sysinfo handler has ended (killed, or died): sysinfo(2) fails with ENOSYS "
    "in the commands it served, and shows the host's figures in those started since"
)
HANDLER_STUCK = (
    "its sysinfo handler takes no new commands (stopped from inside, or its backlog is "
    "full): commands started now show the host's figures"
)
HANDLER_STOPPED = (
    "its sysinfo handler is stopped (a signal from inside, e.g. SIGSTOP): sysinfo(2) waits "
    "in every command inside until it gets SIGCONT or the container stops"
)
HANDLER_FROZEN = (
    "its sysinfo handler is frozen (a cgroup freeze from inside): sysinfo(2) waits in every "
    "command inside until it is thawed or the container stops"
)
