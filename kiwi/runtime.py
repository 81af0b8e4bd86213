"""Start, enter, stop and clean up containers. Never prints.

Start forks twice: stage 1 joins the cgroup and unshares the namespaces;
stage 2 is PID 1 of the new PID namespace, builds the root (rootfs.py),
hardens itself and execs the tiny static init from a sealed memfd. Nothing
of the container is mounted on the host: every mount lives in the container's
own mount namespace, so a killed kiwi leaves no mount behind, and the loop
device (autoclear) frees itself when that namespace goes away.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from .errors import KiwiError
from .store import Store, atomic_write_json, read_json

SHELLS = ["/bin/bash", "/usr/bin/bash", "/bin/zsh", "/usr/bin/zsh", "/usr/bin/fish",
          "/bin/fish", "/bin/ash", "/usr/bin/ash", "/bin/sh", "/usr/bin/sh"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PIDS_MAX = 1024


# --- runtime records ------------------------------------------------------------

def runtime_file(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / "runtime.json"


def mount_file(store: Store, cid: str) -> Path:
    return store.runtime_dir(cid) / "mount.json"


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live init from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def own_identity() -> dict:
    """Who is doing something (a freeze lease, a restore): pid + start time."""
    return {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}


def owner_alive(identity) -> bool:
    """A dead, zombie or recycled pid is not the owner any more."""
    if not isinstance(identity, dict):
        return False
    pid = identity.get("pid")
    return isinstance(pid, int) and pid > 0 and process_start_time(pid) == identity.get("start_time")


def read_runtime(store: Store, cid: str) -> dict | None:
    """The runtime record if its init is alive, else None."""
    try:
        record = read_json(runtime_file(store, cid))
    except (FileNotFoundError, KiwiError, PermissionError):
        return None
    pid = record.get("init_pid")
    if not isinstance(pid, int) or pid <= 1:
        return None
    if process_start_time(pid) != record.get("init_start_time"):
        return None
    return record


def read_mount(store: Store, cid: str) -> str | None:
    try:
        target = read_json(mount_file(store, cid)).get("target")
    except (FileNotFoundError, KiwiError, PermissionError):
        return None
    return target if target and is_mountpoint(target) else None


def is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def status(store: Store, cid: str) -> dict:
    record = read_runtime(store, cid)
    target = read_mount(store, cid)
    if record:
        from . import freeze
        freeze.thaw_if_abandoned(store, cid)
        return {"status": "running", "init_pid": record["init_pid"], "mount_target": target,
                "cgroup": record.get("cgroup_version")}
    if not target and left_running(store, cid):
        return {"status": "stale", "mount_target": None}
    return {"status": "mounted" if target else "stopped", "mount_target": target}


def left_running(store: Store, cid: str) -> bool:
    """Processes of a start that was killed before it wrote its record ('kiwi cleanup' ends them).
    Only a start leaves a runtime folder without a record, so most stopped containers cost one stat."""
    from . import cgroups
    try:
        if not store.runtime_dir(cid).is_dir() or not cgroups.Cgroup.for_container(cid).pids():
            return False
        with store.container_lock(cid, wait=False):
            return True
    except BlockingIOError:
        return False  # a live kiwi is starting it at this moment
    except (OSError, KiwiError):
        return False


# --- start -----------------------------------------------------------------------

def ensure_running(store: Store, cid: str) -> dict:
    record = read_runtime(store, cid)
    if record:
        return record
    return start(store, cid)


def start(store: Store, cid: str) -> dict:
    with store.container_lock(cid):
        record = read_runtime(store, cid)
        if record:
            from . import freeze
            freeze.thaw_if_abandoned(store, cid, locked=True)
            return record
        config = store.container_config(cid)
        if read_mount(store, cid):
            raise KiwiError(f"container {cid} is mounted while stopped; run 'kiwi unmount {cid}' before starting it")
        from . import storage_ops
        storage_ops.finish_interrupted_change(store, config)
        teardown(store, cid)  # whatever a crashed earlier start left
        return Starter(store, config).run()


class Starter:
    """One container start, step by step; undoes its steps if a later one fails."""

    def __init__(self, store: Store, config: dict):
        self.store = store
        self.config = config
        self.cid = config["id"]
        self.cdir = store.container_dir(self.cid)
        self.rdir = store.runtime_dir(self.cid)
        self.separate_net = config.get("network", "separate") != "host"

    def run(self) -> dict:
        from . import cgroups, images
        images.get_image(self.store, self.config["image"])
        self.lower = str(self.store.image_dir(self.config["image"]) / "rootfs")
        self.store.ensure_layout()
        self.rdir.mkdir(mode=0o700, exist_ok=True)
        for sub in ("state", "root"):
            (self.rdir / sub).mkdir(mode=0o700, exist_ok=True)
        self.device = None
        try:
            self.cgroup = cgroups.Cgroup.for_container(self.cid)
            self.cgroup.create()
            self.cgroup.set_limits(self.config.get("memory"), self.config.get("cpu"), DEFAULT_PIDS_MAX)
            if self.separate_net:
                self.prepare_network()
            self.device = self.attach_storage()
            init_pid = self.spawn_init()
            record = {"init_pid": init_pid, "init_start_time": process_start_time(init_pid),
                      "cgroup_version": self.cgroup.version, "network": self.config.get("network"),
                      "started": time.time()}
            if self.separate_net:
                from . import network
                record["veth"] = network.attach_container(self.cid, self.config["ipv4"], init_pid)
            atomic_write_json(runtime_file(self.store, self.cid), record, mode=0o600)
            if getattr(self, "nat_warning", None):
                record["warning"] = self.nat_warning  # for the CLI to show; not persisted
            return record
        except BaseException:
            teardown(self.store, self.cid)
            raise
        finally:
            # The mount inside the container now holds the autoclear loop device.
            if self.device is not None:
                self.device.release()

    def prepare_network(self) -> None:
        from . import network
        with self.store.lock():
            network.ensure_bridge()
            self.nat_warning = network.ensure_nat()

    def attach_storage(self):
        from . import loop, storage
        img = storage.image_path(self.cdir)
        if not img.exists():
            if not storage.folder_path(self.cdir).is_dir():
                raise KiwiError(f"container {self.cid} has no storage (state.img or state/); it is damaged")
            return None
        # Its open fd keeps the autoclear device alive until the mount takes it over.
        return loop.attach(str(img))

    def spawn_init(self) -> int:
        """Fork stage 1; returns the host pid of the container's init once its root is ready."""
        from . import security  # noqa: F401  (imported before the fork, used in stage 2)
        from . import rootfs
        rootfs.prepare_dns_text(host_network=not self.separate_net)
        memfd = security.init_memfd()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(status_r)
                self.stage1(status_w, memfd)  # never returns
            os.close(status_w)
            status_w = -1
            message = read_all(status_r)
            _, wstatus = os.waitpid(pid, 0)
        finally:
            os.close(status_r)
            if status_w >= 0:
                os.close(status_w)
            os.close(memfd)
        return parse_stage_report(message)

    def stage1(self, status_w: int, memfd: int) -> None:
        from . import syscalls as sc
        try:
            self.cgroup.add_pid(os.getpid())
            flags = (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWPID
                     | sc.CLONE_NEWCGROUP)
            if self.separate_net:
                flags |= sc.CLONE_NEWNET
            sc.unshare(flags)
            pid = os.fork()
            if pid == 0:
                self.stage2(status_w, memfd)
            os.write(status_w, f"pid {pid}\n".encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - report, never unwind into the parent's code
            report_and_exit(status_w, e)

    def stage2(self, status_w: int, memfd: int) -> None:
        """PID 1 of the container, still Python: build the root, harden, exec init."""
        from . import rootfs, security
        from . import syscalls as sc
        try:
            os.setsid()
            os.umask(0o022)
            rootfs.make_mounts_private()
            state = rootfs.mount_state(self.device, str(storage_folder(self.cdir)), str(self.rdir / "state"),
                                       discard=self.config.get("storage_sparse", False))
            root = str(self.rdir / "root")
            rootfs.mount_overlay(self.lower, state, root)
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            rootfs.mount_proc_sys_tmp(root_fd)
            rootfs.mount_dev(root_fd)
            os.close(root_fd)
            rootfs.enter_root(root)
            security.mask_proc_paths()
            hostname = self.config.get("name") or self.cid
            sc.sethostname(hostname)
            rootfs.write_identity_files(hostname, self.config.get("ipv4") if self.separate_net else None)
            redirect_stdio_to_null()
            os.write(status_w, b"ready\n")
            security.close_fds_except_stdio(keep=(memfd, status_w))
            security.install_seccomp()
            security.drop_capabilities()
            security.exec_init(memfd)
        except BaseException as e:  # noqa: BLE001
            report_and_exit(status_w, e)


def storage_folder(cdir: Path) -> Path:
    from . import storage
    return storage.folder_path(cdir)


def redirect_stdio_to_null() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def report_and_exit(status_w: int, error: BaseException) -> None:
    text = error.message if isinstance(error, KiwiError) else f"{type(error).__name__}: {error}"
    with contextlib.suppress(OSError):
        os.write(status_w, f"error {text}\n".encode())
    os._exit(1)


def read_all(fd: int) -> str:
    chunks = []
    while True:
        data = os.read(fd, 4096)
        if not data:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(data)


def parse_stage_report(message: str) -> int:
    pid = None
    for line in message.splitlines():
        if line.startswith("error "):
            raise KiwiError(f"starting the container failed: {line[6:]}")
        if line.startswith("pid "):
            pid = int(line[4:])
    if pid is None or "ready" not in message.splitlines():
        raise KiwiError("starting the container failed: its init did not report back")
    return pid


# --- entering a running container --------------------------------------------------

NAMESPACES = ["cgroup", "ipc", "uts", "net", "pid", "mnt"]


def open_namespaces(pid: int, include_net: bool) -> list[tuple[int, str]]:
    fds = []
    for ns in NAMESPACES:
        if ns == "net" and not include_net:
            continue
        fds.append((os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC), ns))
    return fds


