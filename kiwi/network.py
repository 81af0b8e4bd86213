"""Host networking for containers: bridge, veth pairs, NAT.

Links, addresses and routes go through netlink (kiwi/netlink.py), never the `ip`
command. Firewall rules live in Kiwi's own nftables table `inet kiwi-<bridge>`;
without `nft`, in Kiwi's own iptables chains `KIWI-<bridge>`. Nothing here
touches rules or links that Kiwi did not make, except one jump into FORWARD
(or DOCKER-USER) and POSTROUTING, inserted once.

Several data folders may share one bridge. Every object records its owner:
the bridge carries the alias "kiwi bridge", a container's host veth the alias
"kiwi <folder id>/<container id>" (its name is a hash of both, so the same id
in two folders never clashes), its anti-spoofing chain the same comment. A
folder removes only veths and chains naming it; the bridge and its tables go
when no port is left on the bridge and no kiwi is starting a container on it.

Anti-spoofing (Incus' security.ipv4_filtering): the table `bridge kiwi-<bridge>`
sends every frame arriving from a Kiwi veth to that veth's own chain, which
drops it unless its Ethernet and ARP sender MAC are the container's, its IPv4
and ARP sender address the container's, and it is IPv4 or ARP at all. The
chain is in place before the veth joins the bridge. Containers still reach
each other, the bridge's address and, through NAT, the outside.

Call `ensure_bridge()` and `ensure_nat()` (or `setup_host()`) while holding
`store.lock()` so concurrent starts do not race on the iptables jumps, and
inside `bridge_in_use()` until the container's veth is on the bridge.
"""

from __future__ import annotations

import errno
import os
import sys

from kiwi import netlink
from kiwi.errors import KiwiError
from kiwi.netlink import NetlinkError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import subprocess

# ipaddress, ipam and re on first use: a stop's bridge release needs none of them, and
# imports them only after its bridge's deletion is under way (issue 20).

DEFAULT_BRIDGE = "kiwi0"
# A bridge's name: [A-Za-z0-9][A-Za-z0-9_.-]{0,14} (IFNAMSIZ), checked without re.
NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
NAME_REST = NAME_FIRST | frozenset("_.-")
NAME_MAX = 15
VETH_PREFIX = "kw"
VETH_HASH_CHARS = 12  # "kw" + 12 hex characters fits IFNAMSIZ (15)
BRIDGE_ALIAS = "kiwi bridge"
OWNER_ALIAS_PREFIX = "kiwi "
MAC_PREFIX = "02:6b"  # locally administered, unicast; the other 4 bytes are the IPv4
CONTAINER_IFNAME = "eth0"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
LEGACY_TABLES = "/proc/net/ip_tables_names"
NO_OUTBOUND_WARNING = (
    "neither nft nor iptables is installed; containers have no outbound network access (install nftables)"
)
NO_FILTER_WARNING = (
    "the anti-spoofing filter needs nft: containers can send with other "
    "containers' addresses (install nftables)"
)


# -- names -------------------------------------------------------------------------


def bridge_name() -> str:
    """The bridge from KIWI_BRIDGE (default kiwi0), validated as an interface name."""
    name = os.environ.get("KIWI_BRIDGE") or DEFAULT_BRIDGE
    if not (0 < len(name) <= NAME_MAX and name[0] in NAME_FIRST and NAME_REST.issuperset(name)):
        raise KiwiError(
            f"KIWI_BRIDGE {name!r} is not a valid interface name (1-15 letters, digits, '_', '.', '-')"
        )
    return name


def owner_tag(folder_id: str, cid: str) -> str:
    return f"{folder_id}/{cid}"


def veth_name(cid: str, folder_id: str) -> str:
    """Host side of a container's veth pair: unique per folder and container, fits IFNAMSIZ."""
    digest = sha256(owner_tag(folder_id, cid).encode()).hexdigest()
    return VETH_PREFIX + digest[:VETH_HASH_CHARS]


def sha256(data: bytes):
    """hashlib.sha256 without hashlib where Python has its own sha256 built in (Debian's
    3.11): hashlib loads OpenSSL, ~5 ms of every stop (issue 20)."""
    try:
        from _sha256 import sha256 as builtin
    except ImportError:
        from hashlib import sha256 as builtin
    return builtin(data)


def container_mac(ipv4: str) -> str:
    """eth0's MAC inside the container (or the bridge's, for the gateway), derived from
    the address: unique on the bridge."""
    import ipaddress

    return ":".join([MAC_PREFIX, *(f"{b:02x}" for b in ipaddress.IPv4Address(ipv4).packed)])


def nft_table(bridge: str) -> str:
    return f"kiwi-{bridge}"


def iptables_chain(bridge: str) -> str:
    return f"KIWI-{bridge}"


# -- netlink helpers ------------------------------------------------------------------


def link_index(nl, name: str) -> int | None:
    link = netlink.get_link(nl, name)
    return link.index if link else None


