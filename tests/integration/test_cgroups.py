"""Real cgroups on this host (v1/hybrid here, pure v2 in the VM harness): same tests for both.

Every cgroup goes below a per-run relative KIWI_CGROUP_PARENT, i.e. below this test
process's own cgroup in each hierarchy; the fixture kills what the test started and
removes every cgroup it made, even when the test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cgroup_readback import cpu_usage_ns, folders, limits, memory_usage, oom_kills

from conftest import outweigh_host_load, wait_until
from kiwi import cgroups
from kiwi.errors import KiwiError

pytestmark = pytest.mark.limits

MiB = 1 << 20

# Started first, moved into the cgroup, then released: the payload never runs outside it.
GATE = "import os, sys; sys.stdin.buffer.readline(); os.execvp(sys.argv[1], sys.argv[1:])"

ALLOCATE_200M = "b = bytearray(b'x') * (200 << 20); print('survived')"

BUSY_TWO_PROCESSES = """
import os, time
end = time.monotonic() + 2.0
child = os.fork()
while time.monotonic() < end:
    pass
if child:
    os.waitpid(child, 0)
"""

FORK_UNTIL_REFUSED = """
import os
release_r, release_w = os.pipe()
forked = 0
while forked < 500:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.close(release_w)
        os.read(release_r, 1)  # wait until the parent closes the pipe
        os._exit(0)
    forked += 1
os.close(release_w)
print(forked, flush=True)
for _ in range(forked):
    os.wait()
