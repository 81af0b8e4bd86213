"""The limits tier inside a pure cgroup v2 kernel: the same tests/…/-m limits
tests that run on this hybrid host, run again by pytest INSIDE the QEMU VM
against the same frozen binary. Slow (software emulation): kept to the limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm


def test_limits_inside_cgroup_v2_vm(test_images):
    binary = os.environ.get("KIWI_BIN", str(REPO / "dist" / "kiwi"))
    inner = [
        ".venv/bin/python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "limits",
        "tests/integration/test_limits.py",
        "tests/integration/test_cgroups.py",
    ]
    started = time.monotonic()
    done = subprocess.run(
        [
            str(REPO / "scripts" / "vm-test"),
            "--timeout",
            "2400",
            "--memory",
            "8192",
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
        timeout=2700,
    )
    wall = time.monotonic() - started
    sys.stdout.write(done.stdout[-6000:])
    print(f"\nVM limits tier wall time: {wall:.0f} s")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
