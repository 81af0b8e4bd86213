"""The device allowlist on a pure cgroup v2 kernel: the eBPF device program.
One VM boot running one test inside (one container start, one open)."""

from __future__ import annotations

import sys

import pytest
from vm_launcher import pytest_in_vm

pytestmark = pytest.mark.vm

INNER_TEST = "tests/security/test_confinement.py::test_smuggled_block_device_stays_closed"


def test_device_program_inside_cgroup_v2_vm(test_images):
    done = pytest_in_vm(test_images, [INNER_TEST], vm_timeout=900)
    sys.stdout.write(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
