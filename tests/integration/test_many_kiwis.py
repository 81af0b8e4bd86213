"""Two Kiwi data folders on one host, with the same (test-owned) bridge and subnet
and NO KIWI_CGROUP_PARENT, as two downloaded copies with default settings would
run: they must never touch each other's containers, cgroups, veths, rules or
addresses, and the shared bridge goes only when neither uses it.

Traffic only to the test's own bridge subnet."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from conftest import Kiwi, make_env, remove_network, unmount_below, wait_gone
from kiwi import network

SHARED = ("KIWI_BRIDGE", "KIWI_SUBNET", "KIWI_HOST_DIR")


# -- two folders -----------------------------------------------------------------------


def folder_id(kiwi: Kiwi) -> str:
    return (kiwi.root / "folder-id").read_text().strip()


def whole_hierarchies() -> list[Path]:
    """Mount points that show a whole cgroup hierarchy (v1 and v2)."""
    found = []
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
            found.append(Path(fields[4]))
    return found


def folder_cgroup_parents(fid: str) -> list[Path]:
    return [mount / f"kiwi-{fid}" for mount in whole_hierarchies() if (mount / f"kiwi-{fid}").exists()]


def container_cgroups(kiwi: Kiwi, cid: str) -> list[Path]:
    return [
        parent / f"kiwi-{cid}"
        for parent in folder_cgroup_parents(folder_id(kiwi))
        if (parent / f"kiwi-{cid}").is_dir()
    ]


def remove_folder_cgroups(fid: str) -> None:
    """The default per-folder parent /kiwi-<fid>, once Kiwi emptied it (teardown)."""
    for parent in folder_cgroup_parents(fid):
        for child in sorted(parent.glob("kiwi-*")):
            if child.is_dir():
                with_errors_ignored(child.rmdir)
        with_errors_ignored(parent.rmdir)


def with_errors_ignored(step) -> None:
    try:
        step()
    except OSError:
        pass


def teardown_folder(kiwi: Kiwi) -> None:
    if kiwi.root.exists():
        for row in kiwi.json("list", "containers"):
            if row.get("status") == "running":
                kiwi("stop", row["id"], "--time", "2", check=False)
        kiwi("cleanup", check=False)
        if (kiwi.root / "folder-id").exists():
            remove_folder_cgroups(folder_id(kiwi))


@pytest.fixture
def pair(tmp_path_factory):
    """Folders A and B sharing bridge, subnet and host state; default cgroup parents."""
    env_a, root_a = make_env(tmp_path_factory)
    env_b, root_b = make_env(tmp_path_factory)
    env_b.update({key: env_a[key] for key in SHARED})
    for env in (env_a, env_b):
        del env["KIWI_CGROUP_PARENT"]
    a, b = Kiwi(env_a, root_a), Kiwi(env_b, root_b)
    made = [a, b]
    yield a, b, made
    for kiwi in made:
        teardown_folder(kiwi)
    remove_network(env_a)
    for kiwi in made:
        unmount_below(kiwi.root.parent)
        shutil.rmtree(kiwi.root.parent, ignore_errors=True)


@pytest.fixture
def images(pair, busybox_tar):
    a, b, _ = pair
    for kiwi in (a, b):
        kiwi("import", "--name", "busybox", busybox_tar)
    return pair


def start(kiwi: Kiwi, cid: str) -> None:
    kiwi("attach", cid, "--", "true", timeout=300)


def one_running_in_each(a: Kiwi, b: Kiwi) -> tuple[str, str]:
    ca, cb = a.create("busybox"), b.create("busybox")
    start(a, ca)
    start(b, cb)
    return ca, cb


def status(kiwi: Kiwi, cid: str) -> str:
    return {row["id"]: row["status"] for row in kiwi.json("list", "containers")}[cid]


# -- network views ---------------------------------------------------------------------


def gateway(kiwi: Kiwi) -> str:
    return str(ipaddress.ip_network(kiwi.env["KIWI_SUBNET"]).network_address + 1)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def veth(kiwi: Kiwi, cid: str) -> str:
    return network.veth_name(cid, folder_id(kiwi))


def alias(name: str) -> str | None:
    with IPRoute() as ipr:
        return ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get("IFLA_IFALIAS")


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {line.removeprefix("table ").strip() for line in out.splitlines() if line.strip()}


def nft_table(bridge: str, family: str) -> str:
    return subprocess.run(
        ["nft", "list", "table", family, f"kiwi-{bridge}"], capture_output=True, text=True
    ).stdout


def reaches(kiwi: Kiwi, cid: str, ip: str) -> bool:
    """busybox ping (CAP_NET_RAW is kept in containers), retried inside."""
    script = f"for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 {ip} >/dev/null && exit 0; done; exit 1"
    return kiwi.sh(cid, script, check=False, timeout=120).returncode == 0


def assert_running_intact(kiwi: Kiwi, cid: str) -> None:
    """The container, its cgroup, veth, filter chain and NAT are all still there and work."""
    bridge = kiwi.env["KIWI_BRIDGE"]
    assert status(kiwi, cid) == "running"
    assert container_cgroups(kiwi, cid), "its cgroup was removed"
    assert veth(kiwi, cid) in bridge_ports(bridge)
    assert f"chain port-{veth(kiwi, cid)}" in nft_table(bridge, "bridge")
    assert "masquerade" in nft_table(bridge, "inet")
    assert reaches(kiwi, cid, gateway(kiwi))


# -- tests -----------------------------------------------------------------------------


def test_two_folders_share_a_bridge_and_never_touch_each_other(images):
    a, b, _ = images
    bridge = a.env["KIWI_BRIDGE"]
    ca, cb = one_running_in_each(a, b)
    assert folder_id(a) != folder_id(b)
    ip_a, ip_b = a.out("ip", ca), b.out("ip", cb)
    assert ip_a != ip_b
    assert {
        ipaddress.ip_address(ip) in ipaddress.ip_network(a.env["KIWI_SUBNET"]) for ip in (ip_a, ip_b)
    } == {True}
    assert sorted(bridge_ports(bridge)) == sorted([veth(a, ca), veth(b, cb)])
    assert alias(veth(a, ca)) == f"kiwi {folder_id(a)}/{ca}"
    for group in container_cgroups(a, ca):
        assert os.getxattr(group, "trusted.kiwi.folder").decode() == folder_id(a)
    assert reaches(a, ca, ip_b) and reaches(b, cb, ip_a)

    cleaned = b.out("cleanup")
    assert ca not in cleaned and folder_id(a) not in cleaned, cleaned
    assert_running_intact(a, ca)
    assert_running_intact(b, cb)

    a("stop", ca)  # B's container still uses the bridge
    assert link_exists(bridge) and bridge_ports(bridge) == [veth(b, cb)]
    assert_running_intact(b, cb)
    a("cleanup")
    assert link_exists(bridge)
    assert_running_intact(b, cb)
    assert not folder_cgroup_parents(folder_id(a))  # A's own cgroup parent is gone

    b("stop", cb)
    for kiwi in (a, b):
        kiwi("cleanup")
    assert not link_exists(bridge)
    assert f"inet kiwi-{bridge}" not in nft_tables() and f"bridge kiwi-{bridge}" not in nft_tables()
    assert not folder_cgroup_parents(folder_id(a)) and not folder_cgroup_parents(folder_id(b))


def test_dead_containers_of_another_folder_are_left_to_it(images):
    """B's cleanup must not 'clean' A's crashed container: A's own cleanup does."""
    a, b, _ = images
    bridge = a.env["KIWI_BRIDGE"]
    ca, cb = one_running_in_each(a, b)
    groups = container_cgroups(a, ca)
    # A crash of A's container: init killed, a leftover process still in its cgroup.
    leftover = subprocess.Popen(["sleep", "600"])
    try:
        for group in groups:
            (group / "cgroup.procs").write_text(str(leftover.pid))
        record = json.loads((a.root / "mounts" / ca / "runtime.json").read_text())
        os.kill(record["init_pid"], signal.SIGKILL)
        wait_gone([record["init_pid"]])
        assert status(a, ca) == "stale"  # init gone, a process left in its cgroup
        b("cleanup")
        assert leftover.poll() is None, "B killed a process in A's cgroup"
        assert container_cgroups(a, ca) == groups
        assert f"chain port-{veth(a, ca)}" in nft_table(bridge, "bridge")
        assert_running_intact(b, cb)
        assert ca in a.out("cleanup")
        leftover.wait(timeout=30)
        assert not container_cgroups(a, ca)
        assert f"chain port-{veth(a, ca)}" not in nft_table(bridge, "bridge")
        assert_running_intact(b, cb)
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_same_container_id_in_a_copied_folder_stays_separate(images):
    a, b, made = images
    ca = a.create("busybox")
    start(a, ca)
    a("stop", ca)
    # B becomes a copy of A (a user copying kiwi-data), with the same container id.
    shutil.rmtree(b.root)
    subprocess.run(["cp", "-a", "--sparse=always", str(a.root), str(b.root)], check=True)
    assert folder_id(b) == folder_id(a)
    start(a, ca)
    start(b, ca)
    assert folder_id(b) != folder_id(a)  # the copy took a new identity
    assert a.out("ip", ca) != b.out("ip", ca)
    assert veth(a, ca) != veth(b, ca)
    assert set(container_cgroups(a, ca)).isdisjoint(container_cgroups(b, ca))
    assert reaches(a, ca, b.out("ip", ca))
    a_init = a.out("attach", ca, "--", "cat", "/proc/sys/kernel/random/boot_id")
    assert a_init
    b("stop", ca)
    assert_running_intact(a, ca)
    b("cleanup")
    assert_running_intact(a, ca)
    assert made == [a, b]