def existing_index(nl, name: str) -> int:
    """The index of a link that must exist (just made); gone means deleted concurrently."""
    index = link_index(nl, name)
    if index is None:
        raise NetlinkError(errno.ENODEV, f"{name} disappeared")
    return index


def ignore_exists(action) -> None:
    """Run a netlink change that may already have been made (idempotent setup)."""
    netlink.unless_errno(errno.EEXIST, action)


def netlink_failure(what: str, e: NetlinkError) -> KiwiError:
    return KiwiError(f"{what} failed: {os.strerror(e.errno or errno.EIO)}")


# -- bridge -----------------------------------------------------------------------------


def foreign_overlapping_route(nl, subnet, bridge_index) -> str | None:
    """A main-table route overlapping `subnet` that is not on our bridge."""
    import ipaddress

    for route in netlink.main_table_routes(nl):
        if route.dst_len == 0:
            continue  # the default route overlaps everything by design
        dst = ipaddress.ip_network(f"{route.dst}/{route.dst_len}", strict=False)
        if dst.overlaps(subnet) and route.oif != bridge_index:
            return str(dst)
    return None


def check_subnet_is_free(nl, subnet, bridge_index) -> None:
    clash = foreign_overlapping_route(nl, subnet, bridge_index)
    if clash:
        raise KiwiError(
            f"subnet {subnet} overlaps the host route {clash}; set KIWI_SUBNET to an unused private subnet"
        )


def ensure_bridge() -> str:
    """Create the bridge with the gateway address and bring it up; returns its name."""
    from kiwi import ipam

    bridge, subnet = bridge_name(), ipam.subnet()
    with netlink.open_route() as nl:
        link = netlink.get_link(nl, bridge)
        check_subnet_is_free(nl, subnet, link.index if link else None)
        if link is None:
            index = create_bridge(nl, bridge, container_mac(ipam.gateway(subnet)))
        elif link.kind != "bridge":
            raise KiwiError(f"{bridge} exists and is not a bridge; set KIWI_BRIDGE to another name")
        else:
            index = link.index
        # A bridge a killed start made but did not name yet is named now.
        alias = BRIDGE_ALIAS if link is not None and kiwi_made(link) else None
        try:
            ignore_exists(lambda: netlink.add_address(nl, index, str(ipam.gateway(subnet)), subnet.prefixlen))
            netlink.set_link(nl, index, up=True, alias=alias)
        except NetlinkError as e:
            raise netlink_failure(f"configuring bridge {bridge}", e) from None
    return bridge


def create_bridge(nl, bridge: str, mac: str) -> int:
    # A fixed MAC: else the bridge takes its lowest port's, and every container's ARP
    # entry for the gateway goes stale when that container stops.
    try:
        netlink.add_bridge(nl, bridge, mac)
        index = existing_index(nl, bridge)
        netlink.set_link(nl, index, alias=BRIDGE_ALIAS)  # Kiwi made it: Kiwi may remove it
    except NetlinkError as e:
        if e.errno == errno.EEXIST:  # a concurrent start made it
            return existing_index(nl, bridge)
        raise netlink_failure(f"creating bridge {bridge}", e) from None
    return index


def remove_bridge() -> None:
    """Delete the bridge; absent is fine."""
    delete_link(bridge_name())


def bridge_lock_path(bridge: str) -> str:
    from kiwi import hostdir

    return hostdir.lock_path(f"bridge-{bridge}.lock")


def bridge_in_use():
    """Held (shared) by every start from ensure_bridge until its veth is on the bridge."""
    from kiwi.store import flock

    return flock(bridge_lock_path(bridge_name()), shared=True)


def remove_bridge_if_unused(leaving: str | None = None) -> list[str]:
    """Remove the bridge, NAT and filter tables when no container of any folder uses
    them: none of its ports left (but `leaving`, a veth about to go) and no start under
    way. Only a bridge Kiwi made; its tables also when the bridge is gone (a stop or
    cleanup killed between the two) or is another program's that no Kiwi container is on."""
    from kiwi.store import flock

    bridge = bridge_name()
    try:
        with flock(bridge_lock_path(bridge), wait=False):
            with netlink.open_route() as nl:
                link = netlink.get_link(nl, bridge)
                if link is None:
                    return remove_own_tables(bridge, f"its bridge {bridge} was gone")
                ports = [
                    port
                    for port in netlink.get_links(nl)
                    if port.master == link.index and port.name != leaving
                ]
                if not kiwi_made(link):
                    if any((port.alias or "").startswith(OWNER_ALIAS_PREFIX) for port in ports):
                        return []
                    return remove_own_tables(bridge, f"no container uses {bridge}, which Kiwi did not make")
                if ports:
                    return []
            remove_nat_and_bridge(bridge)
    except BlockingIOError:
        return []  # a kiwi is starting a container on it
    return [f"bridge {bridge} and its NAT (no container uses them)"]


