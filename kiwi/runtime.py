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
from collections.abc import Callable
from pathlib import Path

from .enter import Entry, container_env, enter_container, spawn_helper
from .errors import KiwiError
from .files import remove_temp_files
from .layout import boot_id
from .proc import Background, process_start_time
from .runstate import SYSINFO_SOCKET, container_cgroup, mount_file, read_mount, read_runtime, runtime_file
from .stopping import EarlyBridgeRelease, finish_beside, only_init_and_helpers, signal_init, terminate
from .store import Store, atomic_write_json

SHELLS = [
    "/bin/bash",
    "/usr/bin/bash",
    "/bin/zsh",
    "/usr/bin/zsh",
    "/usr/bin/fish",
    "/bin/fish",
    "/bin/ash",
    "/usr/bin/ash",
    "/bin/sh",
    "/usr/bin/sh",
]
# The record start() returns holds its enter.Entry under this key (never written to runtime.json).
START_ENTRY = "start_entry"
# Mount points of a start, in its own mount namespaces: the state, the merged root,
# (unprivileged) the idmapped image and state, and the limits server's files (lxfs.py).
RUNTIME_SUBDIRS = ("state", "root", "image", "data", "lxfs")


# --- runtime records (kiwi/runstate.py) -------------------------------------------------


def status(store: Store, cid: str) -> dict:
    record = read_runtime(store, cid)
    target = read_mount(store, cid)
    if record:
        from . import freeze

        freeze.thaw_if_abandoned(store, cid)
        return {
            "status": "running",
            "init_pid": record["init_pid"],
            "mount_target": target,
            "cgroup": record.get("cgroup_version"),
        }
    if not target and left_running(store, cid):
        return {"status": "stale", "mount_target": None}
    return {"status": "mounted" if target else "stopped", "mount_target": target}


def left_running(store: Store, cid: str) -> bool:
    """Processes of a start that was killed before it wrote its record ('kiwi cleanup' ends them).
    Only a start leaves a runtime folder without a record, so most stopped containers cost one stat."""
    try:
        if not killed_start_left(store, cid):
            return False
        with store.container_lock(cid, wait=False):
            return True
    except BlockingIOError:
        return False  # a live kiwi is starting it at this moment


def killed_start_left(store: Store, cid: str) -> bool:
    """A runtime folder without a live record, and processes in the container's cgroup: what
    a killed start leaves (its init may run on, its overlay mounted). Under the container's
    lock that is certain (left_running tells it from a start under way)."""
    try:
        return store.runtime_dir(cid).is_dir() and bool(container_cgroup(store, cid).pids())
    except (OSError, KiwiError):
        return False


def refuse_if_left_running(store: Store, cid: str) -> None:
    """Under the container's lock, stopped: a second overlay on the upper folder that a
    killed start's processes still have mounted would corrupt it (cp, mount)."""
    if killed_start_left(store, cid):
        raise KiwiError(
            f"container {cid} has processes left by a killed start; run kiwi cleanup first (or start it)"
        )


# --- start -----------------------------------------------------------------------


def ensure_running(store: Store, cid: str) -> dict:
    record = read_runtime(store, cid)
    if record:
        return record
    return start(store, cid)


