"""`kiwi cleanup` leaves a live `kiwi cp` work folder alone and removes a dead one.

privatens.work_folder names it .tmp/cp-<pid>-...; cleanup.clean_tmp keeps an entry while
that pid lives. The copy's helper is held mid-copy by strace (SIGSTOP injected into its
first copy_file_range, the file data being copied), so the test waits on no clock."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

DATA = os.urandom(64 * 1024)


def held_copy(kiwi, source: Path, dest: str) -> subprocess.Popen:
    """`kiwi cp source dest`, its helper stopped once its work folder is mounted."""
    return subprocess.Popen(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range"]
        + ["-e", "inject=copy_file_range:signal=SIGSTOP:when=1"]
        + [*kiwi.cmd, "cp", str(source), dest],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stopped_helper(kiwi, copy: subprocess.Popen) -> tuple[Path, int]:
    """The work folder of the held copy and its helper's pid, once the container's root is
    mounted there: the helper cannot unmount it before its first copy_file_range."""
    deadline = time.monotonic() + 60  # a hang guard, not a timing check
    while time.monotonic() < deadline:
        assert copy.poll() is None, copy.communicate()
        for work in (kiwi.root / ".tmp").glob("cp-*"):
            pid = int(work.name.split("-")[1])
            if state_of(pid) is not None and mounted_in(pid, work / "merged"):
                return work, pid
        time.sleep(0.05)
    raise AssertionError("the copy's helper never mounted its work folder")


def resume(copy: subprocess.Popen, helper: int) -> tuple[str, str]:
    """SIGCONT until the copy ends: one sent before the injected SIGSTOP is lost."""
    deadline = time.monotonic() + 120  # a hang guard
    while copy.poll() is None and time.monotonic() < deadline:
        if state_of(helper) is not None:
            os.kill(helper, signal.SIGCONT)
        time.sleep(0.05)
    return copy.communicate(timeout=60)


def state_of(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def mounted_in(pid: int, path: Path) -> bool:
    return any(
        line.split()[4] == str(path) for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    )


@pytest.fixture
def stopped_container(kiwi, busybox, tmp_path):
    source = tmp_path / "data"
    source.write_bytes(DATA)
    return kiwi.create(busybox), source


def end_copy(copy: subprocess.Popen, helper: int | None) -> None:
    """On a failure: the held helper killed, the copy and its strace waited for."""
    if copy.poll() is None:
        if helper is not None and state_of(helper) is not None:
            os.kill(helper, signal.SIGKILL)
        try:
            copy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            copy.kill()
            copy.wait()


def test_cleanup_leaves_a_live_copy_alone(kiwi, stopped_container):
    cid, source = stopped_container
    copy, helper = held_copy(kiwi, source, f"{cid}:/data"), None
    try:
        work, helper = stopped_helper(kiwi, copy)
        assert kiwi.out("cleanup") == "nothing to clean up"
        assert work.is_dir()
        assert mounted_in(helper, work / "merged")  # its view of the container is still there
        out, err = resume(copy, helper)
        assert copy.returncode == 0, (out, err)
    finally:
        end_copy(copy, helper)
    assert not work.exists()  # the copy removed its own folder on the way out
    assert kiwi("cp", f"{cid}:/data", source.parent / "back").returncode == 0
    assert (source.parent / "back").read_bytes() == DATA
    assert kiwi.out("cleanup") == "nothing to clean up"


def test_cleanup_removes_a_dead_copy_folder(kiwi, stopped_container):
    cid, source = stopped_container
    copy, helper = held_copy(kiwi, source, f"{cid}:/data"), None
    try:
        work, helper = stopped_helper(kiwi, copy)
        os.kill(helper, signal.SIGKILL)  # a crash mid-copy: the folder stays behind
        out, err = copy.communicate(timeout=120)
        assert copy.returncode == 1, (out, err)
        assert len(err.splitlines()) == 1 and err.startswith("kiwi: "), err
    finally:
        end_copy(copy, helper)
    assert work.is_dir()
    assert kiwi.out("cleanup") == f"removed half-written {work}"
    assert not work.exists()
    assert kiwi.out("cleanup") == "nothing to clean up"