def container_env(config: dict, shell: str | None, term: str | None) -> dict:
    hostname = config.get("name") or config["id"]
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
           "LANG": "C.UTF-8", "HOSTNAME": hostname, "TERM": term or "xterm"}
    if shell:
        env["SHELL"] = shell
    return env


def pick_shell(saved: str | None) -> str:
    """Resolved inside the container (we are already in its mount namespace)."""
    candidates = ([saved] if saved else []) + SHELLS
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    if saved:
        raise KiwiError(f"the shell {saved} does not exist in the container; change it with kiwi set --shell")
    raise KiwiError("no shell (bash, zsh, fish, ash, sh) found in the container; give a command after --")


def spawn(store: Store, cid: str, argv: list[str] | None, fds=(0, 1, 2), term: str | None = None,
          session_setup=None) -> int:
    """Fork a process that joins the running container and execs argv (a shell when None).

    Returns the pid of a host-side relay child whose exit status is the
    command's (128+n when killed by signal n). fds are the stdin/stdout/stderr
    for the command; session_setup runs in the command's process before exec
    (e.g. setsid + controlling terminal for sessions).
    """
    # Imported before the fork: after setns the host's files, the frozen bundle
    # included, are out of the child's reach.
    from . import cgroups, security, syscalls  # noqa: F401
    record = read_runtime(store, cid)
    if not record:
        raise KiwiError(f"container {cid} is not running")
    from . import freeze
    freeze.thaw_if_abandoned(store, cid)
    config = store.container_config(cid)
    cgroup = cgroups.Cgroup.for_container(cid)
    ns_fds = open_namespaces(record["init_pid"], config.get("network", "separate") != "host")
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            relay_child(cgroup, ns_fds, config, argv, fds, term, session_setup, err_w)
        os.close(err_w)
        err_w = -1
        message = read_all(err_r)
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
        for fd, _ in ns_fds:
            os.close(fd)
    if message:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise KiwiError(message.strip())
    return pid


