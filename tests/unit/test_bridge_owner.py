"""network.kiwi_made: which bridge is Kiwi's to remove. A bridge a killed start did not
name yet is recognised by the MAC Kiwi gives it (the gateway's, 02:6b:<IPv4>) of the
current KIWI_SUBNET or of any subnet Kiwi has leased addresses in on this host
(hoststate's leases.json), never by the 02:6b prefix alone."""

import json

import pytest

from kiwi import network
from kiwi.netlink import Link


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("KIWI_HOST_DIR", str(tmp_path))
    monkeypatch.setenv("KIWI_SUBNET", "10.201.3.0/24")
    return tmp_path


def bridge(mac, alias=None, kind="bridge"):
    return Link(index=7, name="kt0", kind=kind, alias=alias, master=None, mac=mac)


def lease(host, *subnets):
    pools = {s: {"next": 3, "free": [], "owners": {}} for s in subnets}
    (host / "leases.json").write_text(json.dumps({"folders": {}, "subnets": pools}))


def test_named_or_of_the_current_subnet(host):
    assert network.kiwi_made(bridge("aa:bb:cc:dd:ee:ff", alias=network.BRIDGE_ALIAS))
    assert network.kiwi_made(bridge(network.container_mac("10.201.3.1")))
    assert not network.kiwi_made(bridge(network.container_mac("10.201.3.1"), kind="dummy"))


def test_a_subnet_kiwi_leased_in_under_another_kiwi_subnet(host):
    mac = network.container_mac("10.44.0.1")
    assert not network.kiwi_made(bridge(mac))  # no lease there yet
    lease(host, "10.44.0.0/16", "10.201.3.0/24")
    assert network.kiwi_made(bridge(mac))
    assert network.kiwi_made(bridge(mac.upper()))
    assert not network.kiwi_made(bridge(mac, alias="someone else's bridge"))
    assert not network.kiwi_made(bridge(network.container_mac("10.44.0.2")))  # not its gateway
    assert not network.kiwi_made(bridge(network.container_mac("10.198.7.1")))  # never leased


def test_a_damaged_leases_file_proves_nothing(host):
    (host / "leases.json").write_text("{not json")
    assert not network.kiwi_made(bridge(network.container_mac("10.44.0.1")))
    (host / "leases.json").write_text(json.dumps({"subnets": {"not a subnet": {}, "10.44.0.0/16": {}}}))
    assert network.kiwi_made(bridge(network.container_mac("10.44.0.1")))
