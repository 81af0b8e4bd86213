"""cgroup v2 delegation to an unprivileged container's root (issue 15), on a pure cgroup v2
kernel: one VM boot running the one delegation test inside (its v2 half; the v1 half
runs on this hybrid host)."""

from __future__ import annotations

import pytest
from vm_launcher import assert_passes_in_vm

pytestmark = pytest.mark.vm


def test_cgroup_delegation_inside_cgroup_v2_vm(test_images):
    assert_passes_in_vm(test_images, ["tests/integration/test_cgroup_delegation.py"], passed=2)