def relay_child(cgroup, ns_fds, config, argv, fds, term, session_setup, err_w) -> None:
    """Host-side child: join everything, fork the real command into the PID namespace, relay its status."""
    from . import security
    from . import syscalls as sc
    try:
        # Hold nothing of the caller's (a session daemon's PTY master above all:
        # the shell must see a hangup when that daemon dies).
        security.close_fds_except_stdio(keep=(*fds, err_w, *(fd for fd, _ in ns_fds)))
        # Nothing inside may ptrace or read /proc/<pid>/exe of this host binary.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        cgroup.add_pid(os.getpid())
        for fd, _ in ns_fds:
            sc.setns(fd, 0)
        os.chdir("/")
        pid = os.fork()
        if pid == 0:
            exec_in_container(config, argv, fds, term, session_setup, err_w)
        for fd in {err_w, *(fd for fd, _ in ns_fds), *(fd for fd in fds if fd > 2)}:
            os.close(fd)
        os._exit(relay_status(pid))
    except BaseException as e:  # noqa: BLE001
        report_and_exit(err_w, e)


def relay_status(pid: int) -> int:
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: os.kill(pid, s))
    return wait_exit_code(pid)


def wait_exit_code(pid: int) -> int:
    while True:
        try:
            return exit_code_of(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def exit_code_of(wstatus: int) -> int:
    if os.WIFSIGNALED(wstatus):
        return 128 + os.WTERMSIG(wstatus)
    return os.waitstatus_to_exitcode(wstatus)


def exec_in_container(config, argv, fds, term, session_setup, err_w) -> None:
    from . import security
    try:
        for target, fd in enumerate(fds):
            if fd != target:
                os.dup2(fd, target, inheritable=True)
        for sig in range(1, signal.NSIG):
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        shell = pick_shell(config.get("shell")) if not argv else config.get("shell") or None
        env = container_env(config, shell, term)
        if not argv:
            argv = [shell, "-l"] if shell.endswith(("bash", "zsh")) else [shell]
        if session_setup:
            session_setup()
        security.close_fds_except_stdio(keep=(err_w,))
        security.install_seccomp()
        security.drop_capabilities()
        exec_path(argv, env)
    except BaseException as e:  # noqa: BLE001
        report_and_exit(err_w, e)


def exec_path(argv: list[str], env: dict) -> None:
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise KiwiError(f"{argv[0]}: command not found in the container") from None
    except PermissionError:
        raise KiwiError(f"{argv[0]}: permission denied in the container") from None


def run_attached(store: Store, cid: str, argv: list[str] | None) -> int:
    """Run argv (or a shell) on this terminal; returns its exit status."""
    import sys
    term = os.environ.get("TERM") if sys.stdin.isatty() else None
    pid = spawn(store, cid, argv, term=term)
    # Ctrl-C and Ctrl-\ belong to the command in the container, not to us.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        return wait_exit_code(pid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- stop, teardown, cleanup ---------------------------------------------------------

def wait_for_exit(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != start_time:
            return True
        time.sleep(0.02)
    return process_start_time(pid) != start_time


def stop(store: Store, cid: str, grace: float = 10) -> bool:
    """SIGTERM to the init (it forwards to everyone), then kill after the grace period."""
    from . import cgroups
    with store.container_lock(cid):
        record = read_runtime(store, cid)
        if record:
            from . import freeze
            freeze.thaw_unleased(store, cid)  # a frozen init never sees its SIGTERM
        stop_sessions(store, cid)
        if record:
            pid, start_time = record["init_pid"], record["init_start_time"]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_for_exit(pid, start_time, grace):
                cgroups.Cgroup.for_container(cid).kill_all()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_for_exit(pid, start_time, 5)
        teardown(store, cid)
        return record is not None


def stop_sessions(store: Store, cid: str) -> None:
    with contextlib.suppress(ImportError):
        from . import sessions
        with contextlib.suppress(KiwiError, OSError):
            sessions.stop_all(store, cid)


def teardown(store: Store, cid: str) -> None:
    """Remove what a start set up; safe to call on a partly started or dead container."""
    from . import cgroups
    cgroup = cgroups.Cgroup.for_container(cid)
    if cgroup.exists():
        cgroup.kill_all()
        cgroup.remove()
    with contextlib.suppress(Exception):
        from . import network
        network.detach_container(cid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(runtime_file(store, cid))
    rdir = store.runtime_dir(cid)
    for sub in ("state", "root"):
        with contextlib.suppress(OSError):
            os.rmdir(rdir / sub)
    if not mount_file(store, cid).exists():
        with contextlib.suppress(OSError):
            os.rmdir(rdir)


def forget(store: Store, cid: str) -> None:
    """Before delete: make sure nothing of the container is left running."""
    teardown(store, cid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mount_file(store, cid))
    import shutil
    shutil.rmtree(store.runtime_dir(cid), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.locks_dir / f"{cid}.lock")


def cleanup(store: Store) -> list[str]:
    from . import cleanup as c
    return c.run(store)


# --- settings on a running container ---------------------------------------------------

def apply_live(store: Store, config: dict, changed: list[str]) -> list[str]:
    from . import cgroups
    cid = config["id"]
    if not read_runtime(store, cid):
        return []
    notes = []
    if {"memory", "cpu"} & set(changed):
        cgroups.Cgroup.for_container(cid).set_limits(config.get("memory"), config.get("cpu"), DEFAULT_PIDS_MAX)
        notes.append("memory and cpu limits applied to the running container")
    if "network" in changed:
        notes.append("the network change applies at the next start (kiwi stop, then attach)")
    return notes


def change_storage(store: Store, config: dict, new_size: int | None) -> list[str]:
    from . import storage_ops
    return storage_ops.change_storage(store, config, new_size, running=read_runtime(store, config["id"]) is not None)


# --- host-visible mount ------------------------------------------------------------------

def mount(store: Store, cid: str, target: str) -> str:
    from . import hostmount
    return hostmount.mount(store, cid, target)


def unmount(store: Store, cid: str) -> str:
    from . import hostmount
    return hostmount.unmount(store, cid)