def start(store: Store, cid: str) -> dict:
    """Start the container (its runtime record), without the cyclic garbage collector: a
    start allocates much and frees little, and the stages it forks would copy every page
    a collection touched (issue 20). The collector is as it was after."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return start_with_lock(store, cid)
    finally:
        if enabled:
            gc.enable()


def start_with_lock(store: Store, cid: str) -> dict:
    with store.container_lock(cid):
        record = read_runtime(store, cid)
        if record:
            from . import freeze

            freeze.thaw_if_abandoned(store, cid, locked=True)
            return record
        config = store.container_config(cid)
        if read_mount(store, cid):
            raise KiwiError(
                f"container {cid} is mounted while stopped; run 'kiwi unmount {cid}' before starting it"
            )
        from . import storage_ops

        storage_ops.finish_interrupted_change(store, config)
        # Whatever a crashed earlier start left; what cannot go, the start itself trips over.
        # Its veth and port filter go after stage 1 is forked (Starter.forget_stale_network).
        # One Cgroup for both: finding the hierarchies reads and parses the mount table.
        cgroup = container_cgroup(store, cid)
        teardown(store, cid, release_network=False, network=False, cgroup=cgroup)
        return Starter(store, config, cgroup).run()


class Starter:
    """One container start, step by step; undoes its steps if a later one fails."""

    def __init__(self, store: Store, config: dict, cgroup):
        self.store = store
        self.config = config
        self.cgroup = cgroup  # cgroups.Cgroup of the container (start() finds it, run() makes it)
        self.cid = config["id"]
        self.cdir = store.container_dir(self.cid)
        self.rdir = store.runtime_dir(self.cid)
        self.separate_net = config.get("network", "separate") != "host"

    def run(self) -> dict:
        from . import images

        images.get_image(self.store, self.config["image"])
        self.lower = str(self.store.image_dir(self.config["image"]) / "rootfs")
        self.store.ensure_layout()
        self.rdir.mkdir(mode=0o700, exist_ok=True)
        for sub in RUNTIME_SUBDIRS:
            (self.rdir / sub).mkdir(mode=0o700, exist_ok=True)
        self.device = None
        self.userns = None
        self.pending_userns = None
        self.cgroup_delegated = False
        self.holds = contextlib.ExitStack()
        try:
            self.pending_userns = self.fork_user_namespace()
            self.cgroup.create()
            self.cgroup.set_limits(self.config.get("memory"), self.config.get("cpu"))
            if self.separate_net:
                from . import ipam

                self.claim_address(ipam)  # before the fork: stage 2 writes it into /etc/hosts
            self.device = self.attach_storage()
            self.userns = self.open_user_namespace()
            self.cgroup_delegated = self.delegate_cgroup()
            init_pid = self.spawn_init()
            # Only now: building the root opened the loop device. Nothing of the
            # image has run yet (kiwi-init is ours), and everything that enters
            # later joins this cgroup.
            from . import rootfs

            self.cgroup.restrict_devices(rootfs.ALLOWED_DEVICES)
            record = {
                "init_pid": init_pid,
                "init_start_time": self.init_start_time,  # Starter.identify_init's
                "boot": boot_id(),  # layout.live_init: the record outlives a host crash
                "cgroup_version": self.cgroup.version,
                "network": self.config.get("network"),
                "started": time.time(),
                "lxfs": self.lxfs,
                "sysinfo": self.sysinfo or self.lxfs,  # the handler's own verdict, else the server's
                "sysinfo_handler": self.sysinfo_handler,  # [pid, start time]: inspect checks it
                "folder": self.store.folder_id(),
                "root": self.store.real_root,
            }
            if self.separate_net:
                from . import network

                record["veth"] = self.veth
                record["mac"] = network.container_mac(self.config["ipv4"])
            if self.enter is not None:
                record["enter"] = self.enter
            self.holds.close()
            # Not fsynced (~2-20 ms): the record describes processes that a host crash ends too.
            atomic_write_json(runtime_file(self.store, self.cid), record, mode=0o600, durable=False)
            if getattr(self, "nat_warning", None):
                record["warning"] = self.nat_warning  # for the CLI to show; not persisted
            if self.entry is not None:
                record[START_ENTRY] = self.entry  # for spawn; not persisted
            return record
        except BaseException:
            # The start's own error tells.
            teardown(self.store, self.cid, release_network=False, cgroup=self.cgroup)
            raise
        finally:
            self.holds.close()
            if self.pending_userns is not None:
                self.pending_userns.close()
            # The mount inside the container now holds the autoclear loop device.
            if self.device is not None:
                self.device.release()
            if self.userns is not None:
                os.close(self.userns)  # the init's processes keep the namespace

    def forget_stale_network(self) -> None:
        """A crashed start's veth and port filter (start's teardown left them), before the
        port filter is made anew; what cannot go, the start trips over, as in teardown."""
        teardown_network(self.store, self.cid, False, [])

    def prepare_network(self) -> None:
        """The bridge, NAT and the container's anti-spoofing chain (its address claimed already)."""
        from . import network

        # Until our veth is on the bridge, no other folder's stop or cleanup may remove it.
        self.holds.enter_context(network.bridge_in_use())
        with self.store.lock():
            network.ensure_bridge()
            # The container's anti-spoofing chain in the same nft run: one process less.
            port = network.container_port_filter(self.cid, self.config["ipv4"], self.store.folder_id())
            self.nat_warning = network.ensure_nat(port)

    def claim_address(self, ipam) -> None:
        """Lease the recorded address host-wide; a new one if another folder holds it
        (a copied folder), recorded in the config before anything uses it."""
        ipv4 = ipam.claim(self.store, self.cid, self.config.get("ipv4"))
        if ipv4 != self.config.get("ipv4"):
            from . import containers

            self.config["ipv4"] = ipv4
            containers.save_config(self.store, self.config)

    def fork_user_namespace(self):
        """idmap.PendingUserNamespace of an unprivileged container: its child unshares while
        the cgroup, the limits and the loop device are made (issue 20)."""
        from . import idmap

        return None if idmap.is_privileged(self.config) else idmap.PendingUserNamespace()

    def open_user_namespace(self) -> int | None:
        """The container's own user namespace (None when privileged), its id block leased."""
        from . import idmap

        if self.pending_userns is None:
            return None
        claimed = idmap.claim(self.store, self.cid, self.config["idmap"])
        if claimed != self.config["idmap"]:
            from . import containers

            self.config["idmap"] = claimed
            containers.save_config(self.store, self.config)
        try:
            return self.pending_userns.finish(claimed["base"])
        finally:
            self.pending_userns.close()
            self.pending_userns = None

    def delegate_cgroup(self) -> bool:
        """cgroup v2 and unprivileged: the container's root gets its cgroup (not its limits)
        and sees it at /sys/fs/cgroup. Privileged root stays out: it could raise its limits."""
        from . import idmap

        base = idmap.base_of(self.config)
        return base is not None and self.cgroup.delegate(base, base)

    def build_idmapped_root(self) -> None:
        """Stage 1 of an unprivileged container, still root of the host: the mounts only
        real root may make, in a mount namespace of its own. The state (ext4 image or
        folder) and the shared image are idmapped, so the container's ids land on
        disk as the container sees them; the overlay over them is then copied into
        the container's mount namespace by the unshare that follows."""
        from . import idmap, rootfs
        from . import syscalls as sc

        userns, base = self.userns, idmap.base_of(self.config)
        assert userns is not None and base is not None  # only unprivileged containers get here
        sc.unshare(sc.CLONE_NEWNS)
        rootfs.make_mounts_private()
        state = self.mount_state()
        rootfs.mount_idmapped(self.lower, str(self.rdir / "image"), userns)
        rootfs.mount_idmapped(state, str(self.rdir / "data"), userns)
        image, data = str(self.rdir / "image"), str(self.rdir / "data")
        rootfs.mount_overlay_as(image, data, str(self.rdir / "root"), base)

    def mount_state(self) -> str:
        """The container's upper/work: its ext4 image (sparse: discard), or its state/ folder."""
        from . import rootfs

        return rootfs.mount_state(
            self.device,
            str(storage_folder(self.cdir)),
            str(self.rdir / "state"),
            discard=self.config.get("storage_sparse", False),
        )

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
        import _socket  # not socket: its enum conversions (~1.6 ms) would delay the fork

        # Before the fork: stage 1 and 2 use them (lxfs: stage 2 and this process after the
        # fork, one import instead of two).
        from . import lxfs, proc, rootfs, security  # noqa: F401

        rootfs.prepare_dns_text(host_network=not self.separate_net)
        memfd = security.init_memfd()
        # Stage 2 sends the FUSE connection over this pair straight to the limits server.
        server_end, stage_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        server = None
        received: list = []
        self.init_start_time: int | None = None  # identify_init's
        self.init_netns: int | None = None
        try:
            child = proc.Child(self.stage1, memfd, stage_end, server_end)
            stage_end.close()
            from . import netlink  # after the fork: only this process uses it

            netlink.park_releases()  # until the veth exists: its registration would wait for them
            try:
                # While stage 1 makes the namespaces (issue 20): nothing of the stages uses
                # them, and a failure here ends the start as one of connect_network does.
                self.forget_stale_network()
                if self.separate_net:
                    self.prepare_network()
                # Before stage 2 mounts the connection.
                server = self.start_limits_server(server_end)
                server_end.close()  # the server's copy alone: if it ends, stage 2's send fails
                received += stage_reports(child, until="pid")
                pid = dict(received).get("pid")
                # While stage 2 still builds the root: its network namespace exists.
                try:
                    self.identify_init(pid)
                    self.connect_network(pid)
                    netlink.release_parked()
                    self.prepare_record()
                except Exception:
                    # Stage 2 may have failed meanwhile, its network namespace (and the veth
                    # pair with it) gone: then its own error is the cause to tell.
                    stage_reports(child)
                    raise
                received += stage_reports(child)  # to EOF: init's exec closes the last end
            except BaseException:
                if server is not None and not isinstance(server, str):
                    server.abandon()
                raise
            finally:
                netlink.release_parked()
                child.close()
                child.wait()  # the outcome is in the reports
                self.close_init_netns()
        finally:
            os.close(memfd)
            server_end.close()
            stage_end.close()
        self.limits_outcome(server, received)
        reports = dict(received)
        if not isinstance(reports.get("pid"), int) or "ready" not in reports:
            raise KiwiError("starting the container failed: its init did not report back")
        if process_start_time(reports["pid"]) != self.init_start_time:
            raise KiwiError("starting the container failed: its init ended as it started")
        return reports["pid"]

    def close_init_netns(self) -> None:
        if self.init_netns is not None:
            os.close(self.init_netns)
            self.init_netns = None

    def identify_init(self, pid) -> None:
        """Stage 2 (the init to be) by the pid stage 1 reported: its start time, for the record,
        and with a network of its own its network namespace, held open (self.init_netns) for
        connect_network. The pid is stage 2's only while it is in the container's cgroup,
        where nothing but the start's own processes are: had stage 2 ended (a hostile image
        can make it fail) and its pid gone to another process (pid_max may be 32768), the veth
        and the record would be that process's. PID 1 of a pid namespace too: on cgroup v1
        the limits server's processes share the cgroup, in the host's network namespace."""
        if not isinstance(pid, int):
            return  # stage 1 failed: reading on says why
        from .peek import is_namespace_init

        started = process_start_time(pid)
        try:
            if self.separate_net:
                self.init_netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            ours = pid in self.cgroup.pids() and is_namespace_init(pid)
        except OSError:
            ours = False
        if started is None or not ours or process_start_time(pid) != started:
            raise KiwiError("starting the container failed: its init ended before it was connected")
        self.init_start_time = started

    def start_limits_server(self, connection):
        """The limits server (lxfs.spawn_server), waiting on connection for what stage 2
        sends; or why it did not start."""
        from . import idmap, lxfs

        uid, rdir = lxfs.server_uid(idmap.base_of(self.config)), str(self.rdir)
        return lxfs.spawn_server(connection.fileno(), self.userns, self.cgroup, spawn_helper, uid, rdir)

    def limits_outcome(self, server, received: list) -> None:
        """self.lxfs, self.sysinfo, self.sysinfo_handler: what the start records of the
        limits server (each lxfs.ACTIVE or why not; the sysinfo handler's [pid, start
        time]), from the server and from stage 2's "lxfs" reports (its first says whether
        it sent the connection, a later one that the files could not be bound)."""
        from . import lxfs

        said = [value for kind, value in received if kind == "lxfs"]
        if isinstance(server, str):  # it never ran: that is the cause, whatever stage 2 saw
            self.lxfs, self.sysinfo, self.sysinfo_handler = server, None, None
            return
        outcome = server.finish()  # its exit, also when stage 2 sent nothing (end of file)
        files, self.sysinfo, self.sysinfo_handler = outcome
        if not said or said[0] != lxfs.ACTIVE:
            self.sysinfo, self.sysinfo_handler = None, None
            if said and said[0].startswith(lxfs.NOT_TAKEN) and files != lxfs.ACTIVE:
                self.lxfs = files  # the server ended first: why, in its own words
            else:  # no FUSE here: stage 2 tells why
                self.lxfs = said[0] if said else "the container's init sent no FUSE connection"
            return
        # Why the container shows the host's figures (the server's own reason first), or ACTIVE.
        self.lxfs = files if files != lxfs.ACTIVE else said[-1]

    def prepare_record(self) -> None:
        """While stage 2 still builds the root (issue 20), its veth in place: the entry facts
        the record keeps (runtime.entry_facts; none for a delegated cgroup, whose join leaf
        is the container's to remove), and the modules the attach that follows imports."""
        self.enter = self.entry = None
        if not self.cgroup_delegated:
            entry = exec_entry(self.store, self.cid, {}, self.config, self.cgroup)
            # Both seccomp programs made once: for the record and for the attach that follows.
            programs = {notify: entry.program(notify) for notify in (False, True)}
            entry.program = programs.__getitem__
            self.enter, self.entry = entry_facts(entry), entry
        from . import freeze, stdio  # noqa: F401
        from .oci import config  # noqa: F401

    def connect_network(self, pid) -> None:
        """The container's eth0 on the bridge (self.veth: the host side), in the network
        namespace stage 1 made for pid; its anti-spoofing chain is in place already."""
        self.veth = None
        if not self.separate_net or not isinstance(pid, int):
            return  # no pid: stage 1 failed, and reading on says why
        from . import network

        self.veth = network.attach_container(
            self.cid,
            self.config["ipv4"],
            pid,
            self.store.folder_id(),
            filtered=self.nat_warning is None,
            netns_fd=self.init_netns,  # stage 2's, whatever has the pid by now
        )

    def stage1(self, report, memfd: int, sock, server_end) -> None:
        from . import proc
        from . import syscalls as sc

        # The server's end, which the fork copied: were it kept, a server that ended (or
        # was never started) before it took the FUSE connection stage 2 sent would leave
        # that connection alive in this queue, and stage 2 hung for good on its own mount,
        # holding the container's lock.
        server_end.close()
        self.cgroup.join()
        if self.userns is not None:
            self.build_idmapped_root()
            join_user_namespace(self.userns)
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP
        if self.separate_net:
            flags |= sc.CLONE_NEWNET
        sc.unshare(flags)
        start_own_boot_clock()
        pid = os.fork()
        if pid == 0:
            proc.child_main(report, self.stage2, memfd, sock)
        report.send("pid", pid)

    def stage2(self, report, memfd: int, sock) -> None:
        """PID 1 of the container, still Python: build the root, harden, exec init."""
        from . import lxfs, proc, rootfs, security
        from . import syscalls as sc

        os.setsid()
        os.umask(0o022)
        root = str(self.rdir / "root")
        if self.userns is None:
            rootfs.make_mounts_private()
            state = self.mount_state()
            rootfs.mount_overlay(self.lower, state, root)
        else:
            rootfs.bind_to_itself(root)
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        limits = lxfs.mount_connection(str(self.rdir / "lxfs"), sock, report)
        sock.close()
        if self.userns is not None:
            become_namespace_root()  # from here on, only paths beneath root_fd
        rootfs.mount_proc_sys_tmp(root_fd, host_sysfs=self.userns is not None and not self.separate_net)
        if self.cgroup_delegated:
            rootfs.mount_own_cgroup(root_fd)
        rootfs.mount_dev(root_fd, bind_nodes=self.userns is not None)
        # Beneath root_fd, before the limits' binds: the server kiwi started has that much
        # longer to answer their first lookup (issue 20).
        security.mask_proc_paths(f"/proc/self/fd/{root_fd}")
        hostname = self.config.get("name") or self.cid
        sc.sethostname(hostname)
        ipv4 = self.config.get("ipv4") if self.separate_net else None
        rootfs.write_identity_files(hostname, ipv4, root_fd)
        if limits is not None:  # last before the pivot (its mount is under the old root)
            lxfs.bind_files(limits, root_fd, report)
        rootfs.enter_root(root_fd)
        os.close(root_fd)
        proc.stdio_to_devnull()
        report.send("ready")
        security.close_fds_except_stdio(keep=(memfd, report.fd))
        security.install_seccomp()
        security.drop_capabilities()
        security.exec_init(memfd)


