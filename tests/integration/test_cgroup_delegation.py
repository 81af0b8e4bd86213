"""Issue 15: the container's cgroup delegated to its (unprivileged) root where cgroup v2
allows it; on a v1 host (this one) nothing is delegated. The same test runs on both:
here, and inside the pure cgroup v2 VM (tests/vm/test_vm_delegation.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_limits import cgroup_of
from test_limits_inside import wait_until

pytestmark = pytest.mark.limits

MIB = 1024 * 1024
DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
LIMITS = (
    "memory.max",
    "pids.max",
    "cpu.max",
    "cpuset.cpus",
    "cgroup.max.depth",
    "cgroup.max.descendants",
    "cgroup.type",
    "cgroup.freeze",
)

# systemd's first steps in a container: move everyone (PID 1 too) to a leaf, hand
# controllers to the children, make a child with a limit of its own and run in it.
SYSTEMD_LIKE = """
set -e
cd /sys/fs/cgroup
mkdir init.scope work
for p in $(cat cgroup.procs); do echo $p > init.scope/cgroup.procs; done
echo "+memory +pids" > cgroup.subtree_control
echo 16M > work/memory.max
echo $$ > work/cgroup.procs
echo "IN $(cat /proc/self/cgroup) $(cat work/memory.max) $(cat cgroup.subtree_control)"
"""

# What a hostile root tries against its own limits and cgroup.
ATTACKS = """
cd /sys/fs/cgroup
for f in memory.max pids.max cpu.max cpuset.cpus cgroup.max.depth cgroup.max.descendants; do
  echo max > $f 2>/dev/null && echo "WROTE $f"
