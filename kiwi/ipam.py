"""IPv4 address allocation for containers.

The subnet comes from KIWI_SUBNET (default 10.44.0.0/16). Its first host is the
bridge's gateway; containers get the following addresses. Every data folder on
the host leases from ONE host-wide table (hoststate.py), one entry per subnet,
so two folders on the same bridge never hand out the same address and changing
KIWI_SUBNET never loses track of addresses handed out earlier:

    {"subnets": {"10.44.0.0/16": {"next": 5, "free": [3],
                                  "owners": {"10.44.0.3": "<folder id>/<cid>"}}}}

`next` is the lowest host offset never handed out, `free` a min-heap of released
offsets, so allocating is O(log n) without scanning the subnet. A folder only
ever releases its own leases, and those of a folder that is provably gone.

A lease whose container went without `delete` (its folder removed by hand, a
create killed at the wrong moment, a whole data folder removed) would hold its
address for good: when a subnet is full, allocate and claim first prune such
leases (prune), as `kiwi cleanup` does, under the folder's lock.
"""

import ipaddress
import os
from ipaddress import IPv4Address, IPv4Network

from kiwi.errors import KiwiError

DEFAULT_SUBNET = "10.44.0.0/16"
GATEWAY_OFFSET = 1
FIRST_CONTAINER_OFFSET = 2
# A subnet needs network, gateway, one container and broadcast.
LARGEST_PREFIX = 30
OLD_STATE = "network/ipam.json"  # per-folder leases of Kiwi before host-wide ones


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


def take(pool: dict, network: IPv4Network, owner: str) -> str:
    """Hand out the lowest released address, else the next never-used one."""
    if pool["free"]:
        import heapq  # here: a start that keeps its address never loads it (issue 20)

        offset = heapq.heappop(pool["free"])
    elif pool["next"] <= last_container_offset(network):
        offset = pool["next"]
        pool["next"] += 1
    else:
        raise KiwiError(
            f"no free address left in subnet {network}; delete a container "
            "or set KIWI_SUBNET to a larger subnet"
        )
    ip = str(network.network_address + offset)
    pool["owners"][ip] = owner
    return ip


def give_back(pool: dict, network: IPv4Network, ip: str, owner: str | None = None) -> None:
    """Return an address to the pool; an unknown address, or one of another owner, stays."""
    if pool["owners"].get(ip) is None or owner not in (None, pool["owners"][ip]):
        return
    del pool["owners"][ip]
    offset = int(IPv4Address(ip)) - int(network.network_address)
    import heapq

    heapq.heappush(pool["free"], offset)


def take_exact(pool: dict, network: IPv4Network, ip: str, owner: str) -> None:
    """Lease one given address (free or never handed out) to owner."""
    offset = int(IPv4Address(ip)) - int(network.network_address)
    if offset >= pool["next"]:
        pool["free"].extend(range(pool["next"], offset))
        pool["next"] = offset + 1
    elif offset in pool["free"]:
        pool["free"].remove(offset)
    import heapq

    heapq.heapify(pool["free"])
    pool["owners"][ip] = owner


def can_take(pool: dict, network: IPv4Network, ip: str, owner: str) -> bool:
    try:
        offset = int(IPv4Address(ip)) - int(network.network_address)
    except ValueError:
        return False
    return FIRST_CONTAINER_OFFSET <= offset <= last_container_offset(network) and pool["owners"].get(ip) in (
        None,
        owner,
    )


def pool_of(state: dict, network: IPv4Network) -> dict:
    return state.setdefault("subnets", {}).setdefault(str(network), empty_pool())


def allocate_in(state: dict, network: IPv4Network, owner: str) -> str:
    return take(pool_of(state, network), network, owner)


def release_in(state: dict, ip: str, owner: str | None = None) -> None:
    """Release from whichever recorded subnet contains `ip` (only if `owner` holds it, when given)."""
    try:
        address = IPv4Address(ip)
    except ValueError:
        return  # never handed out by us
    for text, pool in state.get("subnets", {}).items():
        network = IPv4Network(text)
        if address in network:
            give_back(pool, network, ip, owner)
            return


# -- host-wide leases -----------------------------------------------------------------


def owner_of(store, cid: str) -> str:
    return f"{store.folder_id()}/{cid}"


def allocate(store, cid: str) -> str:
    """A free IPv4 for container `cid` of this folder, leased host-wide. The caller holds
    store.lock() (create): a full subnet is then pruned first."""
    from kiwi import hoststate

    network = subnet()
    with hoststate.leases(store) as state:
        adopt_old_state(state, store)
        pool = pool_of(state, network)
        if is_full(pool, network) and holds_store_lock(store):
            prune(state, store)
        return take(pool, network, owner_of(store, cid))


