"""Item 8 of issue 12: seccomp, masked /proc and /sys paths and the device
allowlist, attacked for real from inside a container of the frozen binary.

A static probe (confine_probe.c, built here with gcc -static) makes each
forbidden call from inside; the host side checks that the same call works
where Kiwi does not confine it, so none of these can pass by accident.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import bind_into_container, own_cgroup_dirs, unmount_in_container
from kiwi import rootfs, security

from .helpers import put_file

PROBE_SOURCE = Path(__file__).with_name("confine_probe.c")
EPERM, ENOENT, EROFS = f"errno {errno.EPERM}", f"errno {errno.ENOENT}", f"errno {errno.EROFS}"
EACCES = f"errno {errno.EACCES}"


@pytest.fixture(scope="module")
def probe_binary(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(
        ["gcc", "-static", "-O1", "-Wall", "-Werror", "-o", str(out), str(PROBE_SOURCE)], check=True
    )
    return out


@pytest.fixture(scope="module")
def box(kiwi_module, busybox_tar, probe_binary):
    """A running busybox container with the probe at /tmp/probe."""
    kiwi_module("import", "--name", "confine", busybox_tar)
    cid = kiwi_module.create("confine")
    kiwi_module("attach", cid, "--", "true")
    init_pid = init_pid_of(kiwi_module, cid)
    # Put there as the image author could have, by the container's own root (host
    # uid 0 has no id in an unprivileged container's tmpfs).
    put_file(kiwi_module, cid, probe_binary, "/tmp/probe")
    return kiwi_module, cid, init_pid


def probe(box, *args) -> str:
    kiwi, cid, _ = box
    return kiwi.out("attach", cid, "--", "/tmp/probe", *map(str, args))


def host_probe(probe_binary, *args) -> str:
    return subprocess.run(
        [str(probe_binary), *map(str, args)], capture_output=True, text=True, check=True
    ).stdout.strip()


# -- seccomp ---------------------------------------------------------------------------


def test_io_uring_setup_is_refused(box, probe_binary):
    assert probe(box, "io_uring_setup") == EPERM
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        assert host_probe(probe_binary, "io_uring_setup").startswith("ok ")  # the control


@pytest.mark.parametrize("persona", [0x0400000, 0x0040000, 0x0040008, 0x0000006])
def test_personality_outside_dockers_list_is_refused(box, probe_binary, persona):
    # READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ADDR_NO_RANDOMIZE|PER_LINUX32, PER_BSD
    assert probe(box, "personality", hex(persona)).splitlines() == [EPERM, "now 0"]
    assert host_probe(probe_binary, "personality", hex(persona)).splitlines()[0] == "ok 0"


@pytest.mark.parametrize("persona", [0x0, 0x8, 0x20000, 0x20008])
def test_personality_values_docker_allows_work(box, persona):
    now = f"now {persona:#x}" if persona else "now 0"  # printf's %#lx writes 0 bare
    assert probe(box, "personality", hex(persona)).splitlines() == ["ok 0", now]


def test_personality_query_works(box):
    assert probe(box, "personality", "0xffffffff").splitlines() == ["ok 0", "now 0"]


@pytest.mark.parametrize("family, kind", [(38, 5), (40, 1)])  # AF_ALG seqpacket, AF_VSOCK stream
def test_socket_families_docker_refuses_are_refused(box, family, kind):
    assert probe(box, "socket", family, kind) == EPERM


def test_ordinary_sockets_work(box):
    for family, kind in ((1, 1), (2, 2), (16, 3)):  # unix stream, inet dgram, netlink raw
        assert probe(box, "socket", family, kind).startswith("ok "), family


# -- masked and read-only paths --------------------------------------------------------


@pytest.mark.parametrize("relative", security.MASKED_FILES)
def test_masked_files_give_nothing(box, probe_binary, relative):
    path = "/" + relative
    inside = probe(box, "read", path)
    if not os.path.exists(path):
        assert inside == ENOENT
        return
    assert inside in ("ok 0", f"errno {errno.EACCES}", EPERM), inside
    if relative == "proc/kpageflags":  # the control: the host does get data
        assert host_probe(probe_binary, "read", path) != "ok 0"


def masked_directories_on_host() -> list[str]:
    found = ["/" + d for d in security.MASKED_DIRECTORIES if os.path.isdir("/" + d)]
    for pattern in security.MASKED_DIRECTORY_PATTERNS:
        found += sorted(glob.glob("/" + pattern))
    return found


def test_masked_directories_are_empty(box):
    kiwi, cid, _ = box
    directories = masked_directories_on_host()
    assert "/sys/firmware" in directories  # any Linux host has it, with content
    assert os.listdir("/sys/firmware")
    for directory in directories:
        assert kiwi.out("attach", cid, "--", "ls", "-A", directory) == "", directory


def container_mounts(box) -> dict[str, list[str]]:
    kiwi, cid, _ = box
    mounts = {}
    for line in kiwi.out("attach", cid, "--", "cat", "/proc/self/mountinfo").splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")
    return mounts


def test_read_only_paths_are_read_only_mounts(box):
    mounts = container_mounts(box)
    for relative in security.READ_ONLY_PATHS:
        if os.path.exists("/" + relative):
            assert "ro" in mounts.get("/" + relative, []), relative


@pytest.mark.parametrize(
    "path, text",
    [
        ("/proc/sysrq-trigger", "h"),  # h: print help, harmless even if it got through
        ("/proc/sys/vm/drop_caches", "x"),  # EINVAL if it got through
        ("/proc/irq/default_smp_affinity", "x"),  # EINVAL if it got through
    ],
)
def test_writes_to_read_only_paths_fail(box, path, text):
    expected = EROFS if os.path.exists(path) else ENOENT
    if expected == EROFS and path.startswith(("/proc/sys/", "/proc/irq/")) and not box_is_privileged(box):
        expected = EACCES  # root of a user namespace is refused these first (host root's files)
    assert probe(box, "write", path, text) == expected


def box_is_privileged(box) -> bool:
    kiwi, cid, _ = box
    return next(r for r in kiwi.json("list", "containers") if r["id"] == cid)["privileged"]


# -- device allowlist ----------------------------------------------------------------------


def init_pid_of(kiwi, cid) -> int:
    return json.loads((kiwi.root / "mounts" / cid / "runtime.json").read_text())["init_pid"]


def storage_device_of(kiwi, cid) -> int:
    """st_rdev of the loop device under the container's own root filesystem."""
    image = kiwi.root / "containers" / cid / "state.img"
    listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True)
    return os.stat(listed.stdout.split(":", 1)[0]).st_rdev


