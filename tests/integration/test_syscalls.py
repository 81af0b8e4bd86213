"""kiwi.syscalls against the real kernel (root).

Anything that mounts runs in a forked child that first unshares its mount
namespace and makes / rprivate, so nothing reaches the host mount table.
"""

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import traceback

import pytest

from kiwi import security
from kiwi import syscalls as sc


def run_in_child(body, namespaces=sc.CLONE_NEWNS):
    """Run body() in a forked child inside fresh namespaces; re-raise its failure here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        os.close(read_end)
        code = 0
        try:
            sc.unshare(namespaces)
            if namespaces & sc.CLONE_NEWNS:
                sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            body()
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def host_mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_tmpfs_mount_stays_in_private_namespace(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()

    def body():
        sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID, "size=1m,mode=0755")
        (target / "inside").write_text("x")
        assert str(target) in host_mountinfo()
        sc.umount(target)
        assert not (target / "inside").exists()

    run_in_child(body)
    assert str(target) not in host_mountinfo()
    assert not (target / "inside").exists()


def test_pivot_root_into_tmpfs(tmp_path):
    new_root = tmp_path / "root"
    new_root.mkdir()

    def body():
        sc.mount("tmpfs", new_root, "tmpfs", 0, "size=1m")
        (new_root / "old").mkdir()
        (new_root / "marker").write_text("new root")
        sc.pivot_root(new_root, new_root / "old")
        os.chdir("/")
        assert open("/marker").read() == "new root"
        sc.umount("/old", sc.MNT_DETACH)
        assert os.listdir("/old") == []
        assert sorted(os.listdir("/")) == ["marker", "old"]

    run_in_child(body)


def test_mount_error_names_the_target(tmp_path):
    missing = tmp_path / "does-not-exist"

    def body():
        with pytest.raises(FileNotFoundError) as caught:
            sc.mount("tmpfs", missing, "tmpfs")
        assert str(missing) in str(caught.value)

    run_in_child(body)


def test_open_tree_and_move_mount_bind(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    target.mkdir()
    (source / "file").write_text("bound")

    def body():
        tree = sc.open_tree(sc.AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
        try:
            sc.move_mount(tree, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(tree)
        assert (target / "file").read_text() == "bound"
        sc.mount_setattr(sc.AT_FDCWD, target, 0, sc.MOUNT_ATTR_RDONLY)
        with pytest.raises(OSError):
            (target / "new").write_text("no")
        sc.umount(target)

    run_in_child(body)


def test_mknod_at_creates_char_device(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()

    def body():
        sc.mount("tmpfs", dev, "tmpfs", 0, "size=64k")
        dirfd = os.open(dev, os.O_DIRECTORY | os.O_RDONLY)
        try:
            sc.mknod_at(dirfd, "null", 0o020666, 1, 3)
        finally:
            os.close(dirfd)
        st = os.stat(dev / "null")
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
        with open(dev / "null", "w") as null:
            null.write("discarded")
        sc.umount(dev)

    run_in_child(body)


def test_sethostname_in_uts_namespace():
    before = os.uname().nodename

    def body():
        sc.sethostname("kiwi-test")
        assert os.uname().nodename == "kiwi-test"

    run_in_child(body, namespaces=sc.CLONE_NEWUTS)
    assert os.uname().nodename == before


@pytest.fixture
def jail(tmp_path):
    """A directory with symlinks that try to leave it."""
    root = tmp_path / "jail"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("jail passwd\n")
    os.symlink("/", root / "escape")
    os.symlink("../../../../../..", root / "dotdot")
    fd = os.open(root, os.O_DIRECTORY | os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("link", ["escape", "dotdot"])
def test_openat2_in_root_keeps_symlinks_inside(jail, link):
    fd = sc.openat2(jail, f"{link}/etc/passwd", os.O_RDONLY | os.O_CLOEXEC, resolve=sc.RESOLVE_IN_ROOT)
    with os.fdopen(fd) as f:
        assert f.read() == "jail passwd\n"


def test_openat2_in_root_refuses_missing_target_instead_of_host(jail):
    with pytest.raises(FileNotFoundError):
        sc.openat2(jail, "escape/etc/shadow", os.O_RDONLY, resolve=sc.RESOLVE_IN_ROOT)


def test_openat2_beneath_rejects_escape(jail):
    with pytest.raises(OSError) as caught:
        sc.openat2(jail, "escape/etc/passwd", os.O_RDONLY, resolve=sc.RESOLVE_BENEATH)
    assert caught.value.errno == 18  # EXDEV


def test_openat2_no_symlinks(jail):
    with pytest.raises(OSError) as caught:
        sc.openat2(jail, "escape", os.O_RDONLY | os.O_PATH, resolve=sc.RESOLVE_NO_SYMLINKS)
    assert caught.value.errno == 40  # ELOOP


def test_memfd_seals_block_writes():
    fd = sc.memfd_create("kiwi-test", sc.MFD_CLOEXEC | sc.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"sealed")
        seals = sc.F_SEAL_SEAL | sc.F_SEAL_SHRINK | sc.F_SEAL_GROW | sc.F_SEAL_WRITE
        sc.add_seals(fd, seals)
        assert sc.get_seals(fd) & seals == seals
        with pytest.raises(PermissionError):
            os.write(fd, b"more")
        with pytest.raises(PermissionError):
            sc.add_seals(fd, sc.F_SEAL_FUTURE_WRITE)
    finally:
        os.close(fd)


def test_execveat_runs_binary_from_memfd():
    fd = sc.memfd_create("true", sc.MFD_CLOEXEC | sc.MFD_ALLOW_SEALING)
    with open(shutil.which("true"), "rb") as binary:
        os.write(fd, binary.read())
    pid = os.fork()
    if pid == 0:
        try:
            sc.execveat(fd, ["true"], {"PATH": "/usr/bin:/bin"})
        finally:
            os._exit(99)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_execveat_failure_raises():
    fd = sc.memfd_create("empty", sc.MFD_CLOEXEC)
    try:
        with pytest.raises(OSError):
            sc.execveat(fd, ["empty"], [])
    finally:
        os.close(fd)


def test_pidfd_signal_and_prctl():
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    pidfd = sc.pidfd_open(pid)
    try:
        sc.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert sc.prctl(sc.PR_GET_DUMPABLE) in (0, 1, 2)


def test_capget_reports_root_capabilities():
    effective, permitted, _ = sc.capget()
    assert effective & (1 << 21)  # CAP_SYS_ADMIN: these tests run as real root
    assert permitted & effective == effective


# -- kiwi.security on the real kernel ----------------------------------------

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
NR = security.SYSCALL_NUMBERS[security.machine_abis()[0]]


def raw_syscall(name, *args) -> int:
    """errno of the raw syscall (0 on success)."""
    ctypes.set_errno(0)
    ret = LIBC.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if ret < 0 else 0


# Arguments that make each call fail harmlessly (or do nothing) when unfiltered.
HARMLESS_CALLS = {
    "mount": ("mount", 0, 0, 0, 0, 0),  # EFAULT
    "setns": ("setns", -1, 0),  # EBADF
    "open_by_handle_at": ("open_by_handle_at", -1, 0, 0),  # EBADF
    "unshare_newuser": ("unshare", 0x10000000),  # would succeed in the child
}


def errnos_of(calls, install_filter: bool) -> dict:
    """Run calls in a fresh child; return {label: errno}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if install_filter:
                security.install_seccomp()
            results = {label: raw_syscall(*call) for label, call in calls.items()}
            os.write(write_end, repr(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    assert output, "child died before reporting"
    return eval(output)  # a dict literal of ints written by our own child


def test_seccomp_denies_dangerous_syscalls_with_eperm():
    calls = dict(HARMLESS_CALLS)
    calls["kexec_load"] = ("kexec_load", 0, 1000, 0, 0)  # EINVAL: too many segments
    calls["init_module"] = ("init_module", 0, 0, 0)
    calls["clone_newuser"] = ("clone", 0x10000000 | 17, 0, 0, 0, 0)
    filtered = errnos_of(calls, install_filter=True)
    assert filtered == dict.fromkeys(calls, errno.EPERM)


def test_seccomp_is_what_denies_them():
    """Control run without the filter: the same calls do not fail with EPERM."""
    unfiltered = errnos_of(HARMLESS_CALLS, install_filter=False)
    assert errno.EPERM not in unfiltered.values(), unfiltered


def test_normal_work_continues_under_seccomp(tmp_path):
    def body():
        security.install_seccomp()
        (tmp_path / "file").write_text("ok")
        assert (tmp_path / "file").read_text() == "ok"
        # posix_spawn tries clone3 first: ENOSYS must make it fall back to clone
        done = subprocess.run(["sh", "-c", "echo child; true"], capture_output=True)
        assert done.stdout == b"child\n"
        with open("/proc/self/status") as status:
            assert "Seccomp:\t2" in status.read()

    run_in_child(body, namespaces=0)


def status_fields(text: str) -> dict:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_drop_capabilities_leaves_docker_set_without_mknod():
    expected = security.capability_mask(security.KEPT_CAPABILITIES)

    def body():
        security.drop_capabilities()
        fields = status_fields(open("/proc/self/status").read())
        for name in ("CapEff", "CapPrm", "CapBnd"):
            assert int(fields[name], 16) == expected, (name, fields[name])
        assert int(fields["CapInh"], 16) == 0
        assert int(fields["CapAmb"], 16) == 0
        # root keeps exactly this set across exec (the bounding set decides)
        after_exec = status_fields(open_status_via_exec())
        assert int(after_exec["CapEff"], 16) == expected
        assert int(after_exec["CapBnd"], 16) == expected
        with pytest.raises(PermissionError):  # CAP_SYS_ADMIN is gone
            sc.sethostname("nope")

    run_in_child(body, namespaces=sc.CLONE_NEWUTS)


def open_status_via_exec() -> str:
    return subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout


def test_mask_proc_paths(tmp_path):
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "sys").mkdir()
    (root / "dev").mkdir()
    (root / "dev/null").touch()

    def body():
        sc.mount("/dev/null", root / "dev/null", None, sc.MS_BIND)  # as rootfs.mount_dev binds it
        sc.mount("proc", root / "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        sc.mount("sysfs", root / "sys", "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        security.mask_proc_paths(root)
        for relative in security.MASKED_FILES:
            path = root / relative
            if path.exists():
                assert os.major(os.stat(path).st_rdev) == 1, relative  # /dev/null
                assert path.read_bytes() == b""
        for relative in security.MASKED_DIRECTORIES:
            path = root / relative
            if path.exists():
                assert os.listdir(path) == [], relative
        with pytest.raises(OSError) as caught:
            (root / "proc/sys/kernel/hostname").write_text("masked")
        assert caught.value.errno == errno.EROFS
        assert (root / "proc/sys/kernel/hostname").read_text()  # still readable
        if (root / "proc/sysrq-trigger").exists():  # CONFIG_MAGIC_SYSRQ
            with pytest.raises(OSError) as caught:
                (root / "proc/sysrq-trigger").write_text("h")
            assert caught.value.errno == errno.EROFS
        assert (root / "proc/kpageflags").read_bytes() == b""  # real data outside

    run_in_child(body)
    assert str(root) not in host_mountinfo()


def test_mask_proc_paths_needs_roots_own_null(tmp_path):
    """A missing <root>/dev/null fails: it must not pass for masked files this kernel lacks."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev/null").touch()  # a plain file, not the null device

    def body():
        sc.mount("proc", root / "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        with pytest.raises(OSError):
            security.mask_proc_paths(root)
        assert "kcore" not in open("/proc/self/mountinfo").read()

    run_in_child(body)


def test_close_fds_except_stdio_keeps_requested():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            kept = os.open("/dev/null", os.O_RDONLY)
            for _ in range(5):
                os.open("/dev/null", os.O_RDONLY)
            security.close_fds_except_stdio(keep=(kept, write_end))
            still_open = [fd for fd in range(3, 256) if fd_is_open(fd)]
            os.write(write_end, repr(sorted(still_open) == sorted({kept, write_end})).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"True"


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
