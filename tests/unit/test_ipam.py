import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from kiwi import ipam
from kiwi.errors import KiwiError


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


@pytest.mark.parametrize("bad", ["nonsense", "10.44.0.0/33", "fd00::/64",
                                 "10.44.0.1/16", "10.44.0.0/31", "10.44.0.0"])
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


class FakeStore:
    def __init__(self, root: Path):
        self.root = root


def test_allocate_and_release_persist_in_store(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_SUBNET", "10.213.3.0/24")
    store = FakeStore(tmp_path)
    assert ipam.allocate(store, "a") == "10.213.3.2"
    assert ipam.allocate(store, "b") == "10.213.3.3"
    saved = json.loads((tmp_path / "network" / "ipam.json").read_text())
    assert saved["subnets"]["10.213.3.0/24"]["owners"] == {"10.213.3.2": "a", "10.213.3.3": "b"}
    ipam.release(store, "10.213.3.2")
    ipam.release(store, None)
    assert ipam.allocate(store, "c") == "10.213.3.2"