def leases(kiwi: Kiwi) -> dict[str, str]:
    """ip -> "<folder id>/<container id>" in the host-wide lease file."""
    state = json.loads((Path(kiwi.env["KIWI_HOST_DIR"]) / "leases.json").read_text())
    return state["subnets"][kiwi.env["KIWI_SUBNET"]]["owners"]


def test_deleted_folder_leases_are_reclaimed_but_unmounted_ones_kept(images, busybox_tar, tmp_path):
    a, b, _ = images
    # Folder C lives on a disk that will not be mounted at cleanup time (a tmpfs here).
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "kiwi-test", str(disk)], check=True)
    try:
        c = Kiwi({**a.env, "KIWI_ROOT": str(disk / "kiwi-data")}, disk / "kiwi-data")
        c("import", "--name", "busybox", busybox_tar)
        cc = c.create("busybox", "--storage", "host")
        ip_c = c.out("ip", cc)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    ca = a.create("busybox", "--storage", "host")
    ip_a = a.out("ip", ca)
    shutil.rmtree(a.root)  # folder A is deleted with its container
    cleaned = b.out("cleanup")
    assert f"address {ip_a} of the deleted data folder" in cleaned
    assert ip_c not in cleaned
    assert ip_a not in leases(b)
    assert ip_c in leases(b)  # maybe only unplugged: kept
    assert b.out("ip", b.create("busybox")) == ip_a  # the reclaimed address is handed out again