def start_own_boot_clock() -> None:
    """A time namespace for the children to come whose CLOCK_BOOTTIME starts near 0:
    sysinfo(2)'s uptime (busybox uptime), /proc/uptime and the clock itself count from
    the container's start. The offset is the host's boot time, whole seconds (the kernel
    refuses one that makes the clock negative); it must be written before the first
    process enters. A kernel without time namespaces keeps the host's clock."""
    from . import syscalls as sc

    try:
        sc.unshare(sc.CLONE_NEWTIME)
    except OSError:
        return  # no CONFIG_TIME_NS: the uptime stays the host's
    host_boot = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    with open("/proc/self/timens_offsets", "w") as offsets:
        offsets.write(f"boottime {-host_boot} 0\n")


def stage_reports(child, until: str | None = None) -> list:
    """The start stages' reports (proc.Child.read); what they raise says the start failed."""
    try:
        return child.read(until=until)
    except KiwiError as e:
        raise e.within("starting the container failed") from None


def join_user_namespace(userns: int) -> None:
    """Join the container's user namespace: the namespaces unshared after this are
    owned by it, so its root's capabilities end there. The ids stay the host's 0
    (unmapped inside) until become_namespace_root: path lookups through Kiwi's own
    0700 folders still pass as their owner."""
    from . import syscalls as sc

    sc.setns(userns, sc.CLONE_NEWUSER)


