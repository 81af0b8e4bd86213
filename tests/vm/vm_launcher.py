"""The one way the VM tier boots QEMU: scripts/vm-test, from the host, output captured.

vm_test() runs any command in the guest; pytest_in_vm() runs pytest in the guest's
pure cgroup v2 kernel against the host's frozen kiwi and test images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VM_TEST = REPO / "scripts" / "vm-test"
HOST_MARGIN = 300  # seconds the host waits beyond the guest's own --timeout (boot, teardown)


def vm_test(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/vm-test with these arguments, from the checkout, stdout and stderr as text."""
    return subprocess.run(
        [str(VM_TEST), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def pytest_in_vm(
    test_images: Path, pytest_args: list[str], vm_timeout: int, memory_mib: int | None = None
) -> subprocess.CompletedProcess:
    """pytest inside the VM (KIWI_EXPECT_CGROUP=v2) on the same dist/kiwi (or KIWI_BIN)."""
    binary = os.environ.get("KIWI_BIN", str(REPO / "dist" / "kiwi"))
    # /tmp on ext4: the Debian 6.1 kernel has no idmapped mounts on tmpfs (6.3+), and an
    # unprivileged container (the default) idmaps its image and state.
    options = ["--timeout", str(vm_timeout), "--tmp", "ext4"]
    if memory_mib is not None:
        options += ["--memory", str(memory_mib)]
    for setting in ("KIWI_EXPECT_CGROUP=v2", f"KIWI_BIN={binary}", f"KIWI_TEST_CACHE={test_images}"):
        options += ["--env", setting]
    inner = [".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    return vm_test(*options, "--", *inner, timeout=vm_timeout + HOST_MARGIN)


def assert_passes_in_vm(
    test_images: Path, pytest_args: list[str], passed: int, vm_timeout: int = 900
) -> None:
    """pytest_in_vm, its output shown, and exactly `passed` tests passed."""
    import sys

    done = pytest_in_vm(test_images, pytest_args, vm_timeout=vm_timeout)
    sys.stdout.write(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"{passed} passed" in done.stdout
