"""Issue 15: the container's cgroup delegated to its (unprivileged) root where cgroup v2
allows it; on a v1 host (this one) nothing is delegated. The same test runs on both:
here, and inside the pure cgroup v2 VM (tests/vm/test_vm_delegation.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_limits import cgroup_of

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
    assert owner(top) == base and all(owner(top / name) == base for name in DELEGATED)
    assert all(owner(top / name) == 0 for name in LIMITS)
    assert "/sys/fs/cgroup cgroup2 " in mounts
    # Entering processes join Kiwi's leaf: nothing from outside the PID namespace (kiwi-exec's
    # waiting parent) stays in the cgroup the container's root must be able to empty.
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/cgroup") == "0::/kiwi-attach"
    assert owner(top / "kiwi-attach") == owner(top / "kiwi-attach" / "cgroup.procs") == 0  # Kiwi's own

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

    kiwi("stop", cid)
    assert not top.exists()  # the children the container made went with it
