"""Issue 17 item 5: start, restart, delete --force, rename, autostart and its systemd unit."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def status(kiwi, cid: str) -> str:
    return next(r["status"] for r in kiwi.json("list", "containers") if r["id"] == cid)


def init_start(kiwi, cid: str) -> str:
    return kiwi.out("attach", cid, "--", "cat", "/proc/1/stat").split()[21]


def test_start_restart_and_force_delete(kiwi, busybox):
    cid = kiwi.create("busybox", "--name", "life")
    assert kiwi.out("start", "life") == f"started {cid}"
    assert status(kiwi, cid) == "running"
    assert kiwi.out("start", cid) == f"{cid} is already running"
    before = init_start(kiwi, cid)
    kiwi.sh(cid, "echo kept > /root/mark")

    assert kiwi.out("restart", "life", "--time", "1") == f"restarted {cid}"
    assert status(kiwi, cid) == "running"
    assert init_start(kiwi, cid) != before  # a new init, the same files
    assert kiwi.out("attach", cid, "--", "cat", "/root/mark") == "kept"

    refused = kiwi("delete", cid, "--yes", check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr
    forced = kiwi.out("delete", cid, "--yes", "--force")
    assert forced.splitlines() == [f"stopped {cid}", f"deleted {cid} (life)"]
    assert kiwi.json("list", "containers") == []
    assert not os.path.exists(f"/sys/fs/cgroup/pids/{kiwi.env['KIWI_CGROUP_PARENT']}/{cid}")


def test_force_delete_of_a_mounted_container(kiwi, busybox, tmp_path):
    cid = kiwi.create("busybox")
    target = tmp_path / "mnt"
    target.mkdir()
    kiwi("mount", cid, target)
    out = kiwi.out("delete", cid, "--yes", "--force")
    assert out.splitlines() == [f"unmounted {cid} from {target}", f"deleted {cid}"]
    assert not os.path.ismount(target)


def test_rename_stopped_and_running(kiwi, busybox):
    cid = kiwi.create("busybox", "--name", "old")
    other = kiwi.create("busybox", "--name", "taken")
    assert kiwi.out("rename", "old", "new") == f"renamed {cid} to new"
    assert kiwi("attach", "old", "--", "true", check=False).returncode == 1
    assert kiwi.out("attach", "new", "--", "hostname") == "new"
    taken = kiwi("rename", "new", "taken", check=False)
    assert taken.returncode == 1 and "exists already" in taken.stderr
    bad = kiwi("rename", "new", "0123456789ab", check=False)
    assert bad.returncode == 1 and "look like a container id" in bad.stderr
    running = kiwi.out("rename", "new", "newer")
    assert running.splitlines()[-1] == "its hostname inside changes at the next start"
    assert kiwi.out("attach", "newer", "--", "hostname") == "new"
    kiwi("restart", "newer", "--time", "1")
    assert kiwi.out("attach", "newer", "--", "hostname") == "newer"
    names = {r["id"]: r["name"] for r in kiwi.json("list", "containers")}
    assert names == {cid: "newer", other: "taken"}


def test_autostart_starts_only_marked_containers(kiwi, busybox):
    on = kiwi.create("busybox", "--name", "on")
    off = kiwi.create("busybox", "--name", "off")
    kiwi("set", "on", "--autostart", "yes")
    kiwi("set", "off", "--autostart", "yes")
    kiwi("set", "off", "--autostart", "no")
    assert kiwi.out("autostart") == f"running {on}"
    assert status(kiwi, on) == "running" and status(kiwi, off) == "stopped"
    assert kiwi.out("autostart") == f"running {on}"  # again: nothing to do, nothing restarted


def test_autostart_goes_on_past_a_failure(kiwi, busybox, busybox_tar):
    kiwi("import", "--name", "doomed", busybox_tar)
    broken = kiwi.create("doomed", "--name", "broken")
    good = kiwi.create("busybox", "--name", "good")
    for cid in (broken, good):
        kiwi("set", cid, "--autostart", "yes")
    shutil.rmtree(kiwi.root / "images" / "doomed")  # broken's image is gone
    done = kiwi("autostart", check=False)
    assert done.returncode == 1
    assert done.stdout.strip() == f"running {good}"
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"kiwi: {broken}: no image named doomed")
    assert errors[1] == "kiwi: 1 container(s) marked autostart did not start (see above)"
    assert status(kiwi, good) == "running" and status(kiwi, broken) == "stopped"


def test_install_writes_a_valid_systemd_unit(kiwi, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    done = kiwi("autostart", "--install", "--systemd-dir", units)
    unit = units / "kiwi-autostart.service"
    assert done.stdout.startswith(f"wrote {unit}; enable it with: systemctl")
    text = unit.read_text()
    binary = os.path.realpath(kiwi.cmd[0])
    assert f'ExecStart="{binary}" autostart\n' in text
    assert f'Environment="KIWI_ROOT={os.path.realpath(kiwi.root)}"\n' in text
    assert "Type=oneshot\n" in text and "KillMode=process\n" in text
    assert "WantedBy=multi-user.target\n" in text
    assert [p.name for p in units.iterdir()] == ["kiwi-autostart.service"]
    analyze = shutil.which("systemd-analyze")
    if analyze:
        check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    missing = kiwi("autostart", "--install", "--systemd-dir", tmp_path / "nope", check=False)
    assert missing.returncode == 1 and "--systemd-dir" in missing.stderr


@pytest.mark.parametrize("word", ["start", "restart", "rename"])
def test_unknown_container_is_one_line(kiwi, word):
    args = [word, "nosuch"] + (["x"] if word == "rename" else [])
    done = kiwi(*args, check=False)
    assert (
        done.returncode == 1 and done.stderr.startswith("kiwi: no container") and done.stderr.count("\n") == 1
    )