def kiwi_made(bridge) -> bool:
    """The bridge carries Kiwi's alias, or is one a start killed between creating it and
    naming it (the kernel takes no alias at creation): no alias, and the MAC Kiwi gives
    its bridges (the gateway's), which no other program derives: of KIWI_SUBNET, or of a
    subnet Kiwi has leased addresses in on this host (the start may have run under
    another KIWI_SUBNET than this command)."""
    if bridge.kind != "bridge":
        return False
    if bridge.alias == BRIDGE_ALIAS:
        return True
    if bridge.alias or not (bridge.mac or "").lower().startswith(MAC_PREFIX + ":"):
        return False
    from kiwi import ipam

    return bridge.mac.lower() in {container_mac(ipam.gateway(ipam.subnet())), *leased_gateway_macs()}


def leased_gateway_macs() -> set[str]:
    """The bridge MAC of each subnet Kiwi has leased addresses in on this host."""
    import ipaddress

    from kiwi import hoststate, ipam

    macs = set()
    for text in hoststate.leased_subnets():
        try:
            macs.add(container_mac(ipam.gateway(ipaddress.IPv4Network(text))))
        except ValueError:
            continue  # not a subnet: not one Kiwi recorded
    return macs


def remove_own_tables(bridge: str, why: str) -> list[str]:
    """Kiwi's nft tables and iptables chains of a bridge that is gone, or not Kiwi's and
    without a Kiwi port."""
    removed = []
    if find_nft():
        removed += [
            f"nft table {family} {nft_table(bridge)} ({why})"
            for family in ("inet", "bridge")
            if netlink.nft_table_exists(family, nft_table(bridge))
            and netlink.delete_nft_table(family, nft_table(bridge))
        ]
    return removed + remove_own_chains(bridge, why)


def remove_own_chains(bridge: str, why: str) -> list[str]:
    """Kiwi's iptables chains of the bridge (the iptables path of ensure_nat, or its
    accept in a dropping FORWARD), in every backend that may hold them."""
    removed = []
    for cmd in iptables_variants():
        for table, hooks in IPTABLES_HOOKS:
            if iptables_remove_chain(cmd, table, hooks, bridge):
                backend = os.path.basename(cmd)
                removed.append(f"{backend} chain {table} {iptables_chain(bridge)} ({why})")
    return removed


def remove_nat_and_bridge(bridge: str) -> None:
    """remove_nat and delete_link(bridge) at once: each waits in the kernel (the bridge's
    unregistering ~30-40 ms, each nft table ~10 ms), so together they take the longer of
    the two instead of the sum (issue 20). An error of either raises once both ended."""
    from kiwi.proc import Background

    # The bridge in this thread: a new thread's first steps would delay the longer wait.
    removing = Background(remove_nat)
    try:
        delete_link(bridge)
    finally:
        removing.wait()


def delete_link(name: str) -> None:
    with netlink.open_route() as nl:
        index = link_index(nl, name)
        if index is None:
            return
        try:
            netlink.delete_link(nl, index)
        except NetlinkError as e:
            if e.errno != errno.ENODEV:  # deleted concurrently
                raise netlink_failure(f"deleting {name}", e) from None


# -- veth pairs --------------------------------------------------------------------------


def attach_container(
    cid: str, ipv4: str, netns_pid: int, folder_id: str, filtered: bool = False, netns_fd: int | None = None
) -> str:
    """Give the network namespace of `netns_pid` (held open by netns_fd, when given: the one
    used) an eth0 on the bridge; returns the host veth.

    The veth joins the bridge only after its anti-spoofing chain is in place
    (filtered: ensure_nat installed it already, see container_port_filter)."""
    import ipaddress

    from kiwi import ipam

    bridge, subnet = bridge_name(), ipam.subnet()
    host = veth_name(cid, folder_id)
    if ipaddress.ip_address(ipv4) not in subnet:
        raise KiwiError(
            f"container {cid} has address {ipv4}, outside KIWI_SUBNET {subnet}; "
            "recreate it or set KIWI_SUBNET back"
        )
    delete_own_veth(cid, folder_id)  # a stale pair from a crashed start
    with netlink.open_route() as nl:
        bridge_index = link_index(nl, bridge)
        if bridge_index is None:  # removed by a concurrent cleanup
            ensure_bridge()
            bridge_index = existing_index(nl, bridge)
        create_veth_pair(nl, host, netns_pid, container_mac(ipv4), netns_fd)
        try:
            host_index = existing_index(nl, host)
            netlink.set_link(nl, host_index, alias=OWNER_ALIAS_PREFIX + owner_tag(folder_id, cid))
            if not filtered:
                allow_only_own_addresses(bridge, host, container_mac(ipv4), ipv4, owner_tag(folder_id, cid))
            netlink.set_link(nl, host_index, up=True, master=bridge_index)
            configure_container_side(netns_pid, ipv4, subnet, netns_fd)
        except BaseException as e:
            detach_container(cid, folder_id)  # also removes the peer inside the namespace
            if isinstance(e, NetlinkError):
                raise netlink_failure(f"connecting container {cid} to {bridge}", e) from None
            raise
    return host


