"""enter.open_join_file: where a process joins a cgroup by writing "0". v1's `tasks`
beside the recorded cgroup.procs (no RCU grace period per join, issue 20), v2's
cgroup.procs itself (v2 has no tasks file)."""

import os

from kiwi import enter


def opened_name(fd: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def test_a_v1_cgroup_is_joined_through_tasks(tmp_path):
    for name in ("cgroup.procs", "tasks"):
        (tmp_path / name).write_text("")
    assert opened_name(enter.open_join_file(str(tmp_path / "cgroup.procs"))) == "tasks"


def test_a_v2_cgroup_is_joined_through_cgroup_procs(tmp_path):
    (tmp_path / "cgroup.procs").write_text("")
    assert opened_name(enter.open_join_file(str(tmp_path / "cgroup.procs"))) == "cgroup.procs"


def test_the_join_files_are_close_on_exec_and_write_only(tmp_path):
    for name in ("cgroup.procs", "tasks"):
        (tmp_path / name).write_text("")
    fds = enter.open_procs_files([str(tmp_path / "cgroup.procs")])
    try:
        assert not os.get_inheritable(fds[0])
        with open(f"/proc/self/fdinfo/{fds[0]}") as info:
            flags = int(info.read().split("flags:")[1].split()[0], 8)
        assert flags & os.O_ACCMODE == os.O_WRONLY
    finally:
        for fd in fds:
            os.close(fd)
