import json
import os
import shutil
from ipaddress import IPv4Network

import pytest

from kiwi import ipam
from kiwi.errors import KiwiError
from kiwi.store import Store


def test_default_subnet(monkeypatch):
    monkeypatch.delenv("KIWI_SUBNET", raising=False)
    assert ipam.subnet() == IPv4Network("10.44.0.0/16")
    assert ipam.gateway() == "10.44.0.1"
    assert ipam.prefixlen() == 16


def test_subnet_from_env(monkeypatch):
    monkeypatch.setenv("KIWI_SUBNET", "10.213.7.0/24")
    assert ipam.subnet() == IPv4Network("10.213.7.0/24")
    assert ipam.gateway() == "10.213.7.1"
    assert ipam.prefixlen() == 24


@pytest.mark.parametrize(
    "bad", ["nonsense", "10.44.0.0/33", "fd00::/64", "10.44.0.1/16", "10.44.0.0/31", "10.44.0.0"]
)
def test_bad_subnet_is_a_user_error(monkeypatch, bad):
    monkeypatch.setenv("KIWI_SUBNET", bad)
    with pytest.raises(KiwiError) as caught:
        ipam.subnet()
    assert "KIWI_SUBNET" in caught.value.message
    assert "\n" not in caught.value.message


def test_first_addresses_skip_network_and_gateway():
    state = {}
    net = IPv4Network("10.213.1.0/24")
    assert ipam.allocate_in(state, net, "a") == "10.213.1.2"
    assert ipam.allocate_in(state, net, "b") == "10.213.1.3"
    assert state["subnets"]["10.213.1.0/24"]["owners"] == {"10.213.1.2": "a", "10.213.1.3": "b"}


def test_never_hands_out_broadcast_and_reports_full():
    state = {}
    net = IPv4Network("10.213.1.0/29")  # .0 network, .1 gateway, .7 broadcast
    got = [ipam.allocate_in(state, net, f"c{i}") for i in range(5)]
    assert got == [f"10.213.1.{i}" for i in range(2, 7)]
    with pytest.raises(KiwiError) as caught:
        ipam.allocate_in(state, net, "one-too-many")
    assert "no free address" in caught.value.message


def test_released_addresses_are_reused_lowest_first():
    state = {}
    net = IPv4Network("10.213.1.0/24")
    ips = [ipam.allocate_in(state, net, f"c{i}") for i in range(6)]
    ipam.release_in(state, ips[4])
    ipam.release_in(state, ips[1])
    assert ipam.allocate_in(state, net, "x") == ips[1]
    assert ipam.allocate_in(state, net, "y") == ips[4]
    assert ipam.allocate_in(state, net, "z") == "10.213.1.8"


def test_full_subnet_accepts_again_after_release():
    state = {}
    net = IPv4Network("10.213.1.0/30")  # exactly one container address
    ip = ipam.allocate_in(state, net, "a")
    assert ip == "10.213.1.2"
    with pytest.raises(KiwiError):
        ipam.allocate_in(state, net, "b")
    ipam.release_in(state, ip)
    assert ipam.allocate_in(state, net, "b") == ip


def test_release_is_idempotent_and_ignores_unknown():
    state = {}
    net = IPv4Network("10.213.1.0/24")
    ip = ipam.allocate_in(state, net, "a")
    ipam.release_in(state, ip)
    ipam.release_in(state, ip)
    ipam.release_in(state, "192.0.2.9")
    ipam.release_in(state, "not an ip")
    assert state["subnets"]["10.213.1.0/24"]["free"] == [2]
    assert ipam.allocate_in(state, net, "b") == ip
    assert ipam.allocate_in(state, net, "c") == "10.213.1.3"


def test_release_finds_an_address_from_an_earlier_subnet():
    state = {}
    old = ipam.allocate_in(state, IPv4Network("10.213.1.0/24"), "a")
    ipam.allocate_in(state, IPv4Network("10.213.2.0/24"), "b")
    ipam.release_in(state, old)
    assert state["subnets"]["10.213.1.0/24"]["owners"] == {}
    assert state["subnets"]["10.213.2.0/24"]["owners"] == {"10.213.2.2": "b"}


def test_state_survives_json_round_trip():
    state = {}
    net = IPv4Network("10.213.1.0/24")
    ips = [ipam.allocate_in(state, net, f"c{i}") for i in range(10)]
    for ip in (ips[7], ips[2], ips[5]):
        ipam.release_in(state, ip)
    state = json.loads(json.dumps(state))
    again = [ipam.allocate_in(state, net, f"d{i}") for i in range(4)]
    assert again == [ips[2], ips[5], ips[7], "10.213.1.12"]