def create_veth_pair(nl, host: str, netns_pid: int, mac: str, netns_fd: int | None = None) -> None:
    # The peer is born inside the container's namespace, so its name cannot clash on the host.
    try:
        netlink.add_veth(nl, host, CONTAINER_IFNAME, netns_pid, mac, netns_fd)
    except NetlinkError as e:
        raise netlink_failure(f"creating veth {host} for process {netns_pid}", e) from None


def configure_container_side(netns_pid: int, ipv4: str, subnet, netns_fd: int | None = None) -> None:
    from kiwi import ipam

    # Open the namespace by path: no named `ip netns` entry is left behind.
    path = f"/proc/{netns_pid}/ns/net" if netns_fd is None else f"/proc/self/fd/{netns_fd}"
    with netlink.open_route(netns=path) as ns:
        eth0 = existing_index(ns, CONTAINER_IFNAME)
        netlink.add_address(ns, eth0, ipv4, subnet.prefixlen)
        netlink.set_link(ns, eth0, up=True)
        netlink.set_link(ns, existing_index(ns, "lo"), up=True)
        netlink.add_default_route(ns, str(ipam.gateway(subnet)))


def detach_container(cid: str, folder_id: str) -> None:
    """Delete the container's host veth and its filter chain, if they exist."""
    forget_port(bridge_name(), veth_name(cid, folder_id))
    delete_own_veth(cid, folder_id)


def release_container(cid: str, folder_id: str, bridge_released: bool = False) -> None:
    """detach_container, then remove_bridge_if_unused, with one nft transaction less on the
    last stop: the bridge's table takes the veth's chain and map element with it.
    bridge_released: release_bridge_early removed them already."""
    delete_own_veth(cid, folder_id)
    if bridge_released:
        return
    released = []
    try:
        released = remove_bridge_if_unused()
    finally:
        if not released:
            forget_port(bridge_name(), veth_name(cid, folder_id))


