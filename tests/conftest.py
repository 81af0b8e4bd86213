"""Shared fixtures. Command-level tests run the FROZEN kiwi (dist/kiwi or
$KIWI_BIN); KIWI_SOURCE=1 runs `python -m kiwi` instead (development only).

Every test gets its own KIWI_ROOT, bridge, subnet and cgroup parent, and its
teardown stops and removes everything it made, even when the test failed."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CACHE = Path(os.environ.get("KIWI_TEST_CACHE", "/var/cache/kiwi-test"))


def kiwi_command() -> list[str]:
    if os.environ.get("KIWI_SOURCE") == "1":
        return [sys.executable, "-m", "kiwi"]
    binary = Path(os.environ.get("KIWI_BIN", REPO / "dist" / "kiwi"))
    if not binary.exists():
        subprocess.run([str(REPO / "build.sh"), "host"], check=True)
    return [str(binary)]


@pytest.fixture(scope="session")
def test_images() -> Path:
    subprocess.run([str(REPO / "scripts" / "make-test-images")], check=True, stdout=subprocess.DEVNULL)
    return CACHE


@pytest.fixture(scope="session")
def busybox_tar(test_images) -> Path:
    return test_images / "busybox-rootfs.tar.xz"


@pytest.fixture(scope="session")
def debian_tar(test_images) -> Path:
    return test_images / "debian-minbase.tar.xz"


class Kiwi:
    """Runs the kiwi command inside one test's private environment."""

    def __init__(self, env: dict, root: Path, create_args: tuple = ()):
        self.env = env
        self.root = root
        self.cmd = kiwi_command()
        self.create_args = list(create_args)  # e.g. --privileged, for every create()

    def __call__(
        self,
        *args,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.cmd + [str(a) for a in args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kiwi {' '.join(map(str, args))} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def out(self, *args, **kw) -> str:
        return self(*args, **kw).stdout.strip()

    def json(self, *args) -> list | dict:
        return json.loads(self.out(*args, "--json"))

    def create(self, image: str, *args) -> str:
        return self.out("create", image, *args, *self.create_args).splitlines()[-1]

    def kill_midway(self, *args, after: float) -> None:
        """Start `kiwi args`, SIGKILL it after `after` seconds (a crash at a random point)."""
        import signal
        import time

        proc = subprocess.Popen(
            self.cmd + [str(a) for a in args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def sh(self, cid: str, script: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return self("attach", cid, "--", "sh", "-c", script, check=check, **kw)


def make_env(tmp_path_factory) -> tuple[dict, Path]:
    tag = secrets.token_hex(3)
    root = tmp_path_factory.mktemp(f"kiwi-{tag}") / "kiwi-data"
    env = dict(os.environ)
    env.update(
        {
            "KIWI_ROOT": str(root),
            "KIWI_BRIDGE": f"kt{tag}",
            "KIWI_SUBNET": f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24",
            "KIWI_CGROUP_PARENT": f"kiwi-test-{tag}",
            "KIWI_HOST_DIR": str(root.parent / "host"),  # address leases shared by data folders
            "KIWI_TEST_CACHE": str(CACHE),
        }
    )
    env.pop("KIWI_IMAGE_SERVER", None)
    return env, root


def teardown_env(kiwi: Kiwi) -> None:
    """Stop every container of this test's root, then remove every trace of it."""
    if kiwi.root.exists():
        try:
            rows = kiwi.json("list", "containers")
        except Exception:  # noqa: BLE001 - teardown must go on
            rows = []
        for row in rows:
            if row.get("mount"):
                kiwi("unmount", row["id"], check=False)
            if row.get("status") == "running":
                kiwi("stop", row["id"], "--time", "2", check=False)
        kiwi("cleanup", check=False)
    kill_what_is_left(kiwi.env["KIWI_CGROUP_PARENT"])
    remove_network(kiwi.env)
    remove_cgroup_parent(kiwi.env["KIWI_CGROUP_PARENT"])
    unmount_below(kiwi.root.parent)
    from kiwi.fstree import remove_tree  # any depth: a test may leave a 1200-level tree

    remove_tree(kiwi.root.parent, ignore_errors=True)


def alive(pid: int) -> bool:
    """Running: a zombie (waiting for whoever adopted it, perhaps a host PID 1 that never
    reaps) has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    """Until every pid has ended: a SIGKILLed init is not dead when kill() returns (it first
    ends every process of its pid namespace), and a loaded machine makes that visible."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in pids if alive(p)]


@contextlib.contextmanager
def outweigh_host_load(group):
    """Top CPU weight, while in the block, for a kiwi.cgroups.Cgroup and its parent (the test's
    own cgroup parent): other load on the shared CPUs cannot starve a measurement of its CPU
    use, while the quota under test still caps it. The weights are restored after: a busy
    cgroup without a quota would otherwise starve everything else on the host."""
    if group.version == "v2":
        name, value = "cpu.weight", "10000"
    else:
        name, value = "cpu.shares", "262144"
    directory = group.path("cpu")
    paths = [directory / name, directory.parent / name]
    saved = [path.read_text() for path in paths]
    try:
        for path in paths:
            path.write_text(value)
        yield
    finally:
        for path, text in zip(paths, saved):
            with contextlib.suppress(OSError):  # the cgroup may be gone already
                path.write_text(text)


def wait_until(condition, timeout: float = 60) -> bool:
    """condition() became true before the deadline (only a bound for a hang: a loaded machine
    may take seconds to start a process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def comm(pid: int) -> str:
    """The process's name, "" once it has gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def own_cgroup_dirs() -> list[Path]:
    """This process's cgroup folder in every mounted hierarchy (v1 and v2)."""
    own = {}
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        own[controllers] = path
    dirs = []
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            opts = fields[-1].split(",")
            key = next((k for k in own if k and set(k.split(",")) <= set(opts)), None)
        else:
            continue
        if key in own:
            dirs.append(Path(fields[4]) / own[key].lstrip("/"))
    return dirs


def kill_what_is_left(parent: str) -> None:
    """A failed stop must not outlive its test: SIGKILL whatever is still in the test's own
    cgroup parent (only this test's containers can be there), so their mounts and loop
    devices go before the folder does. Waits until the kernel has emptied it."""
    pids = {0}
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = set()
        for base in own_cgroup_dirs():
            for dirpath, _dirnames, _ in os.walk(base / parent):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pids:
            time.sleep(0.05)


def remove_cgroup_parent(parent: str) -> None:
    """The test's own (relative) cgroup parent, in every hierarchy, once Kiwi emptied it."""
    for base in own_cgroup_dirs():
        top = base / parent
        if not top.is_dir():
            continue
        for dirpath, _dirnames, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_network(env: dict) -> None:
    code = "import os\nfrom kiwi import network\nnetwork.remove_nat()\nnetwork.remove_bridge()\n"
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )


def unmount_below(path: Path) -> None:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in reversed(points):
        if point == prefix or point.startswith(prefix + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


def in_mount_namespace_of(pid: int, code: str, *args: str) -> None:
    """Run `code` (Python, kiwi.syscalls imported as sc, argv in sys.argv) in a host
    process that joined the mount namespace of `pid` after preparing what it needs."""
    prelude = "import os, sys\nfrom kiwi import syscalls as sc\n"
    join = "sc.setns(os.open(f'/proc/{sys.argv[1]}/ns/mnt', os.O_RDONLY), sc.CLONE_NEWNS)\n"
    subprocess.run(
        [sys.executable, "-c", prelude + code.replace("JOIN\n", join), str(pid), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        timeout=30,
    )


def bind_into_container(pid: int, host_path, inside: str) -> None:
    """As a runtime bug would: mount a host file or folder over `inside` (which must exist)
    in the mount namespace of the container whose init is `pid`."""
    code = (
        "tree = sc.open_tree(sc.AT_FDCWD, sys.argv[2], sc.OPEN_TREE_CLONE)\n"
        "JOIN\n"
        "sc.move_mount(tree, '', sc.AT_FDCWD, sys.argv[3], sc.MOVE_MOUNT_F_EMPTY_PATH)\n"
    )
    in_mount_namespace_of(pid, code, str(host_path), inside)


def unmount_in_container(pid: int, inside: str) -> None:
    in_mount_namespace_of(pid, "JOIN\nsc.umount(sys.argv[2], sc.MNT_DETACH)\n", inside)


def fresh_kiwi(tmp_path_factory, create_args: tuple = ()):
    """A Kiwi in its own environment, torn down after use (generator for fixtures)."""
    env, root = make_env(tmp_path_factory)
    k = Kiwi(env, root, create_args)
    yield k
    teardown_env(k)


# kiwi.create() arguments per container mode (issue 15).
MODES = {"unprivileged": (), "privileged": ("--privileged",)}


def pytest_generate_tests(metafunc):
    """A module with BOTH_MODES = True runs each test using `kiwi` twice: in the
    default (unprivileged: a user namespace) and with --privileged."""
    if "kiwi" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_MODES", False):
        metafunc.parametrize("kiwi", list(MODES), indirect=True)


@pytest.fixture
def kiwi(request, tmp_path_factory):
    yield from fresh_kiwi(tmp_path_factory, MODES.get(getattr(request, "param", None), ()))


@pytest.fixture(scope="module")
def kiwi_module(tmp_path_factory):
    """One environment shared by a module's tests (containers started once)."""
    env, root = make_env(tmp_path_factory)
    k = Kiwi(env, root)
    yield k
    teardown_env(k)


@pytest.fixture
def terminals():
    """Opens pexpect terminals; closes every one of them, even when the test failed."""
    opened = []

    def spawn(program: str, args: list[str], env: dict, rows: int = 24, cols: int = 80):
        import pexpect

        child = pexpect.spawn(
            program,
            args,
            env={**env, "TERM": "xterm"},
            dimensions=(rows, cols),
            encoding="utf-8",
            codec_errors="replace",
            timeout=30,
        )
        opened.append(child)
        return child

    yield spawn
    for child in opened:
        child.close(force=True)


@pytest.fixture
def busybox(kiwi, busybox_tar) -> str:
    kiwi("import", "--name", "busybox", busybox_tar)
    return "busybox"
