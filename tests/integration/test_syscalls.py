"""kiwi.syscalls against the real kernel (root).

Anything that mounts runs in a forked child that first unshares its mount
namespace and makes / rprivate, so nothing reaches the host mount table.
"""

import os
import shutil
import signal
import traceback

import pytest

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
    fd = sc.openat2(jail, f"{link}/etc/passwd", os.O_RDONLY | os.O_CLOEXEC,
                    resolve=sc.RESOLVE_IN_ROOT)
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