"""

BUSY_FOREVER = "while True: pass"

HOLD_32M = """
import sys, time
held = bytearray(b'x') * (32 << 20)
print('ready', flush=True)
time.sleep(60)
"""


class CgroupLab:
    """Makes cgroups and child processes for one test and undoes all of it."""

    def __init__(self, parent: str):
        self.parent = parent
        self.folder = secrets.token_hex(6)  # the data folder these cgroups belong to
        self.cgroups: list[cgroups.Cgroup] = []
        self.children: list[subprocess.Popen] = []

    def cgroup(self, cid: str | None = None) -> cgroups.Cgroup:
        group = cgroups.Cgroup.for_container(cid or secrets.token_hex(6), self.folder)
        self.cgroups.append(group)
        group.create()
        return group

    def start(self, group: cgroups.Cgroup, *argv: str) -> subprocess.Popen:
        """Run argv inside `group` from its first instruction on."""
        child = subprocess.Popen(
            [sys.executable, "-c", GATE, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.children.append(child)
        group.add_pid(child.pid)
        child.stdin.write(b"go\n")
        child.stdin.close()
        child.stdin = None  # so communicate() does not flush a closed pipe
        return child

    def python(self, group: cgroups.Cgroup, code: str) -> subprocess.Popen:
        return self.start(group, sys.executable, "-c", code)

    def teardown(self) -> None:
        errors = []
        # Thaw and empty the cgroups first: a frozen v1 task ignores SIGKILL until thawed.
        for group in self.cgroups:
            _collect(errors, lambda g=group: g.is_frozen_quietly() and g.thaw())
            _collect(errors, group.kill_all)
        for child in self.children:
            _collect(errors, lambda c=child: _reap(c))
        for group in self.cgroups:
            _collect(errors, group.remove)
        _collect(errors, lambda: cgroups.remove_parent_if_empty(self.folder))
        _, parents = cgroups._parent_dirs(self.folder)
        leftovers = [str(d) for d in parents.values() if d.exists()]
        assert not errors, errors
        assert not leftovers, f"cgroups left behind: {leftovers}"


def _collect(errors: list, step) -> None:
    """Run one cleanup step; remember its failure and go on with the rest."""
    try:
        step()
    except Exception as exc:
        errors.append(exc)


def _reap(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=10)
    for stream in (child.stdout, child.stderr):
        if stream:
            stream.close()


@pytest.fixture
def lab(monkeypatch):
    parent = f"kiwi-test-{secrets.token_hex(4)}"
    monkeypatch.setenv("KIWI_CGROUP_PARENT", parent)
    lab = CgroupLab(parent)
    try:
        yield lab
    finally:
        lab.teardown()


def _finish(child: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, _ = child.communicate(timeout=timeout)
    return child.returncode, out.decode()


def test_backend_matches_the_host():
    unified = cgroups.backend() == "v2"
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        assert unified  # pure v2 host
    assert cgroups.backend() in ("v1", "v2")


# A process that joins by itself (stage 1 of a start does, as kiwi-exec and kiwi-lxfs do in C).
JOIN_SELF = """
import sys
from kiwi import cgroups
cgroups.Cgroup.for_container(sys.argv[1], sys.argv[2]).join()
print("joined", flush=True)
sys.stdin.buffer.read()
"""


def test_a_process_joins_itself_whole_in_every_hierarchy(lab):
    """Cgroup.join writes "0" to v1's tasks (cgroups.open_join_file): it moves the one
    thread of the writer, which must show up as a process of the cgroup everywhere."""
    group = lab.cgroup("0123456789ac")
    child = subprocess.Popen(
        [sys.executable, "-c", JOIN_SELF, "0123456789ac", lab.folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(cgroups.__file__).parent.parent)},
    )
    lab.children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline() == b"joined\n"
    for path in folders(group).values():
        assert str(child.pid) in Path(path, "cgroup.procs").read_text().split(), path


def test_cgroup_lives_below_own_cgroup_under_relative_parent(lab):
    group = lab.cgroup("0123456789ab")
    assert group.version == cgroups.backend()
    assert group.name == "kiwi-0123456789ab"
    own = cgroups.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    for key, path in folders(group).items():
        assert path.endswith(f"/{lab.parent}/kiwi-0123456789ab")
        assert Path(path).is_dir()
        own_key = "unified" if group.version == "v2" else key
        assert f"{own[own_key].rstrip('/')}/{lab.parent}/" in path
    if group.version == "v1":
        assert {"memory", "cpu", "cpuacct", "cpuset", "pids"} <= set(folders(group))


def test_create_is_idempotent_and_listed(lab):
    group = lab.cgroup("feedfacecafe")
    group.create()
    assert group.exists()
    assert cgroups.list_container_cgroups(lab.folder) == ["feedfacecafe"]


def test_limits_written_and_read_back(lab):
    group = lab.cgroup()
    group.set_limits(memory=64 * MiB, cpus=1, pids=50)
    first_cpu = group.usable_cpus()[0]
    assert limits(group) == {"memory": 64 * MiB, "cpus": 1.0, "cpuset": str(first_cpu), "pids": 50}
    if group.version == "v2":
        swap = group.path("memory") / "memory.swap.max"
        if swap.exists():
            assert swap.read_text().strip() == "0"
    else:
        memsw = group.path("memory") / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 64 * MiB  # swap adds nothing

    group.set_limits(memory=None, cpus=None, pids=None)
    everything = cgroups.format_cpu_list(group.usable_cpus())
    assert limits(group) == {"memory": None, "cpus": None, "cpuset": everything, "pids": None}


def test_default_pids_limit(lab):
    group = lab.cgroup()
    group.set_limits(memory=None, cpus=None)
    assert limits(group)["pids"] == 1024


def test_more_cpus_than_usable_is_refused(lab):
    group = lab.cgroup()
    usable = len(group.usable_cpus())
    with pytest.raises(KiwiError, match=f"only {usable} are usable"):
        group.set_limits(memory=None, cpus=usable + 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1"])
def test_bad_limit_values_are_refused(lab, bad):
    group = lab.cgroup()
    with pytest.raises(KiwiError, match="positive whole number"):
        group.set_limits(memory=bad, cpus=None)


def test_allocation_past_memory_limit_is_oom_killed(lab):
    group = lab.cgroup()
    group.set_limits(memory=64 * MiB, cpus=None)
    assert oom_kills(group) == 0
    status, out = _finish(lab.python(group, ALLOCATE_200M))
    assert status == -9, out
    assert "survived" not in out
    assert oom_kills(group) >= 1
    assert group.pids() == []


def test_one_cpu_limit_shows_in_nproc_and_usage(lab):
    group = lab.cgroup()
    group.set_limits(memory=None, cpus=1)

    status, out = _finish(lab.start(group, "nproc"))
    assert (status, out.strip()) == (0, "1")

    with outweigh_host_load(group):
        before, started = cpu_usage_ns(group), time.monotonic()
        status, _ = _finish(lab.python(group, BUSY_TWO_PROCESSES))
        used, wall = cpu_usage_ns(group) - before, time.monotonic() - started
    assert status == 0
    assert wall >= 2.0
    assert 0.8 <= used / (wall * 1e9) <= 1.2, f"{used / 1e9:.2f} s CPU in {wall:.2f} s"


def test_fork_loop_stops_at_pids_limit(lab):
    group = lab.cgroup()
    group.set_limits(memory=None, cpus=None, pids=50)
    status, out = _finish(lab.python(group, FORK_UNTIL_REFUSED))
    assert status == 0
    forked = int(out.strip())
    assert 40 <= forked <= 49  # the forking process itself counts as one of the 50


def test_memory_limit_changes_on_a_live_cgroup(lab):
    group = lab.cgroup()
    group.set_limits(memory=64 * MiB, cpus=None)
    holder = lab.python(group, HOLD_32M)
    assert holder.stdout.readline() == b"ready\n"
    assert group.pids() == [holder.pid]
    assert memory_usage(group) >= 32 * MiB

    group.set_limits(memory=128 * MiB, cpus=None)
    assert limits(group)["memory"] == 128 * MiB
    group.set_limits(memory=None, cpus=None)
    assert limits(group)["memory"] is None
    assert holder.poll() is None


def test_freeze_stops_and_thaw_resumes(lab):
    group = lab.cgroup()
    spinner = lab.python(group, BUSY_FOREVER)
    time.sleep(0.3)

    group.freeze()
    assert group.is_frozen()
    frozen_usage = cpu_usage_ns(group)
    time.sleep(0.5)
    assert cpu_usage_ns(group) - frozen_usage < 20_000_000  # at most a scheduler tick or two

    group.thaw()
    assert not group.is_frozen()
    thawed_usage = cpu_usage_ns(group)
    # Progress, not speed: other load on the host may share the CPU.
    assert wait_until(lambda: cpu_usage_ns(group) - thawed_usage > 100_000_000)
    assert spinner.poll() is None


def test_kill_all_takes_every_process_even_frozen(lab):
    group = lab.cgroup()
    shell = lab.start(group, "sh", "-c", "sleep 100 & sleep 100 & wait")
    spinner = lab.python(group, BUSY_FOREVER)
    assert wait_until(lambda: len(group.pids()) == 4)
    group.freeze()

    group.kill_all()
    assert group.pids() == []
    assert shell.wait(timeout=5) == -9
    assert spinner.wait(timeout=5) == -9
    group.thaw()

    group.remove()
    assert not group.exists()
    for path in folders(group).values():
        assert not os.path.exists(path)
    assert cgroups.list_container_cgroups(lab.folder) == []


def test_remove_is_idempotent(lab):
    group = lab.cgroup()
    group.remove()
    group.remove()
    assert not group.exists()
    assert group.pids() == []
    group.kill_all()  # nothing to kill, no error


def test_lowering_memory_below_usage(lab):
    group = lab.cgroup()
    group.set_limits(memory=128 * MiB, cpus=None)
    holder = lab.python(group, HOLD_32M)
    assert holder.stdout.readline() == b"ready\n"
    if group.version == "v1":
        # v1 cannot reclaim anonymous memory without swap: the write is refused, old limit kept.
        with pytest.raises(KiwiError, match="uses more"):
            group.set_limits(memory=8 * MiB, cpus=None)
        assert limits(group)["memory"] == 128 * MiB
        memsw = group.path("memory") / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 128 * MiB
        assert holder.poll() is None
    else:
        # v2 applies the limit and the OOM killer takes the holder.
        group.set_limits(memory=8 * MiB, cpus=None)
        assert holder.wait(timeout=10) == -9
        assert oom_kills(group) >= 1
