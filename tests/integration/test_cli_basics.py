"""Issue 2: the foundation through the frozen binary — records, names, errors, locking."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path


def assert_clean_error(done, fragment: str, code: int = 1):
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kiwi: "), done.stderr
    assert fragment in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_version_and_help(kiwi):
    assert kiwi.out("--version").startswith("kiwi ")
    assert "attach" in kiwi.out("--help")
    assert "--memory" in kiwi.out("help", "set")
    assert "--detach-key" in kiwi.out("attach", "--help")


def test_bad_input_is_one_clear_line(kiwi, busybox):
    assert_clean_error(kiwi("create", "nosuchimage", check=False), "no image")
    assert_clean_error(kiwi("create", busybox, "--storage", "12Q", check=False), "invalid storage")
    assert_clean_error(kiwi("create", busybox, "--storage", "512M", check=False), "minimum is 1G")
    assert_clean_error(kiwi("create", busybox, "--name", "Bad Name", check=False), "invalid container name")
    assert_clean_error(kiwi("import", "--name", "../x", "/etc/hostname", check=False), "invalid image name")
    assert_clean_error(kiwi("ip", "doesnotexist", check=False), "no container")
    assert_clean_error(kiwi("stop", "abc", check=False), "no container")
    assert_clean_error(kiwi("frobnicate", check=False), "unknown command 'frobnicate'", code=2)
    assert_clean_error(kiwi("list", "--bogus", check=False), "unrecognized", code=2)
    assert kiwi.json("list", "containers") == []


def test_create_list_set_ip_delete(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "web")
    assert len(cid) == 12 and int(cid, 16) >= 0
    rows = kiwi.json("list", "containers")
    assert [r["id"] for r in rows] == [cid]
    row = rows[0]
    assert row["name"] == "web" and row["status"] == "stopped" and row["image"] == busybox
    assert row["storage_limit"] == 1 << 30
    ip = kiwi.out("ip", "web")
    assert ip == row["ipv4"] and ip.startswith(kiwi.env["KIWI_SUBNET"].rsplit(".", 2)[0])
    # A taken name is refused; prefixes resolve.
    assert_clean_error(kiwi("create", busybox, "--name", "web", check=False), "exists already")
    kiwi("set", cid[:5], "--memory", "256", "--cpu", "1", "--shell", "/bin/sh", "--network", "host")
    row = kiwi.json("list", "containers")[0]
    assert row["memory"] == 256 << 20 and row["cpu"] == 1 and row["network"] == "host"
    assert_clean_error(kiwi("ip", "web", check=False), "host's network")
    assert_clean_error(kiwi("set", "web", "--memory", "lots", check=False), "invalid memory")
    assert_clean_error(kiwi("set", "web", "--cpu", "999", check=False), "usable CPUs")
    assert_clean_error(kiwi("set", "web", "--shell", "bash", check=False), "absolute path")
    assert_clean_error(kiwi("set", "web", "--storage", "100M", check=False), "minimum is 1G")
    kiwi("set", "web", "--memory", "host", "--cpu", "host", "--network", "separate")
    row = kiwi.json("list", "containers")[0]
    assert row["memory"] is None and row["cpu"] is None
    # No terminal: delete refuses without --yes.
    assert_clean_error(kiwi("delete", "web", check=False), "--yes")
    kiwi("delete", "web", "--yes")
    assert kiwi.json("list", "containers") == []
    assert not (kiwi.root / "containers" / cid).exists()


def test_ambiguous_prefix(kiwi, busybox):
    ids = [kiwi.create(busybox) for _ in range(18)]
    firsts = {}
    for cid in ids:
        firsts.setdefault(cid[0], []).append(cid)
    shared = next(p for p, group in firsts.items() if len(group) > 1)
    assert_clean_error(kiwi("ip", shared, check=False), "give more of the id")


def test_twenty_parallel_creates(kiwi, busybox):
    def create(_):
        return kiwi("create", busybox, check=False)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(create, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    ids = {r.stdout.strip() for r in results}
    assert len(ids) == 20
    rows = kiwi.json("list", "containers")
    assert {r["id"] for r in rows} == ids
    ips = {r["ipv4"] for r in rows}
    assert len(ips) == 20
    for cid in ids:
        config = json.loads((kiwi.root / "containers" / cid / "config.json").read_text())
        assert config["id"] == cid


def test_killed_create_leaves_no_half_container(kiwi, busybox):
    for delay in (0.05, 0.15, 0.3):
        kiwi.kill_midway("create", busybox, "--storage", "4G", after=delay)
        for row in kiwi.json("list", "containers"):
            cdir = kiwi.root / "containers" / row["id"]
            assert (cdir / "config.json").exists() and (cdir / "state.img").exists()
    kiwi("cleanup")
    tmp = kiwi.root / ".tmp"
    assert not tmp.exists() or os.listdir(tmp) == []
    # Every address handed out belongs to a listed container.
    leases = Path(kiwi.env["KIWI_HOST_DIR"]) / "leases.json"
    owners = json.loads(leases.read_text()) if leases.exists() else {}
    listed = {r["id"] for r in kiwi.json("list", "containers")}
    fid = (kiwi.root / "folder-id").read_text().strip() if owners else ""
    for pool in owners.get("subnets", {}).values():
        assert {owner.split("/")[1] for owner in pool["owners"].values() if owner.startswith(fid)} <= listed


def test_read_only_commands_without_root_say_they_need_it(kiwi, busybox_tar, tmp_path):
    """The data folder is 0700 (issue 12 item 4): one clear line, never wrong data."""
    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="kiwi-ro-", dir="/tmp")  # pytest's own tmp is 0700
    os.chmod(shared, 0o755)
    cache = os.path.join(shared, "cache")  # where the launcher unpacks for nobody; removed below
    os.mkdir(cache)
    os.chown(cache, 65534, 65534)
    env = {**kiwi.env, "KIWI_ROOT": os.path.join(shared, "kiwi-data"), "XDG_CACHE_HOME": cache}
    try:
        kiwi("import", "--name", "bb", busybox_tar, env=env)
        cid = kiwi("create", "bb", env=env).stdout.strip()
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run(nobody + kiwi.cmd + ["create", "bb"], env=env, capture_output=True, text=True)
        assert_clean_error(done, "needs root")
        for args in (["ip", cid], ["list", "all"]):
            done = subprocess.run(nobody + kiwi.cmd + args, env=env, capture_output=True, text=True)
            assert_clean_error(done, "readable by root only")
        kiwi("delete", cid, "--yes", env=env)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
