"""quickstop.py (the everyday `kiwi stop c`) decides under the container's lock, before
anything is signalled, whether it may stop with what the start recorded; anything
else is Unusual (cmd_stop answers), with the lock released.

A running container is stood in for by this test's own process (its pid and start
time in runtime.json are a live init), its cgroups by folders under tmp_path (the
recorded cgroup.procs files must lie under quickattach.CGROUP_ROOT, moved there)."""

from __future__ import annotations

import fcntl
import json
import os
from types import SimpleNamespace

import pytest

from kiwi import freeze, listing, proc, quickattach, quickstop, version_text

CID, FOLDER = "abcdef000001", "0123456789ab"
CONTROLLERS = ("pids", "freezer")


def write_json(path, value, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    os.chmod(path, mode)


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "kiwi-data"
    for name in listing.PRIVATE_DIRS:
        (root / name).mkdir(parents=True, mode=0o700)
    write_json(root / "containers" / CID / "config.json", {"id": CID, "name": "web", "image": "bb"})
    (root / "folder-id").write_text(FOLDER + "\n")
    monkeypatch.setenv("KIWI_ROOT", str(root))
    monkeypatch.delenv("KIWI_CGROUP_PARENT", raising=False)
    cgroups = tmp_path / "cgroup"
    monkeypatch.setattr(quickattach, "CGROUP_ROOT", f"{cgroups}/")
    for controller in CONTROLLERS:
        directory = cgroups / controller / f"kiwi-{FOLDER}" / f"kiwi-{CID}"
        directory.mkdir(parents=True)
        (directory / "cgroup.procs").write_text(f"{os.getpid()}\n")
    (cgroups / "freezer" / f"kiwi-{FOLDER}" / f"kiwi-{CID}" / "freezer.state").write_text("THAWED\n")
    make_running(root)
    return root


def cgroup_dir(root, controller: str = "pids"):
    return root.parent / "cgroup" / controller / f"kiwi-{FOLDER}" / f"kiwi-{CID}"


def make_running(data, mode: int = 0o600, procs: list[str] | None = None, **record) -> None:
    pid = os.getpid()
    procs = procs or [str(cgroup_dir(data, c) / "cgroup.procs") for c in CONTROLLERS]
    base = {
        "init_pid": pid,
        "init_start_time": proc.process_start_time(pid),
        "veth": "kw0123456789ab",
        "folder": FOLDER,
        "enter": {"kiwi": version_text(), "procs": procs},
    }
    write_json(data / "mounts" / CID / "runtime.json", {**base, **record}, mode)


def lock_is_free(root) -> bool:
    fd = os.open(root / ".locks" / f"{CID}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def prepared(root, ref: str = "web") -> quickstop.QuickStop:
    stop = quickstop.prepare(SimpleNamespace(container=ref, time=10))
    assert not lock_is_free(root)  # held from the decision to the end of the stop
    return stop


def test_it_stops_with_what_the_start_recorded(root):
    stop = prepared(root)
    assert (stop.cid, stop.folder_id, stop.idle) == (CID, FOLDER, True)
    stop.close()
    assert lock_is_free(root)


def test_a_process_of_its_own_keeps_the_bridge_until_it_exits(root):
    (cgroup_dir(root) / "cgroup.procs").write_text(f"{os.getpid()}\n{os.getppid()}\n")
    stop = prepared(root)
    assert not stop.idle  # pytest's parent is no Kiwi helper
    stop.close()
    make_running(root, veth=None)
    stop = prepared(root)
    assert not stop.idle  # the host's network: no bridge to release
    stop.close()


def test_a_relative_cgroup_parent_is_where_the_setting_says(root, monkeypatch):
    monkeypatch.setenv("KIWI_CGROUP_PARENT", f"kiwi-{FOLDER}")
    prepared(root).close()
    monkeypatch.setenv("KIWI_CGROUP_PARENT", "elsewhere")
    with pytest.raises(listing.Unusual):
        quickstop.prepare(SimpleNamespace(container=CID, time=10))


@pytest.mark.parametrize(
    "case",
    [
        "not root",
        "no such container",
        "stopped",
        "dead init",
        "record of another folder",
        "folder id not the recorded one",
        "freeze lease",
        "frozen v1",
        "frozen v2",
        "mounted",
        "session files",
        "no facts",
        "another build",
        "procs outside the cgroup mounts",
        "procs of no cgroup",
        "a cgroup below",
        "record writable by others",
        "record not root's",
        "no lock folder",
    ],
)
def test_what_it_leaves_to_cmd_stop(root, case, monkeypatch):
    prepared(root).close()  # the case alone sends it away
    folder = root / "mounts" / CID
    if case == "not root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    elif case == "stopped":
        (folder / "runtime.json").unlink()
    elif case == "dead init":
        make_running(root, init_pid=2**22 + 1)
    elif case == "record of another folder":
        make_running(root, root="/elsewhere/kiwi-data")
    elif case == "folder id not the recorded one":
        make_running(root, folder="ba9876543210")
    elif case == "freeze lease":
        write_json(folder / freeze.LEASE, {"pid": 1, "start_time": 1})
    elif case == "frozen v1":
        (cgroup_dir(root, "freezer") / "freezer.state").write_text("FROZEN\n")
    elif case == "frozen v2":
        (cgroup_dir(root) / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    elif case == "mounted":
        write_json(folder / "mount.json", {"target": "/mnt"})
    elif case == "session files":
        (folder / "sessions").mkdir()
    elif case == "no facts":
        make_running(root, enter=None)
    elif case == "another build":
        make_running(root, enter={"kiwi": "kiwi 0.0.1 (an older build)", "procs": []})
    elif case == "procs outside the cgroup mounts":
        make_running(root, procs=[f"/tmp/kiwi-{FOLDER}/kiwi-{CID}/cgroup.procs"])
    elif case == "procs of no cgroup":
        os.unlink(cgroup_dir(root) / "cgroup.procs")
    elif case == "a cgroup below":
        (cgroup_dir(root) / "nested").mkdir()
    elif case == "record writable by others":
        os.chmod(folder / "runtime.json", 0o622)
    elif case == "record not root's":
        os.chown(folder / "runtime.json", 1000, 1000)
    elif case == "no lock folder":
        (root / ".locks" / f"{CID}.lock").unlink()
        os.rmdir(root / ".locks")
    with pytest.raises((listing.Unusual, OSError)):
        quickstop.prepare(
            SimpleNamespace(container="nope" if case == "no such container" else "web", time=10)
        )
    if case != "no lock folder":
        assert lock_is_free(root)  # nothing done, nothing held: cmd_stop takes it
