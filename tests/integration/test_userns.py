"""Issue 15: containers are unprivileged by default (a user namespace of their own).

Two views of the same files, both checked below:
- the host's view of a running container (/proc/<init>/root): host ids, <base> + id;
- the disk (the state image, `kiwi mount` of a stopped container, snapshots):
  the ids the container sees, 0 = its root, the same in both modes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import bind_into_container as leak_into

SIZE = 65536


def config_of(kiwi, cid: str) -> dict:
    return json.loads((kiwi.root / "containers" / cid / "config.json").read_text())


def create_unprivileged(kiwi, image: str, *args) -> str:
    """Unprivileged whatever the default is (set is a no-op when it already is)."""
    cid = kiwi.create(image, *args)
    kiwi("set", cid, "--privileged", "no")
    return cid


def init_pid(kiwi, cid: str) -> int:
    kiwi("attach", cid, "--", "true")
    return json.loads((kiwi.root / "mounts" / cid / "runtime.json").read_text())["init_pid"]


def row(kiwi, cid: str) -> dict:
    return next(r for r in kiwi.json("list", "containers") if r["id"] == cid)


def leases(kiwi) -> dict:
    return json.loads((Path(kiwi.env["KIWI_HOST_DIR"]) / "leases.json").read_text()).get("idmaps", {})


def test_root_inside_is_its_own_host_range(kiwi, busybox, tmp_path):
    cid = create_unprivileged(kiwi, busybox)
    base = config_of(kiwi, cid)["idmap"]["base"]
    assert base >= 1_000_000_000 and config_of(kiwi, cid)["idmap"]["size"] == SIZE
    assert row(kiwi, cid)["privileged"] is False
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/uid_map").split() == ["0", str(base), str(SIZE)]
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/gid_map").split() == ["0", str(base), str(SIZE)]
    assert kiwi.out("attach", cid, "--", "id") == "uid=0(root) gid=0(root)"
    kiwi.sh(cid, "echo data > /owned; mkdir /user && chown 1000:2000 /user")
    root = f"/proc/{init_pid(kiwi, cid)}/root"
    # The host's view of the running container: shifted ids.
    assert (os.stat(f"{root}/owned").st_uid, os.stat(f"{root}/owned").st_gid) == (base, base)
    assert (os.stat(f"{root}/user").st_uid, os.stat(f"{root}/user").st_gid) == (base + 1000, base + 2000)
    assert os.stat(f"{root}/bin").st_uid == base  # the shared image, through its idmapped mount
    # The disk's view: the container's own ids.
    kiwi("stop", cid, "--time", "2")
    target = tmp_path / "view"
    target.mkdir()
    kiwi("mount", cid, target)
    try:
        assert os.stat(target / "owned").st_uid == 0
        assert (os.stat(target / "user").st_uid, os.stat(target / "user").st_gid) == (1000, 2000)
    finally:
        kiwi("unmount", cid)
    image_root = kiwi.root / "images" / busybox / "rootfs"
    assert os.stat(image_root / "bin").st_uid == 0  # the image itself was never chowned


def test_containers_are_unprivileged_by_default(kiwi, busybox):
    cid = kiwi.out("create", busybox)
    base = config_of(kiwi, cid)["idmap"]["base"]
    assert row(kiwi, cid)["privileged"] is False
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/uid_map").split() == ["0", str(base), str(SIZE)]


def test_ranges_are_distinct_and_given_back_on_delete(kiwi, busybox):
    first, second = create_unprivileged(kiwi, busybox), create_unprivileged(kiwi, busybox)
    a, b = config_of(kiwi, first)["idmap"]["base"], config_of(kiwi, second)["idmap"]["base"]
    assert abs(a - b) >= SIZE
    assert set(leases(kiwi)) == {str(a), str(b)}
    kiwi("delete", first, "--yes")
    assert set(leases(kiwi)) == {str(b)}
    third = create_unprivileged(kiwi, busybox)
    assert config_of(kiwi, third)["idmap"]["base"] == a  # free again, so reused


def test_privileged_opt_out_and_set(kiwi, busybox):
    cid = kiwi.create(busybox, "--privileged")
    assert row(kiwi, cid)["privileged"] is True
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/uid_map").split() == ["0", "0", "4294967295"]
    kiwi.sh(cid, "mkdir /kept && chown 7:8 /kept")
    done = kiwi("set", cid, "--privileged", "no", check=False)
    assert done.returncode == 1 and done.stderr.startswith("kiwi: ") and "stop it first" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    kiwi("stop", cid, "--time", "2")
    kiwi("set", cid, "--privileged", "no")
    base = config_of(kiwi, cid)["idmap"]["base"]
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/uid_map").split() == ["0", str(base), str(SIZE)]
    assert kiwi.out("attach", cid, "--", "stat", "-c", "%u:%g", "/kept") == "7:8"  # no chown needed
    kiwi("stop", cid, "--time", "2")
    kiwi("set", cid, "--privileged", "yes")
    assert leases(kiwi) == {}
    assert kiwi.out("attach", cid, "--", "stat", "-c", "%u:%g", "/kept") == "7:8"
    listed = kiwi.out("list", "containers")
    assert "PRIVILEGED" in listed.splitlines()[0]


def test_old_configs_stay_privileged(kiwi, busybox):
    """A container made by an older Kiwi (no idmap/privileged key) keeps running as host root."""
    cid = create_unprivileged(kiwi, busybox)
    path = kiwi.root / "containers" / cid / "config.json"
    config = json.loads(path.read_text())
    del config["idmap"], config["privileged"]
    path.write_text(json.dumps(config))
    assert row(kiwi, cid)["privileged"] is True
    assert kiwi.out("attach", cid, "--", "cat", "/proc/self/uid_map").split() == ["0", "0", "4294967295"]


def test_escape_through_a_leaked_host_path_lands_unprivileged(kiwi, busybox, tmp_path):
    tmp_path.chmod(0o755)
    secret = tmp_path / "host-file"
    secret.write_text("host\n")
    secret.chmod(0o644)
    shared = tmp_path / "host-dir"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cid = create_unprivileged(kiwi, busybox)
    base = config_of(kiwi, cid)["idmap"]["base"]
    pid = init_pid(kiwi, cid)
    kiwi.sh(cid, "touch /leak-file; mkdir /leak-dir")
    leak_into(pid, secret, "/leak-file")
    leak_into(pid, shared, "/leak-dir")
    done = kiwi.sh(cid, "echo pwned >> /leak-file", check=False)
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert kiwi.sh(cid, "chmod 666 /leak-file", check=False).returncode != 0
    kiwi.sh(cid, "echo dropped > /leak-dir/new")
    assert secret.read_text() == "host\n"
    info = os.stat(shared / "new")
    assert (info.st_uid, info.st_gid) == (base, base)  # not root: an unprivileged host id
    # Root of the container's user namespace with every capability (beyond what an
    # attach keeps: as if an exploit got past seccomp): a tmpfs mount works, it
    # is namespace-local; the host's file is still out of reach.
    userns = ["nsenter", "-t", str(pid), "-U", "-m", "-p", "-S", "0", "-G", "0", "--"]
    subprocess.run([*userns, "mount", "-t", "tmpfs", "kiwi-test", "/tmp"], check=True, timeout=30)
    probe = subprocess.run(
        [*userns, "sh", "-c", "grep -c kiwi-test /proc/self/mounts; echo pwned >> /leak-file"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.split()[0] == "1" and probe.returncode != 0, probe
    assert "Permission denied" in probe.stderr
    assert secret.read_text() == "host\n"


def test_the_same_leak_in_a_privileged_container_is_host_root(kiwi, busybox, tmp_path):
    """The contrast that shows the test above can fail."""
    tmp_path.chmod(0o755)
    secret = tmp_path / "host-file"
    secret.write_text("host\n")
    secret.chmod(0o644)
    cid = kiwi.create(busybox, "--privileged")
    pid = init_pid(kiwi, cid)
    kiwi.sh(cid, "touch /leak-file")
    leak_into(pid, secret, "/leak-file")
    kiwi.sh(cid, "echo pwned >> /leak-file")
    assert secret.read_text() == "host\npwned\n"


def make_deb(tmp_path: Path) -> bytes:
    """A tiny package whose files belong to a non-root user (dpkg chowns them on install)."""
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: kiwi-userns-test\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Kiwi <kiwi@example.invalid>\nDescription: test package\n"
    )
    data = tree / "opt" / "kiwi-test"
    data.mkdir(parents=True)
    (data / "file").write_text("hello\n")
    for path in (data, data / "file"):
        os.chown(path, 1234, 1235)
    deb = tmp_path / "kiwi-userns-test.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb.read_bytes()


def test_apt_get_installs_a_local_deb(kiwi, debian_tar, tmp_path):
    kiwi("import", "--name", "debian", debian_tar, timeout=600)
    cid = create_unprivileged(kiwi, "debian")
    base = config_of(kiwi, cid)["idmap"]["base"]
    payload = base64.b64encode(make_deb(tmp_path)).decode()
    kiwi("attach", cid, "--", "sh", "-c", "base64 -d > /tmp/test.deb", input=payload)
    done = kiwi("attach", cid, "--", "apt-get", "install", "-y", "/tmp/test.deb", timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kiwi.out("attach", cid, "--", "stat", "-c", "%u:%g", "/opt/kiwi-test/file") == "1234:1235"
    assert kiwi.out("attach", cid, "--", "dpkg-query", "-W", "-f", "${Status}", "kiwi-userns-test") == (
        "install ok installed"
    )
    info = os.stat(f"/proc/{init_pid(kiwi, cid)}/root/opt/kiwi-test/file")
    assert (info.st_uid, info.st_gid) == (base + 1234, base + 1235)


def create_in_mode(kiwi, image: str, mode: str) -> str:
    return kiwi.create(image, "--privileged") if mode == "privileged" else create_unprivileged(kiwi, image)


@pytest.mark.parametrize("first,second", [("unprivileged", "privileged"), ("privileged", "unprivileged")])
def test_snapshots_restore_across_modes(kiwi, busybox, tmp_path, first, second):
    cid = create_in_mode(kiwi, busybox, first)
    kiwi.sh(cid, "mkdir /data && echo x > /data/f && chown -R 1000:1001 /data && chmod 4755 /data/f")
    kiwi("stop", cid, "--time", "2")
    archive = kiwi.out("snap", cid, "s1").splitlines()[-1]
    copy = create_in_mode(kiwi, archive, second)
    assert row(kiwi, copy)["privileged"] is (second == "privileged")
    assert kiwi.out("attach", copy, "--", "stat", "-c", "%u:%g %a", "/data", "/data/f").splitlines() == [
        "1000:1001 755",
        "1000:1001 4755",
    ]
    assert kiwi.out("attach", copy, "--", "stat", "-c", "%u:%g", "/bin") == "0:0"


def test_create_refuses_a_filesystem_without_idmapped_mounts(kiwi, busybox_tar, tmp_path):
    """overlayfs has no idmapped mounts: one line naming the reason and --privileged, nothing left."""
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for path in layers.values():
        path.mkdir()
    opts = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(layers["merged"])], check=True)
    env = {"KIWI_ROOT": str(layers["merged"] / "kiwi-data")}
    try:
        kiwi("import", "--name", "busybox", busybox_tar, env=env)
        done = kiwi("create", "busybox", env=env, check=False)  # the default: unprivileged
        assert done.returncode == 1 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert "idmapped mounts" in done.stderr and "--privileged" in done.stderr
        assert json.loads(kiwi.out("list", "containers", "--json", env=env)) == []
        cid = kiwi.out("create", "busybox", "--privileged", env=env)
        done = kiwi("set", cid, "--privileged", "no", env=env, check=False)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("kiwi: ") and len(done.stderr.strip().splitlines()) == 1
        assert "idmapped mounts" in done.stderr and "--privileged" in done.stderr
        assert [r["privileged"] for r in json.loads(kiwi.out("list", "containers", "--json", env=env))] == [
            True
        ]
        assert kiwi.out("attach", cid, "--", "id", "-u", env=env) == "0"
    finally:
        for made in json.loads(kiwi.out("list", "containers", "--json", env=env, check=False) or "[]"):
            kiwi("stop", made["id"], "--time", "2", env=env, check=False)
            kiwi("delete", made["id"], "--yes", env=env, check=False)
        subprocess.run(["umount", "-l", str(layers["merged"])], check=False)


def test_host_network_gets_the_hosts_sysfs_read_only(kiwi, busybox):
    """A user namespace may not mount sysfs for the host's network namespace: the host's, bound."""
    cid = create_unprivileged(kiwi, busybox, "--network", "host")
    inside = set(kiwi.out("attach", cid, "--", "ls", "/sys/class/net").split())
    assert inside == set(os.listdir("/sys/class/net"))
    done = kiwi.sh(cid, "echo 1 > /sys/kernel/profiling", check=False)
    assert done.returncode != 0 and "Read-only file system" in done.stderr


def test_mount_of_a_running_container_shows_host_ids(kiwi, busybox, tmp_path):
    """Documented: the live overlay cannot be idmapped back (overlayfs has no idmapped mounts)."""
    cid = create_unprivileged(kiwi, busybox)
    base = config_of(kiwi, cid)["idmap"]["base"]
    kiwi.sh(cid, "touch /live")
    target = tmp_path / "live"
    target.mkdir()
    kiwi("mount", cid, target)
    try:
        assert os.stat(target / "live").st_uid == base
    finally:
        kiwi("unmount", cid)
