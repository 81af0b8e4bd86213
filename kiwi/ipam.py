"""IPv4 address allocation for containers.

The subnet comes from KIWI_SUBNET (default 10.44.0.0/16). Its first host is the
bridge's gateway; containers get the following addresses. State lives in
`<root>/network/ipam.json`, one entry per subnet so that changing KIWI_SUBNET
never loses track of addresses handed out earlier:

    {"subnets": {"10.44.0.0/16": {"next": 5, "free": [3], "owners": {"10.44.0.3": "cid"}}}}

`next` is the lowest host offset never handed out, `free` a min-heap of released
offsets, so allocating is O(log n) without scanning the subnet.
`allocate` and `release` must be called while the caller holds `store.lock()`.
"""

import heapq
import ipaddress
import os
from ipaddress import IPv4Address, IPv4Network

from kiwi.errors import KiwiError
from kiwi.store import atomic_write_json, read_json

DEFAULT_SUBNET = "10.44.0.0/16"
GATEWAY_OFFSET = 1
FIRST_CONTAINER_OFFSET = 2
# A subnet needs network, gateway, one container and broadcast.
LARGEST_PREFIX = 30
# A full /16 records ~65k owners, beyond read_json's default limit.
STATE_SIZE_LIMIT = 64 << 20


def subnet() -> IPv4Network:
    """The container subnet from KIWI_SUBNET, validated."""
    return parse_subnet(os.environ.get("KIWI_SUBNET") or DEFAULT_SUBNET)


def parse_subnet(text: str) -> IPv4Network:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise KiwiError(f"KIWI_SUBNET {text!r} is not an IPv4 subnet like {DEFAULT_SUBNET}") from None
    if not isinstance(network, IPv4Network):
        raise KiwiError(f"KIWI_SUBNET {text!r} must be IPv4, like {DEFAULT_SUBNET}")
    if str(network) != text.strip():
        raise KiwiError(f"KIWI_SUBNET {text!r} has host bits set; use {network}")
    if network.prefixlen > LARGEST_PREFIX:
        raise KiwiError(f"KIWI_SUBNET {text!r} is too small; use a prefix of /{LARGEST_PREFIX} or shorter")
    return network


def gateway(network: IPv4Network | None = None) -> str:
    """The bridge's address: the subnet's first host."""
    network = network or subnet()
    return str(network.network_address + GATEWAY_OFFSET)


def prefixlen(network: IPv4Network | None = None) -> int:
    return (network or subnet()).prefixlen


# -- pure allocation on a per-subnet state dict ---------------------------------

def empty_pool() -> dict:
    return {"next": FIRST_CONTAINER_OFFSET, "free": [], "owners": {}}


def last_container_offset(network: IPv4Network) -> int:
    # num_addresses - 1 is the broadcast address.
    return network.num_addresses - 2


def take(pool: dict, network: IPv4Network, cid: str) -> str:
    """Hand out the lowest released address, else the next never-used one."""
    if pool["free"]:
        offset = heapq.heappop(pool["free"])
    elif pool["next"] <= last_container_offset(network):
        offset = pool["next"]
        pool["next"] += 1
    else:
        raise KiwiError(
            f"no free address left in subnet {network}; delete a container "
            "or set KIWI_SUBNET to a larger subnet")
    ip = str(network.network_address + offset)
    pool["owners"][ip] = cid
    return ip


def give_back(pool: dict, network: IPv4Network, ip: str) -> None:
    """Return an address to the pool; releasing an unknown address does nothing."""
    if pool["owners"].pop(ip, None) is None:
        return
    offset = int(IPv4Address(ip)) - int(network.network_address)
    heapq.heappush(pool["free"], offset)


def allocate_in(state: dict, network: IPv4Network, cid: str) -> str:
    pools = state.setdefault("subnets", {})
    pool = pools.setdefault(str(network), empty_pool())
    return take(pool, network, cid)


def claim_in(state: dict, network: IPv4Network, cid: str, wanted: str | None) -> str:
    """The address cid already owns, else `wanted` when it is a free container address
    of the subnet (an adopted container keeps its IP), else the usual next one."""
    pool = state.setdefault("subnets", {}).setdefault(str(network), empty_pool())
    for ip, owner in pool["owners"].items():
        if owner == cid:
            return ip
    try:
        offset = int(IPv4Address(wanted)) - int(network.network_address)
    except (ValueError, TypeError):
        offset = -1
    if FIRST_CONTAINER_OFFSET <= offset <= last_container_offset(network) and offset >= pool["next"]:
        pool["free"].extend(range(pool["next"], offset))
        heapq.heapify(pool["free"])
        pool["next"] = offset + 1
    elif offset in pool["free"]:
        pool["free"].remove(offset)
        heapq.heapify(pool["free"])
    else:
        return take(pool, network, cid)
    ip = str(network.network_address + offset)
    pool["owners"][ip] = cid
    return ip


def release_in(state: dict, ip: str) -> None:
    """Release from whichever recorded subnet contains `ip`."""
    try:
        address = IPv4Address(ip)
    except ValueError:
        return  # never handed out by us
    for text, pool in state.get("subnets", {}).items():
        network = IPv4Network(text)
        if address in network:
            give_back(pool, network, ip)
            return


# -- store-backed API -------------------------------------------------------------

def state_path(store):
    return store.root / "network" / "ipam.json"


def load_state(store) -> dict:
    path = state_path(store)
    if not path.exists():
        return {"subnets": {}}
    return read_json(path, limit=STATE_SIZE_LIMIT)


def save_state(store, state: dict) -> None:
    path = state_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)


def allocate(store, cid: str) -> str:
    """A free IPv4 for container `cid` (caller holds store.lock())."""
    network = subnet()
    state = load_state(store)
    ip = allocate_in(state, network, cid)
    save_state(store, state)
    return ip


def claim(store, cid: str, wanted: str | None) -> str:
    """claim_in on the stored state (caller holds store.lock())."""
    state = load_state(store)
    ip = claim_in(state, subnet(), cid, wanted)
    save_state(store, state)
    return ip


def release(store, ip: str | None) -> None:
    """Give `ip` back (caller holds store.lock()); None or unknown is a no-op."""
    if not ip:
        return
    state = load_state(store)
    release_in(state, ip)
    save_state(store, state)