done
echo threaded > cgroup.type 2>/dev/null && echo "WROTE cgroup.type"
echo 1 > cgroup.freeze 2>/dev/null && echo "WROTE cgroup.freeze"
chmod 666 memory.max 2>/dev/null && echo "CHMOD memory.max"
echo $$ > ../cgroup.procs 2>/dev/null && echo "MOVED up"
mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo $$ > /tmp/cg/../cgroup.procs 2>/dev/null && echo "MOVED out"
cat /proc/self/cgroup
"""


# Root inside replaces the leaf Kiwi gave it with one it made and freezes, limits and
# invalidates what it can there (on Kiwi before the payload layout, the leaf was in the folder
# the container owned: attach then joined this cgroup, kiwi-exec's host-side parent too).
REPLACE_LEAF = """
cd /sys/fs/cgroup
rmdir kiwi-attach 2>/dev/null && echo REMOVED
mkdir -p kiwi-attach && echo 16M > kiwi-attach/memory.max 2>/dev/null; echo 1 > kiwi-attach/cgroup.freeze
echo "+memory +pids" > cgroup.subtree_control 2>/dev/null
mkdir mine && echo threaded > mine/cgroup.type 2>/dev/null
true
"""


def base_of(kiwi, cid: str) -> int:
    return json.loads((kiwi.root / "containers" / cid / "config.json").read_text())["idmap"]["base"]


def owner(path: Path) -> int:
    return os.stat(path).st_uid


def test_cgroup_is_delegated_on_v2_and_not_on_v1(kiwi, busybox):
    cid = kiwi.create(busybox, "--memory", "64M")
    kiwi("set", cid, "--privileged", "no")
    kiwi("start", cid)
    group = cgroup_of(kiwi, cid)
    assert group.version == os.environ.get("KIWI_EXPECT_CGROUP", group.version)  # the VM tier: v2
    mounts = kiwi.out("attach", cid, "--", "cat", "/proc/mounts")
    if group.version == "v1":
        # v1: limits live in the same folders as the task lists and there is no
        # namespace-root rule: nothing is handed over, nothing is mounted.
        for directory in {group.path(c) for c in ("memory", "cpu", "pids", "cpuset")}:
            assert owner(directory) == 0 and owner(directory / "cgroup.procs") == 0
        assert " /sys/fs/cgroup " not in mounts
        assert kiwi.sh(cid, "mkdir /sys/fs/cgroup/x", check=False).returncode != 0
        return

    top, base = group.path("memory"), base_of(kiwi, cid)
    payload = top / "payload"
    # The container's cgroup and everything directly in it stay host root's; its root gets the
    # payload below it (its init, its cgroup namespace root), Kiwi keeps a leaf beside it.
    assert owner(top) == 0 and all(owner(top / name) == 0 for name in (*DELEGATED, *LIMITS))
    assert owner(payload) == base and all(owner(payload / name) == base for name in DELEGATED)
    assert all(owner(payload / name) == 0 for name in LIMITS)
    assert (payload / "memory.max").read_text().strip() == str(64 * MIB)  # shown inside too
    assert "/sys/fs/cgroup cgroup2 " in mounts
    # Entering processes: kiwi-exec's waiting parent (outside the PID namespace) joins Kiwi's
    # leaf beside the payload, the command a leaf of the container's own tree.
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/cgroup") == "0::/kiwi-attach"
    assert owner(top / "kiwi-attach") == owner(top / "kiwi-attach" / "cgroup.procs") == 0  # Kiwi's own
    assert kiwi.out("attach", cid, "--", "cat", "/sys/fs/cgroup/memory.max") == str(64 * MIB)

    attacked = kiwi.sh(cid, ATTACKS, check=False).stdout
    assert "WROTE" not in attacked and "MOVED" not in attacked and "CHMOD" not in attacked, attacked
    assert attacked.strip().splitlines()[-1] == "0::/kiwi-attach"
    assert (top / "memory.max").read_text().strip() == str(64 * MIB)

    out = kiwi.sh(cid, SYSTEMD_LIKE).stdout
    assert f"IN 0::/work {16 * MIB} memory pids" in out, out
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/cgroup") == "0::/kiwi-attach"
    # Limits set from outside still bind the whole subtree, and still apply live.
    kiwi("set", cid, "--memory", "48M")
    assert (top / "memory.max").read_text().strip() == str(48 * MIB)
    done = kiwi.sh(
        cid,
        "echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs; dd if=/dev/zero of=/dev/null bs=100M count=1",
        check=False,
        timeout=120,
    )
    assert done.returncode == 128 + 9, (done.returncode, done.stderr)
    assert len(group.pids()) >= 1  # the init, moved to init.scope by the container, is counted

    # Root inside replaces what it sees of Kiwi's leaf: kiwi-exec's parent still joins
    # Kiwi's own, which the container can neither reach, freeze nor limit, and attach works.
    kiwi.sh(cid, REPLACE_LEAF)
    waiting = subprocess.Popen([*kiwi.cmd, "attach", cid, "--", "sleep", "30"], env=kiwi.env)
    try:
        # The command went to a leaf Kiwi made again in place of the frozen one, kiwi-exec's
        # waiting parent (it forked the command) to Kiwi's own beside the payload.
        assert wait_until(lambda: len(procs_of(payload / "kiwi-attach")) == 1, 60), "the command"
        host_side = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in procs_of(top / "kiwi-attach")]
        assert "kiwi-exec" in host_side, host_side
        assert owner(payload / "kiwi-attach" / "cgroup.procs") == 0
        assert "frozen 0" in (payload / "kiwi-attach" / "cgroup.events").read_text()
        assert owner(top / "kiwi-attach") == 0 and owner(top / "kiwi-attach" / "memory.max") == 0
        assert (top / "kiwi-attach" / "cgroup.events").read_text().count("frozen 0") == 1
        assert kiwi.out("attach", cid, "--", "echo", "in") == "in"
    finally:
        waiting.kill()
        waiting.wait()

    kiwi("stop", cid)
    assert not top.exists()  # the children the container made went with it


def procs_of(cgroup: Path) -> list[str]:
    return (cgroup / "cgroup.procs").read_text().split()


def test_attach_refuses_a_cgroup_an_older_kiwi_handed_whole(kiwi, busybox):
    """Kiwi before the payload layout chowned the container's cgroup itself to its root, with
    Kiwi's attach leaf inside: the container could turn a controller off and on in that
    folder's cgroup.subtree_control and own the leaf's pids.max and memory.max, limits on
    kiwi-exec's host-side parent. Attach to such a container says to restart it, joins nothing."""
    cid = kiwi.create(busybox)
    kiwi("set", cid, "--privileged", "no")
    kiwi("start", cid)
    group = cgroup_of(kiwi, cid)
    if group.version == "v1":  # nothing is ever delegated on v1: there is no older layout
        assert kiwi.out("attach", cid, "--", "echo", "in") == "in"
        return
    top, base = group.path("memory"), base_of(kiwi, cid)
    leaf = top / "kiwi-attach"
    for path in (top, *(top / name for name in DELEGATED)):  # what the older Kiwi's delegate did
        os.chown(path, base, base)
    servers = procs_of(leaf)  # the limits servers, there since the start
    done = kiwi("attach", cid, "--", "echo", "in", check=False)
    assert done.returncode == 1 and done.stdout == "", (done.returncode, done.stdout)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "older Kiwi" in lines[0] and "restart" in lines[0], done.stderr
    assert procs_of(leaf) == servers  # nothing of the attach joined it
    # In a folder the container owns, a child named payload is a cgroup it made.
    (top / "payload" / "memory.max").write_text("max")
    kiwi("set", cid, "--memory", "32M")  # binds from the container's own folder, as before
    assert (top / "memory.max").read_text().strip() == str(32 * MIB)
    assert (top / "payload" / "memory.max").read_text().strip() == "max"  # not Kiwi's to write
    kiwi("stop", cid)
    assert not top.exists()
