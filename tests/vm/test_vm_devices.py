"""The device allowlist on a pure cgroup v2 kernel: the eBPF device program.
One VM boot running one test inside (one container start, one open)."""

from __future__ import annotations

import pytest
from vm_launcher import assert_passes_in_vm

pytestmark = pytest.mark.vm

INNER_TEST = "tests/security/test_confinement.py::test_smuggled_block_device_stays_closed"


def test_device_program_inside_cgroup_v2_vm(test_images):
    assert_passes_in_vm(test_images, [INNER_TEST], passed=1)
