"""Go Kiwi settings and address adoption (pure logic; the commands are in
tests/integration/test_gokiwi.py)."""

from ipaddress import IPv4Network

import pytest

from kiwi import ipam
from kiwi.errors import KiwiError
from kiwi.gokiwi import settings_from_go

MIB, GIB = 1 << 20, 1 << 30
NET = IPv4Network("10.44.0.0/24")


@pytest.mark.parametrize(
    "memory, expected",
    [
        ("256", 256 * MIB),
        ("512M", 512 * MIB),
        ("1g", GIB),
        ("", 256 * MIB),
        ("host", None),
        ("max", None),
        ("unlimited", None),
    ],
)
def test_go_memory_strings(memory, expected):
    assert settings_from_go({"memory": memory}, "t")["memory"] == expected


def test_go_defaults_and_limits():
    s = settings_from_go({}, "t")
    assert s == {"memory": 256 * MIB, "cpu": 1, "shell": None, "storage": GIB, "network": "separate"}
    assert settings_from_go({"cpu_host": True, "state_size_host": True}, "t")["cpu"] is None
    assert settings_from_go({"state_size_host": True}, "t")["storage"] is None
    assert settings_from_go({"smp": 1}, "t")["cpu"] == 1  # the Go program's legacy key
    assert settings_from_go({"cpu": 4096}, "t")["cpu"] >= 1  # capped to this host's CPUs
    assert settings_from_go({"state_size_bytes": 1 << 20}, "t")["storage"] == GIB  # Kiwi's minimum


def test_go_network_host_is_never_taken():
    assert settings_from_go({"network": "host"}, "t")["network"] == "separate"


@pytest.mark.parametrize(
    "config",
    [
        {"memory": 256},
        {"memory": "lots"},
        {"memory": "1k"},
        {"cpu": "2"},
        {"cpu": -1},
        {"cpu": True},
        {"shell": "bin/sh"},
        {"shell": 5},
        {"state_size_bytes": "1G"},
    ],
)
def test_bad_go_settings_are_refused(config):
    with pytest.raises(KiwiError):
        settings_from_go(config, "t")


def test_claim_keeps_a_free_wanted_address():
    """An adopted container keeps its Go address when it is free (ipam.claim's pure steps)."""
    state = {}
    pool = ipam.pool_of(state, NET)
    assert ipam.can_take(pool, NET, "10.44.0.10", "f/" + "a" * 12)
    ipam.take_exact(pool, NET, "10.44.0.10", "f/" + "a" * 12)
    assert pool["next"] == 11 and sorted(pool["free"]) == list(range(2, 10))
    # the skipped ones are handed out afterwards, lowest first
    assert ipam.allocate_in(state, NET, "f/" + "b" * 12) == "10.44.0.2"
    # a released address can be claimed back
    ipam.release_in(state, "10.44.0.2")
    assert ipam.can_take(pool, NET, "10.44.0.2", "f/" + "c" * 12)


def test_claim_is_idempotent_and_never_steals():
    state = {}
    pool = ipam.pool_of(state, NET)
    ipam.take_exact(pool, NET, "10.44.0.10", "f/" + "a" * 12)
    assert ipam.can_take(pool, NET, "10.44.0.10", "f/" + "a" * 12)  # a resumed adoption
    assert not ipam.can_take(pool, NET, "10.44.0.10", "f/" + "b" * 12)  # taken: never stolen
    for wanted in ("10.45.0.7", "10.44.0.1", "10.44.0.255", "10.44.0.0", "nonsense"):
        assert not ipam.can_take(pool, NET, wanted, "f/" + "x" * 12)
