"""Pure logic of kiwi.cgroups: parsing, path resolution, validation."""

from pathlib import Path

import pytest
from cgroup_readback import folders, parse_max

from kiwi import cgroups
from kiwi.cgroups import Cgroup, Mount
from kiwi.errors import KiwiError

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 8:1 / /home rw,relatime - ext4 /dev/sda1 rw
"""

PURE_V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"

HYBRID_PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/276a
2:cpu,cpuacct:/
3:cpuset:/
0::/
"""


def _mount(point="/sys/fs/cgroup", root="/", fstype="cgroup2", options=("rw",)):
    return Mount(point, root, fstype, frozenset(options))


def test_parse_mountinfo_keeps_only_cgroup_mounts():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.mountpoint for m in mounts][-1] == "/sys/fs/cgroup/unified"
    assert len(mounts) == 7
    assert {"cpu", "cpuacct"} <= mounts[0].options
    assert mounts[-1].fstype == "cgroup2"


def test_parse_mountinfo_unescapes_paths():
    text = r"41 31 0:38 /a\040b /mnt/my\040cg rw - cgroup2 cgroup2 rw" + "\n"
    (mount,) = cgroups.parse_mountinfo(text)
    assert (mount.mountpoint, mount.root) == ("/mnt/my cg", "/a b")


def test_parse_proc_cgroup_splits_comounted_controllers():
    paths = cgroups.parse_proc_cgroup(HYBRID_PROC_CGROUP)
    assert paths["memory"] == "/process_api/276a"
    assert paths["cpu"] == paths["cpuacct"] == "/"
    assert paths["unified"] == "/"
    assert paths["name=systemd"] == "/"