def test_allocate_and_release_persist_host_wide(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_SUBNET", "10.213.3.0/24")
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path / "host"))
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    ca, cb = "0123456789ab", "ba9876543210"
    assert ipam.allocate(a, ca) == "10.213.3.2"
    assert ipam.allocate(b, ca) == "10.213.3.3"  # same id, other folder: another address
    saved = json.loads((tmp_path / "host" / "leases.json").read_text())
    assert saved["subnets"]["10.213.3.0/24"]["owners"] == {
        "10.213.3.2": f"{a.folder_id()}/{ca}",
        "10.213.3.3": f"{b.folder_id()}/{ca}",
    }
    assert (tmp_path / "host").stat().st_mode & 0o777 == 0o700
    ipam.release(a, "10.213.3.3", ca)  # b's lease: a may not give it back
    ipam.release(b, "10.213.3.2", cb)
    ipam.release(a, None, ca)
    assert ipam.allocate(a, cb) == "10.213.3.4"
    ipam.release(a, "10.213.3.2", ca)
    assert ipam.allocate(b, cb) == "10.213.3.2"


def test_claim_keeps_own_address_and_replaces_a_taken_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_SUBNET", "10.213.4.0/24")
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path / "host"))
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    cid = "0123456789ab"
    ip = ipam.allocate(a, cid)
    assert ipam.claim(a, cid, ip) == ip
    assert ipam.claim(b, cid, ip) == "10.213.4.3"  # a copy of a's container in b
    assert ipam.claim(b, cid, "10.213.4.9") == "10.213.4.9"  # never handed out: taken as it is
    assert ipam.allocate(a, "ba9876543210") == "10.213.4.4"
    assert ipam.claim(a, cid, "10.99.0.2") == "10.99.0.2"  # outside the subnet: start says so


def test_copied_folder_gets_its_own_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path / "host"))
    monkeypatch.setenv("KIWI_SUBNET", "10.213.5.0/24")
    original = Store(tmp_path / "a")
    ipam.allocate(original, "0123456789ab")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    copy = Store(tmp_path / "copy")
    ipam.allocate(copy, "ba9876543210")
    assert copy.folder_id() != original.folder_id()
    assert (tmp_path / "copy" / "folder-id").read_text().strip() == copy.folder_id()
    assert Store(tmp_path / "a").folder_id() == original.folder_id()
    os.rename(tmp_path / "a", tmp_path / "moved")
    moved = Store(tmp_path / "moved")
    ipam.allocate(moved, "aaaaaaaaaaaa")
    assert moved.folder_id() == original.folder_id()  # a move keeps the identity


def test_old_per_folder_leases_are_adopted(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path / "host"))
    monkeypatch.setenv("KIWI_SUBNET", "10.213.6.0/24")
    store = Store(tmp_path / "a")
    old = tmp_path / "a" / "network" / "ipam.json"
    old.parent.mkdir(parents=True)
    old.write_text(
        json.dumps(
            {
                "subnets": {
                    "10.213.6.0/24": {"next": 5, "free": [2, 3], "owners": {"10.213.6.4": "0123456789ab"}}
                }
            }
        )
    )
    assert ipam.allocate(store, "ba9876543210") == "10.213.6.2"
    assert ipam.allocate(store, "aaaaaaaaaaaa") == "10.213.6.3"
    assert ipam.allocate(store, "bbbbbbbbbbbb") == "10.213.6.5"
    assert not old.exists()


def test_a_folder_is_gone_only_when_its_filesystem_is_there_without_it(tmp_path):
    from kiwi import hoststate

    folder = tmp_path / "kiwi-data"
    folder.mkdir()
    record = hoststate.where(str(folder))
    assert not hoststate.folder_is_gone(record)
    folder.rmdir()
    assert hoststate.folder_is_gone(record)
    unplugged = {**record, "mount": str(tmp_path / "not-a-mount")}
    assert not hoststate.folder_is_gone(unplugged)  # its disk is not mounted: maybe only unplugged
    other_disk = {**record, "dev": record["dev"] + 1}
    assert not hoststate.folder_is_gone(other_disk)  # another filesystem is mounted there now
    assert not hoststate.folder_is_gone({"path": str(folder)})


# -- a full subnet prunes leases no container can use ----------------------------------