def become_namespace_root() -> None:
    """uid and gid 0 of the user namespace: host ids <base>."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def storage_folder(cdir: Path) -> Path:
    from . import storage

    return storage.folder_path(cdir)


# --- entering a running container --------------------------------------------------
#
# Kiwi itself never joins a container: kiwi-exec (cffi_build/exec.c), started
# from a sealed memfd, joins the cgroup and the namespaces, forks the command
# into the PID namespace, confines it and executes it. The container therefore
# never sees a process whose /proc/<pid>/exe is a host file. The entering itself
# is enter.py's, which the everyday attach (quickattach.py) reaches without this module.


def running_record(store: Store, cid: str) -> dict:
    record = read_runtime(store, cid)
    if not record:
        raise KiwiError(f"container {cid} is not running")
    return record


def image_exec_defaults(store: Store, config: dict, env: dict) -> list[str]:
    """An OCI image's Env (into env) and WorkingDir (kiwi-exec options)."""
    from .oci.config import exec_defaults

    return exec_defaults(store, config, env)


def pick_shell(init_pid: int, saved: str | None) -> str:
    """The first executable shell, looked up beneath the container's root (never on the host)."""
    from .rootfs import is_executable_in

    candidates = ([saved] if saved else []) + SHELLS
    root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in candidates:
            if is_executable_in(root, path):
                return path
    finally:
        os.close(root)
    if saved:
        raise KiwiError(f"the shell {saved} does not exist in the container; change it with kiwi set --shell")
    raise KiwiError("no shell (bash, zsh, fish, ash, sh) found in the container; give a command after --")


