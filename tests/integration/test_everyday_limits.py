"""Limits visible inside (issue 17 item 11), the kernel's part: nproc follows --cpu
through the cpuset, df follows --storage through the container's own ext4.
(/proc/meminfo, cpuinfo, stat, uptime and cpu/online: test_limits_inside.py.)"""

from __future__ import annotations

import os

GIB = 1 << 30


def test_nproc_follows_cpu(kiwi, busybox):
    host_cpus = len(os.sched_getaffinity(0))
    cid = kiwi.create(busybox, "--cpu", "1")
    assert kiwi.sh(cid, "nproc").stdout.strip() == "1"
    kiwi("set", cid, "--cpu", "host")  # applies to the running container at once
    assert kiwi.sh(cid, "nproc").stdout.strip() == str(host_cpus)


def test_df_follows_storage(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "2G")
    size = int(kiwi.sh(cid, "df -k / | tail -1").stdout.split()[1]) * 1024
    assert 1.8 * GIB < size <= 2 * GIB  # ext4 keeps a little for itself
    kiwi("stop", cid)  # growing online needs CAP_SYS_RESOURCE, which this host withholds
    kiwi("set", cid, "--storage", "3G")
    size = int(kiwi.sh(cid, "df -k / | tail -1").stdout.split()[1]) * 1024
    assert 2.7 * GIB < size <= 3 * GIB