def release(store, ip: str | None, cid: str) -> None:
    """Give back `ip` if this folder's container `cid` holds it; None is a no-op."""
    if not ip:
        return
    from kiwi import hoststate

    with hoststate.leases(store) as state:
        release_in(state, ip, owner_of(store, cid))


def claim(store, cid: str, ip: str | None) -> str | None:
    """At start: keep the recorded address when it is free or already ours, else lease a
    new one (a copied folder, or a lease another folder took meanwhile). Returns the
    address to use; the caller records it when it changed."""
    from kiwi import hoststate

    network = subnet()
    if ip and not can_parse_in(ip, network):
        return ip  # outside KIWI_SUBNET: network.attach_container says what to do
    owner = owner_of(store, cid)
    with hoststate.leases(store) as state:
        adopt_old_state(state, store)
        pool = pool_of(state, network)
        if ip and can_take(pool, network, ip, owner):
            if pool["owners"].get(ip) != owner:
                take_exact(pool, network, ip, owner)
            return ip
        if not is_full(pool, network):
            return take(pool, network, owner)
        if holds_store_lock(store):
            prune(state, store)
            return take(pool, network, owner)
    # Full: prune under the folder's lock, taken before the host-wide one as everywhere
    # (a create leases its address under both before its folder is in place).
    with store.lock():
        return claim(store, cid, ip)


def is_full(pool: dict, network: IPv4Network) -> bool:
    return not pool["free"] and pool["next"] > last_container_offset(network)


def holds_store_lock(store) -> bool:
    return store.holds_lock()


def prune(state: dict, store) -> list[str]:
    """Release what no container can use any more, one line each: the addresses and user
    id ranges of this folder's containers that exist no more (in_use), and everything a
    folder that is provably gone held (hoststate.folder_is_gone: never one on a disk that
    is only not mounted now), whose record goes too. Call it holding store.lock(): a
    create (or a Go migration) leases before its container's folder is in place."""
    from kiwi import hoststate, idmap

    fid, out = store.folder_id(), []
    try:
        present = set(os.listdir(store.containers_dir))
    except OSError:
        present = None  # cannot tell which exist: keep every lease of ours
    if present is not None:
        gone: dict[str, bool] = {}

        def stale(cid: str) -> bool:
            if cid not in gone:
                gone[cid] = cid not in present and not in_use(store, cid)
            return gone[cid]

        for ip, cid in own_leases(state, fid):
            if stale(cid):
                release_in(state, ip, owner_of(store, cid))
                out.append(f"address {ip} of a container that no longer exists")
        for base, cid in idmap.own_leases(state, fid):
            if stale(cid):
                del state["idmaps"][base]
                out.append(f"user id range {base} of a container that no longer exists")
    for other, record in list(state.get("folders", {}).items()):
        if other != fid and isinstance(record, dict) and hoststate.folder_is_gone(record):
            for ip, _ in own_leases(state, other):
                release_in(state, ip)
                out.append(f"address {ip} of the deleted data folder {record['path']}")
            for base, _ in idmap.own_leases(state, other):
                del state["idmaps"][base]
                out.append(f"user id range {base} of the deleted data folder {record['path']}")
            del state["folders"][other]
    return out


def in_use(store, cid: str) -> bool:
    """Whether container cid of this folder, its folder gone, may still run: a live init
    (its record), or a cgroup not yet removed (a start killed before its record). When
    that cannot be told, it may."""
    from kiwi.runstate import container_cgroup, read_runtime

    try:
        return read_runtime(store, cid) is not None or container_cgroup(store, cid).exists()
    except (KiwiError, OSError):
        return True


def can_parse_in(ip: str, network: IPv4Network) -> bool:
    try:
        return IPv4Address(ip) in network
    except ValueError:
        return False


def own_leases(state: dict, fid: str) -> list[tuple[str, str]]:
    """(ip, container id) of every lease this folder holds."""
    prefix = fid + "/"
    return [
        (ip, owner[len(prefix) :])
        for pool in state["subnets"].values()
        for ip, owner in pool["owners"].items()
        if owner.startswith(prefix)
    ]


def adopt_old_state(state: dict, store) -> None:
    """Addresses an older Kiwi recorded in <folder>/network/ipam.json join the host-wide
    leases once (unless another folder holds them already)."""
    from kiwi.store import is_container_id, read_json

    old = store.root / OLD_STATE
    if not old.exists():
        return
    for text, pool in read_json(old, limit=64 << 20).get("subnets", {}).items():
        network = parse_subnet(text)
        target = pool_of(state, network)
        for ip, cid in pool.get("owners", {}).items():
            owner = owner_of(store, cid)
            if is_container_id(cid) and can_take(target, network, ip, owner):
                take_exact(target, network, ip, owner)
    os.replace(old, old.with_name("ipam.json.adopted"))