def command_of(init_pid: int, config: dict, argv: list[str] | None) -> tuple[list[str], str | None]:
    """(argv, $SHELL): argv as given, or the container's login shell."""
    if argv:
        return argv, config.get("shell") or None
    shell = pick_shell(init_pid, config.get("shell"))
    return ([shell, "-l"] if shell.endswith(("bash", "zsh")) else [shell]), shell


def spawn(
    store: Store,
    cid: str,
    argv: list[str] | None,
    fds=(0, 1, 2),
    term: str | None = None,
    tty: bool = False,
    exec_options=None,
    record: dict | None = None,
) -> int:
    """Start kiwi-exec to run argv (a shell when None) in the running container.

    Returns the pid of kiwi-exec, our child, once the command runs; its exit
    status is the command's (128+n when killed by signal n). fds become the
    command's stdin, stdout and stderr: never a host file or terminal (see
    stdio.py); tty: fds[0] is a PTY slave that becomes its controlling terminal;
    exec_options: an execopts.ExecOptions (attach -e/-w/-u); record: its runtime record
    when the caller has just read or written it (ensure_running).
    """
    record = record or running_record(store, cid)
    from . import freeze

    freeze.thaw_if_abandoned(store, cid)
    init_pid = record["init_pid"]
    config = store.container_config(cid)
    argv, shell = command_of(init_pid, config, argv)
    extra, user_env = exec_options.helper_args(init_pid) if exec_options else ([], {})
    env = container_env(config, shell, term)
    # The image's defaults first: kiwi-exec takes the last -w, and attach -e wins over image Env.
    options = image_exec_defaults(store, config, env) + extra
    entry = record.get(START_ENTRY)
    if not isinstance(entry, Entry):  # the start's own when it has just made it (Starter.run)
        entry = exec_entry(store, cid, record, config)
    start_time = record.get("init_start_time")
    return enter_container(entry, init_pid, start_time, argv, {**env, **user_env}, options, fds, tty)


