"""The limits tier inside a pure cgroup v2 kernel: the same tests/…/-m limits
tests that run on this hybrid host, run again by pytest INSIDE the QEMU VM
against the same frozen binary. Slow (software emulation): kept to the limits."""

from __future__ import annotations

import sys
import time

import pytest
from vm_launcher import pytest_in_vm

pytestmark = pytest.mark.vm

INNER_TESTS = [
    "-m",
    "limits",
    "tests/integration/test_limits.py",
    "tests/integration/test_cgroups.py",
    "tests/integration/test_limits_inside.py",  # its one v2 test of kiwi-lxfs and kiwi-sysinfo
]


def test_limits_inside_cgroup_v2_vm(test_images):
    started = time.monotonic()
    done = pytest_in_vm(test_images, INNER_TESTS, vm_timeout=2400, memory_mib=8192)
    wall = time.monotonic() - started
    sys.stdout.write(done.stdout[-6000:])
    print(f"\nVM limits tier wall time: {wall:.0f} s")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
