"""Smoke test of the VM tier: runs on the host and boots scripts/vm-test.

One boot runs tests/vm/guest_checks.sh, which reports each capability the
integration tests need; a second, short run checks the timeout path.
"""

import os
from pathlib import Path

import pytest
from vm_launcher import vm_test

GUEST_CHECKS = Path(__file__).with_name("guest_checks.sh")
CHECKS_EXIT_STATUS = 42

pytestmark = pytest.mark.vm


def parse_checks(stdout):
    """{'name': 'ok' | 'FAIL <output>'} from the CHECK lines."""
    results = {}
    for line in stdout.splitlines():
        if line.startswith("CHECK "):
            _, name, outcome = line.split(" ", 2)
            results[name] = outcome
    return results


@pytest.fixture(scope="module")
def guest_run():
    caller_env = dict(os.environ, KIWI_VM_PASSED="from caller")
    result = vm_test(
        "--env",
        "KIWI_VM_SMOKE=a b'c",
        "--env",
        "KIWI_VM_PASSED",
        "--env",
        "RUN=must not disturb the guest's init",
        "--",
        "sh",
        str(GUEST_CHECKS),
        env=caller_env,
    )
    return result, parse_checks(result.stdout)


def test_exit_status_comes_back(guest_run):
    result, _ = guest_run
    assert result.returncode == CHECKS_EXIT_STATUS, result.stdout + result.stderr


@pytest.mark.parametrize(
    "check",
    [
        "cgroup2",
        "loop_ext4",
        "overlay",
        "fuse",
        "unshare",
        "veth_bridge",
        "reaping",
        "environment",
        "checkout_writable",
    ],
)
def test_guest_capability(guest_run, check):
    result, checks = guest_run
    assert checks.get(check) == "ok", result.stdout + result.stderr


def test_timeout_kills_the_vm():
    result = vm_test("--timeout", "2", "--", "sleep", "600")
    assert result.returncode == 124
    assert "timed out" in result.stderr