def release_bridge_early(cid: str, folder_id: str) -> BridgeRemoval | None:
    """remove_bridge_if_unused while the container's init is still exiting, its veth
    still on the bridge. Only for a container where nothing could use the network any
    more (stopping.terminate checks). The bridge's deletion waits ~40 ms in the kernel
    (two expedited RCU grace periods and two RCU barriers), which then overlaps the
    init's exit and the rest of the stop (issue 20).

    Decided here, in the caller's thread, under the bridge lock taken without waiting:
    Kiwi's bridge (its alias) with no port but the container's veth. Then the NAT's
    removal starts in a thread of its own, and the BridgeRemoval returned deletes the
    bridge (BridgeRemoval.delete) and releases the lock (BridgeRemoval.wait). None, with
    nothing done, when the bridge stays (in use, a start on it) or for
    remove_bridge_if_unused's rarer cases (its tables without it, a bridge Kiwi did not
    name): the teardown's release_container handles those."""
    import fcntl

    bridge, leaving = bridge_name(), veth_name(cid, folder_id)
    lock = os.open(bridge_lock_path(bridge), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    removal = None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a kiwi is starting a container on it
        nl = netlink.open_route()
        try:
            link = netlink.get_link(nl, bridge)
            if (
                link is not None
                and link.kind == "bridge"
                and link.alias == BRIDGE_ALIAS
                and not any(
                    port.master == link.index and port.name != leaving for port in netlink.get_links(nl)
                )
            ):
                removal = BridgeRemoval(bridge, link.index, nl, lock)
        finally:
            if removal is None:
                nl.close()
    finally:
        if removal is None:
            os.close(lock)
    return removal


class BridgeRemoval:
    """remove_nat_and_bridge of an unused bridge, under its lock (fd `lock`, held from
    release_bridge_early until wait() ends): the NAT in a thread started here, the
    bridge's RTM_DELLINK over `nl` by delete(), in whichever thread calls it first (the
    stopping thread, right away: a thread started for it waited for a CPU and the GIL
    behind the caller's imports, 2-12 ms under load)."""

    def __init__(self, bridge: str, index: int, nl, lock: int):
        import _thread

        from kiwi.proc import Background

        self.bridge, self.nl, self.lock = bridge, nl, lock
        self.request = nl.message(netlink.RTM_DELLINK, netlink.F_ACK, netlink.IFINFO.pack(0, 0, index, 0, 0))
        self.claimed = _thread.allocate_lock()  # taken by the thread that deletes
        self.deleted = _thread.allocate_lock()  # held until the deletion ended
        self.deleted.acquire()
        self.error: BaseException | None = None
        # The NAT's sockets are released once the bridge is gone: a release holds the
        # nftables mutex through an RCU grace period, and the bridge's unregistering
        # waits for that mutex (14 ms of a stop under load, issue 20).
        netlink.park_releases()
        try:
            self.removing = Background(remove_nat)
        except BaseException:
            netlink.release_parked()
            raise

    def delete(self) -> None:
        """The bridge's deletion, here, unless another thread has begun it."""
        if not self.claimed.acquire(blocking=False):
            return
        seq, request = self.request
        try:
            self.nl.sock.send(request)
            self.nl.replies({seq})
        except NetlinkError as e:
            if e.errno != errno.ENODEV:  # deleted concurrently
                self.error = netlink_failure(f"deleting {self.bridge}", e)
        except BaseException as e:  # noqa: BLE001 - wait() raises it
            self.error = e
        finally:
            self.nl.close()
            self.deleted.release()

    def wait(self) -> None:
        """Once both ended (the bridge deleted here if no thread has begun it): the lock
        released, the first error raised."""
        self.delete()
        self.deleted.acquire()
        self.deleted.release()  # a second wait() returns at once
        try:
            self.removing.wait()
        finally:
            netlink.release_parked()
            self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """The bridge lock released (also at exit, whatever thread holds it)."""
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1


def delete_own_veth(cid: str, folder_id: str) -> None:
    host = veth_name(cid, folder_id)
    with netlink.open_route() as nl:
        if not netlink.link_exists(nl, host):
            return  # usually gone with the container's network namespace
        link = netlink.get_link(nl, host)
        # The name is a hash of the owner; an alias naming someone else is not ours anyway.
        if link is None or link.alias not in (
            None,
            "",
            OWNER_ALIAS_PREFIX + owner_tag(folder_id, cid),
        ):
            return
    delete_link(host)


def list_kiwi_veths(folder_id: str) -> dict[str, str]:
    """{veth: container id} of every veth this data folder made (for cleanup)."""
    mine = OWNER_ALIAS_PREFIX + folder_id + "/"
    with netlink.open_route() as nl:
        return {
            link.name: link.alias[len(mine) :]
            for link in netlink.get_links(nl)
            if link.kind == "veth" and (link.alias or "").startswith(mine)
        }


# -- anti-spoofing --------------------------------------------------------------------------


def spoof_table(bridge: str) -> str:
    return f"bridge {nft_table(bridge)}"


# nftables' own type ids and set userdata (what `nft` records for `type ifname : verdict`
# and for an anonymous set of ether types), so `nft list` shows the sets as nft made them.
IFNAME_TYPE, ETHERTYPE_TYPE, VERDICT_TYPE = 41, 10, 0xFFFFFF00
PORTS_USERDATA = bytes.fromhex("000401000000010400000000060400000000")
ETHERTYPES_USERDATA = bytes.fromhex("0004020000000314000407000000010c000411000000010403000000")
SET_MAP, SET_ANONYMOUS_CONSTANT = 0x8, 0x3
PORTS_ID, ETHERTYPES_ID = 1, 2  # set ids within one transaction
ETHERTYPE_IP, ETHERTYPE_ARP = b"\x08\x00", b"\x08\x06"
HOOK_PREROUTING, HOOK_FORWARD, HOOK_POSTROUTING = 0, 2, 4
PRIORITY_BRIDGE_FILTER, PRIORITY_FILTER, PRIORITY_SRCNAT = -200, 0, 100
CT_ESTABLISHED_RELATED = (2 | 4).to_bytes(4, sys.byteorder)  # ct state bits, in host order
NFPROTO_IPV4 = 2


def spoof_filter_ruleset(bridge: str) -> list[tuple]:
    """The shared part; adding it again keeps every port chain and map element:

        add table bridge kiwi-<bridge>
        add map bridge kiwi-<bridge> ports { type ifname : verdict; }
        add chain bridge kiwi-<bridge> prerouting { type filter hook prerouting priority filter; policy accept; }
        flush chain bridge kiwi-<bridge> prerouting
        add rule bridge kiwi-<bridge> prerouting iifname vmap @ports

    A bridge-family hook sees the frames of EVERY bridge on the host (the kernel
    here has no `meta ibrname`), so it only acts on ports in its map: interface
    names are unique host-wide, and another bridge's ports pass untouched."""
    nl, table = netlink, nft_table(bridge)
    return [
        nl.nft_new_table("bridge", table),
        nl.nft_new_set(
            "bridge",
            table,
            "ports",
            PORTS_ID,
            SET_MAP,
            (IFNAME_TYPE, nl.IFNAMSIZ),
            PORTS_USERDATA,
            VERDICT_TYPE,
        ),
        nl.nft_new_chain("bridge", table, "prerouting", ("filter", HOOK_PREROUTING, PRIORITY_BRIDGE_FILTER)),
        nl.nft_flush_chain("bridge", table, "prerouting"),
        nl.nft_new_rule(
            "bridge",
            table,
            "prerouting",
            nl.load_meta(nl.META_IIFNAME),
            nl.lookup("ports", PORTS_ID, verdict_map=True),
        ),
    ]


def port_chain(host: str) -> str:
    return f"port-{host}"


def port_ruleset(bridge: str, host: str, mac: str, ipv4: str, owner: str) -> list[tuple]:
    """The veth's own chain, emptied and filled, and its map element:

    add chain bridge kiwi-<bridge> port-<host> { comment "kiwi <owner>"; }
    flush chain bridge kiwi-<bridge> port-<host>
    ether saddr != <mac> drop
    ether type arp arp htype != 1 drop
    ether type arp arp hlen != 6 drop
    ether type arp arp plen != 4 drop
    ether type arp arp saddr ether != <mac> drop
    ether type arp arp saddr ip != <ipv4> drop
    ether type ip ip saddr != <ipv4> drop
    ether type != { ip, arp } drop
    accept
    add element bridge kiwi-<bridge> ports { "<host>" : jump port-<host> }"""
    import ipaddress

    nl, table, chain = netlink, nft_table(bridge), port_chain(host)
    mac_raw, ip_raw = netlink.mac_bytes(mac), ipaddress.IPv4Address(ipv4).packed
    link, net = nl.BASE_LINK, nl.BASE_NETWORK
    ether_type = nl.load_payload(link, 12, 2)
    arp = [ether_type, nl.compare(nl.CMP_EQ, ETHERTYPE_ARP)]
    drops = [
        [nl.load_payload(link, 6, 6), nl.compare(nl.CMP_NEQ, mac_raw)],
        [*arp, nl.load_payload(net, 0, 2), nl.compare(nl.CMP_NEQ, b"\x00\x01")],
        [*arp, nl.load_payload(net, 4, 1), nl.compare(nl.CMP_NEQ, b"\x06")],
        [*arp, nl.load_payload(net, 5, 1), nl.compare(nl.CMP_NEQ, b"\x04")],
        [*arp, nl.load_payload(net, 8, 6), nl.compare(nl.CMP_NEQ, mac_raw)],
        [*arp, nl.load_payload(net, 14, 4), nl.compare(nl.CMP_NEQ, ip_raw)],
        [
            ether_type,
            nl.compare(nl.CMP_EQ, ETHERTYPE_IP),
            nl.load_payload(net, 12, 4),
            nl.compare(nl.CMP_NEQ, ip_raw),
        ],
    ]
    rule = lambda *exprs: nl.nft_new_rule("bridge", table, chain, *exprs)  # noqa: E731
    return [
        nl.nft_new_chain("bridge", table, chain, comment=OWNER_ALIAS_PREFIX + owner),
        nl.nft_flush_chain("bridge", table, chain),
        *(rule(*exprs, nl.verdict(netlink.NF_DROP)) for exprs in drops),
        nl.nft_new_set(
            "bridge",
            table,
            "__set%d",
            ETHERTYPES_ID,
            SET_ANONYMOUS_CONSTANT,
            (ETHERTYPE_TYPE, 2),
            ETHERTYPES_USERDATA,
            size=2,
        ),
        nl.nft_new_elements(
            "bridge",
            table,
            "__set%d",
            ETHERTYPES_ID,
            [nl.set_element(ETHERTYPE_IP), nl.set_element(ETHERTYPE_ARP)],
        ),
        rule(ether_type, nl.lookup("__set%d", ETHERTYPES_ID, invert=True), nl.verdict(netlink.NF_DROP)),
        rule(nl.verdict(nl.NF_ACCEPT)),
        nl.nft_new_elements(
            "bridge", table, "ports", PORTS_ID, [nl.set_element(nl.ifname_bytes(host), jump=chain)]
        ),
    ]


def container_port_filter(cid: str, ipv4: str, folder_id: str) -> list[tuple]:
    """The container's anti-spoofing chain, for ensure_nat to install in its own
    transaction (one netlink request per start)."""
    owner = owner_tag(folder_id, cid)
    return port_ruleset(bridge_name(), veth_name(cid, folder_id), container_mac(ipv4), ipv4, owner)


def allow_only_own_addresses(bridge: str, host: str, mac: str, ipv4: str, owner: str) -> None:
    nft = find_nft()
    if not nft:
        return  # setup_host warned: without nft there is no filter
    # With the shared part: it may not exist yet (NAT by iptables) or a cleanup removed it.
    try:
        netlink.nft_batch(spoof_filter_ruleset(bridge) + port_ruleset(bridge, host, mac, ipv4, owner))
    except NetlinkError as e:
        error = os.strerror(e.errno or errno.EIO)
        raise KiwiError(f"nftables could not install the anti-spoofing filter: {error}") from None


def forget_port(bridge: str, host: str) -> None:
    """Remove a veth's map element and chain; either may be missing."""
    nft = find_nft()
    if not nft:
        return
    # One transaction: element and chain are only ever added together. Over netlink:
    # no nft process on the stop path.
    netlink.delete_nft_port(nft_table(bridge), "ports", host, port_chain(host))


def own_port_chains(bridge: str, folder_id: str) -> dict[str, str]:
    """{veth: container id} of the port chains this folder made on the bridge's filter."""
    import re

    nft = find_nft()
    if not nft:
        return {}
    listing = run([nft, "list", "table", *spoof_table(bridge).split()]).stdout
    pattern = rf'chain {port_chain("")}({VETH_PREFIX}[0-9a-f]+) {{\s+comment "{OWNER_ALIAS_PREFIX}{folder_id}/([0-9a-f]+)"'
    return dict(re.findall(pattern, listing))


# -- NAT and forwarding -------------------------------------------------------------------


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    import subprocess  # on first use: an idle container's stop starts no process (issue 20)

    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no error message"


def which(name: str) -> str | None:
    """shutil.which without importing shutil, which loads bz2 and lzma (~4 ms of a stop)."""
    for folder in os.get_exec_path():
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_nft() -> str | None:
    return which("nft")


def find_iptables() -> str | None:
    return which("iptables")


def enable_ip_forward() -> None:
    with open(IP_FORWARD, "w") as f:
        f.write("1\n")


def ensure_nat(port_filter: list[tuple] | None = None) -> str | None:
    """Forwarding and masquerading for the subnet; returns a warning when impossible.
    port_filter (container_port_filter) goes into the same transaction: it is in
    place exactly when no warning is returned. nftables over netlink: no nft process."""
    from kiwi import ipam

    bridge, subnet = bridge_name(), ipam.subnet()
    enable_ip_forward()
    nft, iptables = find_nft(), find_iptables()
    if nft:
        try:
            netlink.nft_batch(
                nft_ruleset(bridge, subnet) + spoof_filter_ruleset(bridge) + (port_filter or [])
            )
        except NetlinkError as e:
            if not iptables:
                raise KiwiError(
                    f"nftables could not set up NAT: {os.strerror(e.errno or errno.EIO)}"
                ) from None
        else:
            accept_in_dropping_iptables(bridge)
            return None
    if iptables:
        iptables_forward_accept(iptables, bridge)
        iptables_masquerade(iptables, bridge, subnet)
        return NO_FILTER_WARNING
    return NO_OUTBOUND_WARNING


def nft_ruleset(bridge: str, subnet) -> list[tuple]:
    """The whole table, made anew in one transaction (create, delete, define):

    table inet kiwi-<bridge> {
        chain forward {
            type filter hook forward priority filter; policy accept;
            iifname "<bridge>" accept
            oifname "<bridge>" ct state established,related accept
            oifname "<bridge>" drop    # nothing from outside may open connections to containers
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr <subnet> ip daddr != <subnet> masquerade
        }
    }"""
    nl, table = netlink, nft_table(bridge)
    iifname = [nl.load_meta(nl.META_IIFNAME), nl.compare(nl.CMP_EQ, nl.ifname_bytes(bridge))]
    oifname = [nl.load_meta(nl.META_OIFNAME), nl.compare(nl.CMP_EQ, nl.ifname_bytes(bridge))]
    established = [
        nl.load_ct(nl.CT_STATE),
        nl.mask(CT_ESTABLISHED_RELATED, bytes(4)),
        nl.compare(nl.CMP_NEQ, bytes(4)),
    ]
    ipv4 = [nl.load_meta(nl.META_NFPROTO), nl.compare(nl.CMP_EQ, bytes([NFPROTO_IPV4]))]
    forward = lambda *exprs: nl.nft_new_rule("inet", table, "forward", *exprs)  # noqa: E731
    return [
        nl.nft_new_table("inet", table),
        nl.nft_delete_table("inet", table),
        nl.nft_new_table("inet", table),
        nl.nft_new_chain("inet", table, "forward", ("filter", HOOK_FORWARD, PRIORITY_FILTER)),
        nl.nft_new_chain("inet", table, "postrouting", ("nat", HOOK_POSTROUTING, PRIORITY_SRCNAT)),
        forward(*iifname, nl.verdict(nl.NF_ACCEPT)),
        forward(*oifname, *established, nl.verdict(nl.NF_ACCEPT)),
        forward(*oifname, nl.verdict(nl.NF_DROP)),
        nl.nft_new_rule(
            "inet",
            table,
            "postrouting",
            *ipv4,
            *in_subnet(12, subnet, nl.CMP_EQ),  # ip saddr
            *in_subnet(16, subnet, nl.CMP_NEQ),  # ip daddr
            nl.masquerade(),
        ),
    ]


def in_subnet(offset: int, subnet, op: int) -> list[bytes]:
    """The IPv4 address at offset in (or, CMP_NEQ, outside) subnet; whole bytes compare a prefix."""
    nl, network = netlink, subnet.network_address.packed
    if subnet.prefixlen % 8 == 0 and subnet.prefixlen:
        size = subnet.prefixlen // 8
        return [nl.load_payload(nl.BASE_NETWORK, offset, size), nl.compare(op, network[:size])]
    return [
        nl.load_payload(nl.BASE_NETWORK, offset, 4),
        nl.mask(subnet.netmask.packed, bytes(4)),
        nl.compare(op, network),
    ]


def remove_nat() -> None:
    """Remove Kiwi's table and chains for this bridge; missing ones are fine."""
    bridge = bridge_name()
    if find_nft():
        netlink.delete_nft_table("inet", nft_table(bridge))
        netlink.delete_nft_table("bridge", nft_table(bridge))
    for iptables in iptables_variants():
        for table, hooks in IPTABLES_HOOKS:
            iptables_remove_chain(iptables, table, hooks, bridge)


# Where Kiwi's chain of each iptables table is jumped to from.
IPTABLES_HOOKS = (("filter", ("FORWARD", "DOCKER-USER")), ("nat", ("POSTROUTING",)))


# -- iptables --------------------------------------------------------------------------------


def iptables_variants() -> list[str]:
    """Every iptables backend that may hold rules: nft-based, legacy if in use, or plain."""
    found = []
    for name in ("iptables-nft", "iptables-legacy"):
        path = which(name)
        if path and (name != "iptables-legacy" or legacy_filter_in_use()):
            found.append(path)
    plain = find_iptables()
    if not found and plain:
        found.append(plain)
    return found


def legacy_filter_in_use() -> bool:
    # Reading the list does not load ip_tables, unlike running iptables-legacy.
    try:
        with open(LEGACY_TABLES) as f:
            return "filter" in f.read().split()
    except OSError:
        return False


def iptables(cmd: str, *args: str) -> subprocess.CompletedProcess:
    return run([cmd, "-w", *args])


def nft_backed(cmd: str) -> bool:
    """iptables-nft keeps its chains as nftables chains of the tables `ip filter`,
    `ip nat`: netlink can read them without starting iptables."""
    return "nft" in os.path.basename(os.path.realpath(cmd))


def nft_backed_chain(cmd: str, table: str, chain: str) -> dict[int, bytes] | bool | None:
    """The chain's netlink attributes (None: no such chain); False when only iptables can tell."""
    if not nft_backed(cmd):
        return False
    try:
        return netlink.nft_chain("ip", table, chain)
    except OSError:
        return False


def chain_exists(cmd: str, table: str, chain: str) -> bool:
    found = nft_backed_chain(cmd, table, chain)
    if found is not False:
        return found is not None
    return iptables(cmd, "-t", table, "-S", chain).returncode == 0


def forward_policy_drops(cmd: str) -> bool:
    found = nft_backed_chain(cmd, "filter", "FORWARD")
    if found is not False:
        return isinstance(found, dict) and netlink.chain_policy(found) == netlink.NF_DROP
    result = iptables(cmd, "-t", "filter", "-S", "FORWARD")
    return result.returncode == 0 and "-P FORWARD DROP" in result.stdout


def accept_in_dropping_iptables(bridge: str) -> None:
    """With a DROP FORWARD policy (Docker), an nft accept elsewhere is not enough."""
    for cmd in iptables_variants():
        if forward_policy_drops(cmd) or chain_exists(cmd, "filter", "DOCKER-USER"):
            iptables_forward_accept(cmd, bridge)


def forward_hook_chain(cmd: str) -> str:
    # Docker rebuilds FORWARD but keeps DOCKER-USER, which is meant for rules like ours.
    return "DOCKER-USER" if chain_exists(cmd, "filter", "DOCKER-USER") else "FORWARD"


def iptables_forward_accept(cmd: str, bridge: str) -> None:
    chain = iptables_chain(bridge)
    define_chain(
        cmd,
        "filter",
        chain,
        [
            f"-i {bridge} -j ACCEPT",
            f"-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-o {bridge} -j DROP",
        ],
    )
    insert_jump_once(cmd, "filter", forward_hook_chain(cmd), chain)


def iptables_masquerade(cmd: str, bridge: str, subnet) -> None:
    chain = iptables_chain(bridge)
    define_chain(cmd, "nat", chain, [f"-s {subnet} ! -d {subnet} -j MASQUERADE"])
    insert_jump_once(cmd, "nat", "POSTROUTING", chain)


def define_chain(cmd: str, table: str, chain: str, rules: list[str]) -> None:
    """Replace the chain's rules atomically (declaring a chain in --noflush mode flushes it)."""
    text = f"*{table}\n:{chain} - [0:0]\n" + "".join(f"-A {chain} {r}\n" for r in rules) + "COMMIT\n"
    result = run([cmd + "-restore", "-w", "--noflush"], text)
    if result.returncode != 0:
        raise KiwiError(f"iptables could not set up {chain}: {first_line(result.stderr)}")


def insert_jump_once(cmd: str, table: str, hook: str, chain: str) -> None:
    if iptables(cmd, "-t", table, "-C", hook, "-j", chain).returncode == 0:
        return
    result = iptables(cmd, "-t", table, "-I", hook, "1", "-j", chain)
    if result.returncode != 0:
        raise KiwiError(f"iptables could not add {chain} to {hook}: {first_line(result.stderr)}")


def iptables_remove_chain(cmd: str, table: str, hooks: tuple[str, ...], bridge: str) -> bool:
    """Remove the bridge's chain and every jump to it; True when it existed and is gone."""
    chain = iptables_chain(bridge)
    if not chain_exists(cmd, table, chain):
        return False
    for hook in hooks:
        while iptables(cmd, "-t", table, "-D", hook, "-j", chain).returncode == 0:
            pass  # remove every copy, even ones a race may have added
    iptables(cmd, "-t", table, "-F", chain)
    return iptables(cmd, "-t", table, "-X", chain).returncode == 0


# -- one call for the runtime ------------------------------------------------------------------


def setup_host() -> str | None:
    """Bridge plus NAT; returns a warning for the CLI to print, or None."""
    ensure_bridge()
    return ensure_nat()