def exec_entry(store: Store, cid: str, record: dict, config: dict, cgroup=None) -> Entry:
    """How kiwi-exec enters this start of the container (enter.Entry); cgroup: its
    cgroups.Cgroup when the caller (the start) has it."""
    from . import cgroups, security
    from .lxfs import SOCKET

    if cgroup is None:
        # The folder the start recorded: no host-wide registry lookup on the exec path.
        cgroup = cgroups.Cgroup.for_container(cid, record.get("folder") or store.folder_id())
    return Entry(
        cgroup.procs_paths(),
        config.get("network", "separate") != "host",
        str(store.runtime_dir(cid) / SOCKET),
        lambda notify: security.seccomp_program(notify_sysinfo=notify),
        f"{security.capability_mask(security.KEPT_CAPABILITIES):x}",
        str(security.helper_binary_path(security.EXEC_NAME)),
        cgroup.command_procs_paths(),
    )


def entry_facts(entry: Entry) -> dict:
    """An Entry as the start records it in runtime.json, for quickattach.py: all but the
    helper's file (the attaching kiwi's own), both seccomp programs in hex."""
    from . import version_text

    return {
        "kiwi": version_text(),
        "procs": entry.procs,
        "own_net": entry.own_net,
        "handler_socket": entry.handler_socket,
        "seccomp": entry.program(False).hex(),
        "seccomp_sysinfo": entry.program(True).hex(),
        "caps": entry.caps,
    }


