"""`kiwi cleanup` leaves a live `kiwi cp` work folder alone and removes a dead one.

privatens.work_folder names it .tmp/cp-<pid>-...; cleanup.clean_tmp keeps an entry while
that pid lives. The copy's helper is held mid-copy by strace (SIGSTOP injected into its
first copy_file_range, the file data being copied), so the test waits on no clock."""

from __future__ import annotations

import os
import signal

import pytest
from held_copy import end_copy, held_copy, mounted_in, resume, stopped_helper

DATA = os.urandom(64 * 1024)


@pytest.fixture
def stopped_container(kiwi, busybox, tmp_path):
    source = tmp_path / "data"
    source.write_bytes(DATA)
    return kiwi.create(busybox), source


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
