"""kiwi.loop on real loop devices (root). Only devices backed by this test's own
files are ever detached; mounts happen in a private mount namespace child."""

import os
import subprocess
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from kiwi import loop
from kiwi import syscalls as sc

MIB = 1024 * 1024


@pytest.fixture
def make_backing(tmp_path):
    """Sparse backing files; every device still bound to one is detached afterwards."""
    made = []

    def make(size=16 * MIB, name=None):
        path = tmp_path / (name or f"backing-{len(made)}.img")
        with open(path, "wb") as f:
            f.truncate(size)
        made.append(path)
        return path

    yield make
    for path in made:
        for device in loop.find_by_backing_file(path):
            loop.detach(device)
    assert not any(loop.find_by_backing_file(path) for path in made)


def is_bound(device) -> bool:
    return loop.backing_file(device) is not None


def test_attach_and_detach(make_backing):
    backing = make_backing()
    device = loop.attach(backing, autoclear=False)
    assert device.startswith("/dev/loop")
    assert loop.backing_file(device) == str(backing)
    assert loop.find_by_backing_file(backing) == [str(device)]
    assert loop.size_bytes(device) == 16 * MIB
    device.release()
    assert is_bound(device)  # no autoclear: stays until detached
    loop.detach(device)
    assert not is_bound(device)
    loop.detach(device)  # detaching a free device is harmless


def test_autoclear_frees_device_with_last_opener(make_backing):
    backing = make_backing()
    device = loop.attach(backing)
    other_user = os.open(device, os.O_RDONLY)
    try:
        device.release()
        assert is_bound(device)  # other_user still holds it
    finally:
        os.close(other_user)
    assert not is_bound(device)


def test_read_only(make_backing):
    backing = make_backing()
    with loop.attach(backing, autoclear=False, read_only=True) as device:
        name = os.path.basename(device)
        assert open(f"/sys/block/{name}/ro").read().strip() == "1"
        writer = os.open(device, os.O_WRONLY)
        try:
            with pytest.raises(OSError):
                os.write(writer, b"x" * 4096)
                os.fsync(writer)
        finally:
            os.close(writer)
    loop.detach(device)


def test_refresh_capacity_follows_grown_file(make_backing):
    backing = make_backing(16 * MIB)
    with loop.attach(backing, autoclear=False) as device:
        os.truncate(backing, 48 * MIB)
        assert loop.size_bytes(device) == 16 * MIB
        loop.refresh_capacity(device)
        assert loop.size_bytes(device) == 48 * MIB
    loop.detach(device)


def test_twenty_parallel_attaches_get_distinct_devices(make_backing):
    backings = [make_backing(4 * MIB) for _ in range(20)]
    start = threading.Barrier(len(backings))

    def attach(path):
        start.wait()  # maximise the GET_FREE / CONFIGURE race
        return loop.attach(path, autoclear=False)

    with ThreadPoolExecutor(len(backings)) as pool:
        devices = list(pool.map(attach, backings))
    assert len(set(devices)) == len(backings)
    for path, device in zip(backings, devices):
        assert loop.backing_file(device) == str(path)
        loop.detach(device)


def test_mounted_autoclear_device_detaches_on_umount(make_backing, tmp_path):
    backing = make_backing(32 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], check=True)
    target = tmp_path / "mnt"
    target.mkdir()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            with loop.attach(backing) as device:
                sc.mount(device, target, "ext4")
            assert is_bound(device)  # the mount keeps it
            (target / "hello").write_text("on loop")
            sc.umount(target)
            assert not is_bound(device)
        except BaseException:
            os.write(report_write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(report_write)
    with os.fdopen(report_read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert loop.find_by_backing_file(backing) == []


def sysfs_flag(device, name) -> str:
    return open(f"/sys/block/{os.path.basename(device)}/loop/{name}").read().strip()


def test_autoclear_flag_is_set(make_backing):
    backing = make_backing()
    with loop.attach(backing) as device:
        assert sysfs_flag(device, "autoclear") == "1"
        loop.detach(device)  # lazily: we still hold it open
    assert not is_bound(device)


def test_legacy_set_fd_path_for_kernels_without_loop_configure(make_backing, monkeypatch):
    real_ioctl_ptr = sc.ioctl_ptr

    def kernel_before_5_8(fd, request, arg):
        if request == sc.LOOP_CONFIGURE:
            raise OSError(22, "Invalid argument")
        return real_ioctl_ptr(fd, request, arg)

    monkeypatch.setattr(loop.sc, "ioctl_ptr", kernel_before_5_8)
    backing = make_backing()
    with loop.attach(backing, read_only=True) as device:
        assert loop.backing_file(device) == str(backing)
        assert sysfs_flag(device, "autoclear") == "1"
        assert open(f"/sys/block/{os.path.basename(device)}/ro").read().strip() == "1"
    assert not is_bound(device)