def run_attached(
    store: Store, cid: str, argv: list[str] | None, exec_options=None, record: dict | None = None
) -> int:
    """Run argv (or a shell) with this process's stdio, relayed; returns its exit status.
    record: as spawn's (a cold attach hands over the one its start wrote)."""
    from . import stdio

    as_user = exec_options is not None and exec_options.user is not None
    record = record or running_record(store, cid)
    with stdio.Relay(record["init_pid"], as_user) as relay:
        pid = spawn(
            store,
            cid,
            argv,
            fds=relay.child_fds,
            term=relay.term,
            tty=relay.pty,
            exec_options=exec_options,
            record=record,
        )
        relay.started()
        import gc

        # A cold attach's start ran without the collector (commands.cmd_attach); the relay may
        # last hours. What exists now is frozen: the first collection would walk all that the
        # start allocated (~2 ms); a `kiwi terminal` gets it back for later collections.
        gc.freeze()
        gc.enable()
        try:
            return relay.run(pid)
        finally:
            gc.unfreeze()


# --- stop, teardown, cleanup ---------------------------------------------------------


def wait_for_exit(pid: int, start_time: int | None, timeout: float) -> bool:
    """True once the process (pid, start_time) is gone; False if still there after timeout.

    Sleeps on a pidfd, which the kernel wakes the moment the process exits; it
    need not be our child. Kernels without pidfd_open (< 5.3) get polled."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return poll_for_exit(pid, start_time, timeout)
    try:
        # The pidfd follows whoever has the pid now: the init only if the start time matches.
        if process_start_time(pid) != start_time:
            return True
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)


def poll_for_exit(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != start_time:
            return True
        time.sleep(0.02)
    return process_start_time(pid) != start_time


def stop(store: Store, cid: str, stop_sessions: Callable[[Store, str], None], grace: float = 10) -> bool:
    """SIGTERM to the init (it forwards to everyone), then kill after the grace period.
    stop_sessions(store, cid) ends the container's session daemons first (sessions.stop_all:
    the runtime sits below the sessions and does not import them)."""
    with store.container_lock(cid):
        record = read_runtime(store, cid)
        if record:
            from . import freeze

            freeze.thaw_unleased(store, cid)  # a frozen init never sees its SIGTERM
        with contextlib.suppress(KiwiError, OSError):
            stop_sessions(store, cid)
        early = None
        if record:
            idle = bool(record.get("veth")) and is_idle(store, cid, record["init_pid"])
            early = terminate(record, idle, cid, store.folder_id())
        return finish_beside(early, lambda: finish_stop(store, cid, record, early, grace))


def finish_stop(
    store: Store, cid: str, record: dict | None, early: EarlyBridgeRelease | None, grace: float
) -> bool:
    """After stopping.terminate, under the container's lock (quickstop.py comes here too):
    the grace period, SIGKILL for what is left, teardown. True if it was running."""
    if record:
        pid, start_time = record["init_pid"], record["init_start_time"]
        try:
            load_teardown()
            if not wait_for_exit(pid, start_time, grace):
                cgroup = container_cgroup(store, cid)
                if not cgroup.foreign():
                    cgroup.kill_all()
                signal_init(pid, start_time, signal.SIGKILL)
                wait_for_exit(pid, start_time, 5)
        except BaseException:
            if early is not None:
                early.wait_quietly()
            raise
    failures = teardown(store, cid, early=early)
    if failures:
        state = "stopped" if record else "is not running"
        raise KiwiError(f"container {cid} {state}, but {'; '.join(failures)}; run 'kiwi cleanup'")
    return record is not None


def is_idle(store: Store, cid: str, init_pid: int) -> bool:
    """stopping.only_init_and_helpers of the container's cgroup."""
    return only_init_and_helpers(container_cgroup(store, cid).pids(), init_pid)