@contextlib.contextmanager
def smuggled_nodes(init_pid: int, nodes: dict):
    """Make {name: (S_IFCHR or S_IFBLK, rdev)} appear in the running container's
    /dev/shm, as nodes smuggled in would: made on the host (a user namespace may not
    mknod, and its tmpfs is nodev for it) and bound there; check that each works on
    the host side; undo it afterwards."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as host_dir:
        os.chmod(host_dir, 0o755)
        for name, (kind, number) in nodes.items():
            os.mknod(f"{host_dir}/{name}", kind | 0o666, number)
            os.close(os.open(f"{host_dir}/{name}", os.O_RDONLY))  # the control: the node itself opens
        bind_into_container(init_pid, host_dir, "/dev/shm")
        try:
            yield
        finally:
            unmount_in_container(init_pid, "/dev/shm")


def test_device_nodes_that_appear_later_stay_closed(box):
    """Only the allowlisted numbers open inside, whatever node appears in /dev."""
    kiwi, cid, init_pid = box
    tag = secrets.token_hex(3)
    expected = {f"probe-null-{tag}": "ok", f"probe-loopctl-{tag}": EPERM, f"probe-disk-{tag}": EPERM}
    nodes = {
        f"probe-null-{tag}": (stat.S_IFCHR, os.makedev(1, 3)),  # allowed: the control
        f"probe-loopctl-{tag}": (stat.S_IFCHR, os.makedev(10, 237)),  # loop-control
        f"probe-disk-{tag}": (stat.S_IFBLK, storage_device_of(kiwi, cid)),  # raw ext4 under its /
    }
    with smuggled_nodes(init_pid, nodes):
        for name, verdict in expected.items():
            result = probe(box, "open", f"/dev/shm/{name}")
            assert result.startswith("ok ") if verdict == "ok" else result == verdict, (name, result)


def test_smuggled_block_device_stays_closed(kiwi, busybox):
    """One start, one open. tests/vm/test_vm_devices.py runs this inside the
    cgroup v2 VM, where the eBPF device program does what the v1 devices
    controller does here."""
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    expected_cgroup = os.environ.get("KIWI_EXPECT_CGROUP")
    if expected_cgroup:
        assert kiwi.json("list", "containers")[0]["cgroup"] == expected_cgroup
    with smuggled_nodes(init_pid_of(kiwi, cid), {"disk": (stat.S_IFBLK, storage_device_of(kiwi, cid))}):
        done = kiwi.sh(cid, "exec 3< /dev/shm/disk", check=False)
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr, done.stderr


def own_v2_cgroup_dir() -> Path:
    v2 = [d for d in own_cgroup_dirs() if (d / "cgroup.controllers").exists()]
    assert v2, "no cgroup2 mount on this host"
    return v2[0]


def test_v2_device_program_denies_what_is_not_listed(tmp_path):
    """The eBPF program itself, loaded and attached to a cgroup2 cgroup of this
    test (on a hybrid host the unified mount holds it, as on a pure v2 host)."""
    group = own_v2_cgroup_dir() / f"kiwi-confine-{secrets.token_hex(3)}"
    group.mkdir()
    try:
        security.attach_device_program(group, rootfs.ALLOWED_DEVICES)
        loopctl = tmp_path / "loopctl"
        os.mknod(loopctl, stat.S_IFCHR | 0o600, os.makedev(10, 237))
        code = (
            "import os, sys\n"
            f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        os.close(os.open(path, os.O_RDONLY)); print('ok')\n"
            "    except OSError as e:\n        print(e.errno)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, "/dev/null", "/dev/zero", str(loopctl)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.split() == ["ok", "ok", str(errno.EPERM)]
        os.close(os.open(loopctl, os.O_RDONLY))  # outside the cgroup it opens
    finally:
        group.rmdir()