def test_a_full_subnet_reclaims_what_was_removed_by_hand(images):
    """Addresses held by a container folder removed by hand and by a whole data folder
    removed are handed out again once the subnet is full, with no `kiwi cleanup` first;
    those of containers that exist never are."""
    a, b, _ = images
    small = str(next(ipaddress.ip_network(a.env["KIWI_SUBNET"]).subnets(new_prefix=29)))
    for kiwi in (a, b):
        kiwi.env["KIWI_SUBNET"] = small  # five container addresses
    in_a = [a.create("busybox", "--storage", "host") for _ in range(3)]
    in_b = [b.create("busybox", "--storage", "host") for _ in range(2)]
    addresses = {cid: a.out("ip", cid) for cid in in_a} | {cid: b.out("ip", cid) for cid in in_b}
    assert len(set(addresses.values())) == 5
    full = a("create", "busybox", "--storage", "host", check=False)
    assert full.returncode == 1 and "no free address left" in full.stderr
    shutil.rmtree(a.root / "containers" / in_a[0])  # no `kiwi delete`
    again = a.create("busybox", "--storage", "host")
    assert a.out("ip", again) == addresses[in_a[0]]
    shutil.rmtree(b.root)  # the whole folder B
    reclaimed = {a.out("ip", a.create("busybox", "--storage", "host")) for _ in range(2)}
    assert reclaimed == {addresses[cid] for cid in in_b}
    full = a("create", "busybox", "--storage", "host", check=False)
    assert full.returncode == 1 and "no free address left" in full.stderr
    listed = [row["ipv4"] for row in a.json("list", "containers")]
    assert len(listed) == 5 and len(set(listed)) == 5


def test_a_stop_in_one_folder_never_pulls_the_bridge_from_a_start_in_the_other(images):
    """A's last container stops (bridge and NAT go if unused) while B starts one."""
    from concurrent.futures import ThreadPoolExecutor

    a, b, _ = images
    bridge = a.env["KIWI_BRIDGE"]
    ca, cb = a.create("busybox"), b.create("busybox")
    for _ in range(4):
        start(a, ca)
        with ThreadPoolExecutor(max_workers=2) as pool:
            stopping = pool.submit(a, "stop", ca)
            starting = pool.submit(start, b, cb)
            stopping.result()
            starting.result()
        assert_running_intact(b, cb)
        assert bridge_ports(bridge) == [veth(b, cb)]
        b("stop", cb)
        assert not link_exists(bridge)