def load_teardown() -> None:
    """Import what teardown needs while the init is exiting: on another CPU the
    imports overlap the wait for it instead of following it (issue 20)."""
    from . import network  # noqa: F401


def teardown(
    store: Store,
    cid: str,
    release_network: bool = True,
    early: EarlyBridgeRelease | None = None,
    network: bool = True,
    cgroup=None,
) -> list[str]:
    """Remove what a start set up; safe to call on a partly started or dead container.
    Each step is tried whatever the others did; returns what failed, one line each.

    Never touches a cgroup or veth that another data folder made; with
    release_network, the bridge and NAT go too once no container uses them;
    network=False leaves the container's veth and port filter alone (the start removes
    a crashed start's while stage 1 runs); cgroup: the container's cgroups.Cgroup when
    the caller has it."""
    from .errors import GoingOn

    failures: list[str] = []
    network_failures: list[str] = []
    releasing = None
    if network and release_network:
        # The last stop on a bridge waits ~40 ms in the kernel for its deletion: the
        # cgroup and the runtime folder go meanwhile (issue 20).
        with GoingOn(network_failures, f"removing the network device of container {cid}"):
            store.folder_id()  # made (if need be) here, not by two threads at once
            releasing = Background(teardown_network, store, cid, release_network, network_failures, early)
    elif network:
        teardown_network(store, cid, release_network, network_failures)
    try:
        with GoingOn(failures, f"removing the cgroup of container {cid}"):
            if cgroup is None:
                cgroup = container_cgroup(store, cid)
            if cgroup.exists() and not cgroup.foreign():
                cgroup.kill_all()
                cgroup.remove()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(runtime_file(store, cid))
        rdir = store.runtime_dir(cid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rdir / SYSINFO_SOCKET)
        # A runtime.json a start was killed writing: left, it kept the folder for good.
        remove_temp_files(runtime_file(store, cid))
        for sub in RUNTIME_SUBDIRS:
            with contextlib.suppress(OSError):
                os.rmdir(rdir / sub)
        if not mount_file(store, cid).exists():
            with contextlib.suppress(OSError):
                os.rmdir(rdir)
    finally:
        if releasing is not None:
            releasing.wait()
    return failures + network_failures


def teardown_network(
    store: Store,
    cid: str,
    release_network: bool,
    failures: list[str],
    early: EarlyBridgeRelease | None = None,
) -> None:
    from .errors import GoingOn

    bridge_released = False
    if early is not None:
        with GoingOn(failures, "removing the bridge and its NAT", catch=(Exception,)):
            bridge_released = early.wait()
    # netlink and nft report in exceptions of their own.
    with GoingOn(failures, f"removing the network device of container {cid}", catch=(Exception,)):
        from . import network

        if release_network:
            network.release_container(cid, store.folder_id(), bridge_released)
        else:
            network.detach_container(cid, store.folder_id())


def forget(store: Store, cid: str) -> list[str]:
    """Before delete: make sure nothing of the container is left running; returns what
    could not be removed (teardown's failures)."""
    failures = teardown(store, cid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mount_file(store, cid))
    import shutil

    shutil.rmtree(store.runtime_dir(cid), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.locks_dir / f"{cid}.lock")
    return failures


# --- settings on a running container ---------------------------------------------------


def apply_live(store: Store, config: dict, changed: list[str]) -> list[str]:
    cid = config["id"]
    if not read_runtime(store, cid):
        return []
    notes = []
    if {"memory", "cpu"} & set(changed):
        container_cgroup(store, cid).set_limits(config.get("memory"), config.get("cpu"))
        notes.append("memory and cpu limits applied to the running container")
    if "network" in changed:
        notes.append("the network change applies at the next start (kiwi stop, then attach)")
    return notes