def created(store: Store, count: int, first: int = 0) -> dict[str, str]:
    """count containers made as create makes them (the address leased under the folder's
    lock, then the folder in place): {container id: address}."""
    made = {}
    for n in range(first, first + count):
        cid = f"{n:012x}"
        with store.lock():
            made[cid] = ipam.allocate(store, cid)
            store.container_dir(cid).mkdir(parents=True)
    return made


def create_one(store: Store, cid: str = "ffffffffffff") -> str:
    with store.lock():
        ip = ipam.allocate(store, cid)
        store.container_dir(cid).mkdir(parents=True)
    return ip


def small_subnet(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path / "host"))
    monkeypatch.setenv("KIWI_SUBNET", "10.213.8.0/29")  # five container addresses


def test_a_full_subnet_reclaims_the_address_of_a_container_removed_by_hand(tmp_path, monkeypatch):
    small_subnet(tmp_path, monkeypatch)
    store = Store(tmp_path / "a")
    made = created(store, 5)
    removed = sorted(made)[2]
    shutil.rmtree(store.container_dir(removed))  # no `kiwi delete`: its lease stayed
    assert create_one(store) == made[removed]
    leases = json.loads((tmp_path / "host" / "leases.json").read_text())["subnets"]["10.213.8.0/29"]["owners"]
    assert sorted(leases.values()) == sorted(
        f"{store.folder_id()}/{cid}" for cid in [*made, "ffffffffffff"] if cid != removed
    )


def test_a_full_subnet_never_gives_away_the_address_of_a_container_that_exists(tmp_path, monkeypatch):
    small_subnet(tmp_path, monkeypatch)
    store = Store(tmp_path / "a")
    created(store, 5)
    with pytest.raises(KiwiError) as caught:
        create_one(store)
    assert "no free address" in caught.value.message


def test_a_removed_container_that_still_runs_keeps_its_address(tmp_path, monkeypatch):
    """Its folder removed by hand while it runs: its eth0 still has the address."""
    from kiwi import runstate

    small_subnet(tmp_path, monkeypatch)
    store = Store(tmp_path / "a")
    made = created(store, 5)
    running = sorted(made)[0]
    shutil.rmtree(store.container_dir(running))
    monkeypatch.setattr(
        runstate, "read_runtime", lambda _store, cid: {"init_pid": 1} if cid == running else None
    )
    with pytest.raises(KiwiError):
        create_one(store)


def test_leases_are_pruned_only_under_the_folder_lock(tmp_path, monkeypatch):
    """A create leases its address before its folder is in place, under the folder's
    lock: without that lock, a container with no folder may be one being created."""
    small_subnet(tmp_path, monkeypatch)
    store = Store(tmp_path / "a")
    made = created(store, 5)
    shutil.rmtree(store.container_dir(sorted(made)[1]))
    with pytest.raises(KiwiError):
        ipam.allocate(store, "ffffffffffff")


def test_a_start_in_a_full_subnet_reclaims_too(tmp_path, monkeypatch):
    """claim (a start whose recorded address another folder holds now) prunes under the
    folder's lock, which it takes itself."""
    small_subnet(tmp_path, monkeypatch)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    made = created(a, 4)
    created(b, 1, first=9)
    removed = sorted(made)[3]
    shutil.rmtree(a.container_dir(removed))
    copied = "eeeeeeeeeeee"  # a's container recorded with b's address (e.g. a copied folder)
    a.container_dir(copied).mkdir()
    assert ipam.claim(a, copied, "10.213.8.6") == made[removed]


def test_a_full_subnet_reclaims_the_leases_of_a_deleted_folder_only(tmp_path, monkeypatch):
    small_subnet(tmp_path, monkeypatch)
    a, b, c = Store(tmp_path / "a"), Store(tmp_path / "b"), Store(tmp_path / "c")
    created(a, 2)
    in_b = created(b, 2, first=4)
    in_c = created(c, 1, first=8)
    shutil.rmtree(c.container_dir(sorted(in_c)[0]))  # c's own to prune, not a's
    with pytest.raises(KiwiError):
        create_one(a)
    shutil.rmtree(tmp_path / "b")  # the whole folder: its leases can go
    assert create_one(a) == sorted(in_b.values())[0]
    assert create_one(a, "eeeeeeeeeeee") == sorted(in_b.values())[1]
    with pytest.raises(KiwiError):
        create_one(a, "dddddddddddd")  # c's lease stays for c to prune
    assert create_one(c) == in_c[sorted(in_c)[0]]
