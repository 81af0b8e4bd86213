"""The device allowlist on a pure cgroup v2 kernel: the eBPF device program.
One VM boot running one test inside (one container start, one open)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm

INNER_TEST = "tests/security/test_confinement.py::test_smuggled_block_device_stays_closed"


def test_device_program_inside_cgroup_v2_vm(test_images):
    binary = os.environ.get("KIWI_BIN", str(REPO / "dist" / "kiwi"))
    inner = [".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", INNER_TEST]
    done = subprocess.run(
        [
            str(REPO / "scripts" / "vm-test"),
            "--timeout",
            "900",
            "--env",
            "KIWI_EXPECT_CGROUP=v2",
            "--env",
            f"KIWI_BIN={binary}",
            "--env",
            f"KIWI_TEST_CACHE={test_images}",
            "--",
            *inner,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1000,
    )
    sys.stdout.write(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