@pytest.mark.parametrize(
    "text, cpus",
    [("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]), ("0\n", [0]), ("", []), ("2,1,1", [1, 2])],
)
def test_parse_cpu_list(text, cpus):
    assert cgroups.parse_cpu_list(text) == cpus


@pytest.mark.parametrize("cpus, text", [([0, 1, 2, 5], "0-2,5"), ([3], "3"), ([], ""), ([4, 0, 1], "0-1,4")])
def test_format_cpu_list(cpus, text):
    assert cgroups.format_cpu_list(cpus) == text


@pytest.mark.parametrize(
    "value, normal",
    [("/kiwi", "/kiwi"), ("/", "/"), ("kiwi-test-1", "kiwi-test-1"), ("a//b/", "a/b"), ("//x", "/x")],
)
def test_validate_parent_normalises(value, normal):
    assert cgroups.validate_parent(value) == normal


@pytest.mark.parametrize("value", ["", "../escape", "/kiwi/../x", "a/./b", "x\0y"])
def test_validate_parent_refuses_tricks(value):
    with pytest.raises(KiwiError):
        cgroups.validate_parent(value)


@pytest.mark.parametrize("cid", ["8f3b9d2a1c44", "000000000000"])
def test_valid_cids(cid):
    assert cgroups.cgroup_name(cid) == "kiwi-" + cid


def test_every_id_the_store_makes_is_a_valid_cgroup_cid():
    from kiwi.store import new_container_id

    for _ in range(200):
        cid = new_container_id()
        assert cgroups.cgroup_name(cid) == "kiwi-" + cid


# The store's rule, [0-9a-f]{12}: one validator for both.
@pytest.mark.parametrize(
    "cid",
    ["", "..", "a/b", "a.b", "x" * 65, None, "abc", "a_b-c", "8F3B9D2A1C44", "8f3b9d2a1c4", "8f3b9d2a1c44\n"],
)
def test_invalid_cids_are_refused(cid):
    with pytest.raises(KiwiError):
        cgroups.validate_cid(cid)


def test_parent_cgroup_path_absolute_and_relative():
    assert cgroups.parent_cgroup_path("/kiwi", "/process_api/276a") == "/kiwi"
    assert cgroups.parent_cgroup_path("kt", "/process_api/276a") == "/process_api/276a/kt"
    assert cgroups.parent_cgroup_path("kt", "/") == "/kt"


def test_fs_path_within_whole_and_subtree_mounts():
    whole = _mount("/sys/fs/cgroup/memory", "/", "cgroup")
    assert cgroups.fs_path(whole, "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    assert cgroups.fs_path(whole, "/") == Path("/sys/fs/cgroup/memory")
    subtree = _mount("/sys/fs/cgroup", "/machine/c1")
    assert cgroups.fs_path(subtree, "/machine/c1/kiwi") == Path("/sys/fs/cgroup/kiwi")
    with pytest.raises(KiwiError, match="outside"):
        cgroups.fs_path(subtree, "/kiwi")


def test_chain_runs_from_mount_root_down():
    assert cgroups._chain(_mount(), "/a/b/c") == ["/", "/a", "/a/b", "/a/b/c"]
    assert cgroups._chain(_mount(root="/m"), "/m/x") == ["/m", "/m/x"]
    assert cgroups._chain(_mount(), "/") == ["/"]


def test_pure_v2_host_is_v2():
    mounts = cgroups.parse_mountinfo(PURE_V2_MOUNTINFO)
    assert cgroups._usable_v2_mount(mounts) == mounts[0]


def test_hybrid_unified_without_controllers_is_v1(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    assert cgroups._usable_v2_mount([_mount(str(tmp_path))]) is None


def test_hybrid_unified_with_controllers_is_v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mount = _mount(str(tmp_path))
    assert cgroups._usable_v2_mount([mount]) == mount


def test_v1_mounts_map_comounted_controllers_and_prefer_whole_hierarchy():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    bind = _mount("/elsewhere/memory", "/sub", "cgroup", ("rw", "memory"))
    found = cgroups._v1_mounts([bind] + mounts)
    assert found["cpu"] is found["cpuacct"]
    assert found["memory"].mountpoint == "/sys/fs/cgroup/memory"
    assert set(found) == {"memory", "cpu", "cpuacct", "cpuset", "pids", "freezer"}


def test_v1_cgroup_paths_share_comounted_directory():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    own = cgroups.parse_proc_cgroup(HYBRID_PROC_CGROUP)
    version, parents = cgroups.resolve_parents("kt", mounts, own, None)
    group = Cgroup("8f3b9d2a1c44", version, parents, "0123456789ab")
    assert group.path("memory") == Path("/sys/fs/cgroup/memory/process_api/276a/kt/kiwi-8f3b9d2a1c44")
    assert (
        group.path("cpu") == group.path("cpuacct") == Path("/sys/fs/cgroup/cpu,cpuacct/kt/kiwi-8f3b9d2a1c44")
    )
    assert len(group._unique_dirs()) == 5
    assert group.path("freezer") == Path("/sys/fs/cgroup/freezer/kt/kiwi-8f3b9d2a1c44")
    assert group.version == "v1"


def test_absolute_parent_ignores_own_cgroup():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    own = cgroups.parse_proc_cgroup(HYBRID_PROC_CGROUP)
    _, parents = cgroups.resolve_parents("/kiwi", mounts, own, None)
    assert Cgroup("8f3b9d2a1c44", "v1", parents, "0123456789ab").path("memory") == Path(
        "/sys/fs/cgroup/memory/kiwi/kiwi-8f3b9d2a1c44"
    )


def test_relative_parent_on_v2_goes_below_own_cgroup():
    mount = cgroups.parse_mountinfo(PURE_V2_MOUNTINFO)[0]
    version, parents = cgroups.resolve_parents("kt", [mount], {"unified": "/user.slice/s.scope"}, mount)
    assert version == "v2"
    assert Cgroup("8f3b9d2a1c44", version, parents, "0123456789ab").path("pids") == Path(
        "/sys/fs/cgroup/user.slice/s.scope/kt/kiwi-8f3b9d2a1c44"
    )


def test_missing_v1_controllers_is_a_clear_error():
    mounts = [m for m in cgroups.parse_mountinfo(HYBRID_MOUNTINFO) if "pids" not in m.options]
    with pytest.raises(KiwiError, match="pids"):
        cgroups.resolve_parents("/kiwi", mounts, {}, None)


def test_v2_cgroup_uses_one_directory_for_every_controller():
    group = Cgroup("8f3b9d2a1c44", "v2", {"unified": (_mount(), "/kiwi")}, "0123456789ab")
    expected = Path("/sys/fs/cgroup/kiwi/kiwi-8f3b9d2a1c44")
    assert group.path("memory") == group.path("cpuset") == group.path("freezer") == expected
    assert (group.version, group.name) == ("v2", "kiwi-8f3b9d2a1c44")
    assert folders(group) == {"unified": str(expected)}


def test_events_parser_reads_key_value_files(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert cgroups._events(events)["oom_kill"] == 1
    control = tmp_path / "memory.oom_control"
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert cgroups._events(control) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "64M"])
def test_limit_values_must_be_positive_integers(value):
    with pytest.raises(KiwiError):
        cgroups._check_limit("memory", value)


def test_parse_max():
    assert parse_max("max\n") is None
    assert parse_max("1024\n") == 1024
