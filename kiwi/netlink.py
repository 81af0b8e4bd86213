"""The few netlink requests Kiwi's network makes, on the socket module alone.

rtnetlink for links, addresses and routes; nftables' netlink for Kiwi's ruleset
(one transaction, the same messages `nft -f` sends for its text: no nft process
on a start), for removing tables, chains and map elements and for asking
whether a chain exists.
pyroute2's IPRoute cost 0.1-0.5 s of import (asyncio, hundreds of message
classes) on every container start and stop; these messages are a few structs.

Every request is synchronous: send it, read until its acknowledgement (or the
end of a dump). Failures raise NetlinkError, an OSError with the kernel's errno.
"""

from __future__ import annotations

import _socket as socket  # not socket: its enum conversions cost ~2.5 ms of each start and stop
import errno
import os
import struct

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NLA_HDR = struct.Struct("=HH")  # length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_MULTI, F_ACK, F_DUMP = 0x1, 0x2, 0x4, 0x300
F_EXCL, F_CREATE = 0x200, 0x400
NLA_F_NESTED, NLA_TYPE_MASK = 0x8000, 0x3FFF
RECV_SIZE = 1 << 18

# rtnetlink (linux/rtnetlink.h, if_link.h, if_addr.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE, RTM_GETROUTE = 20, 24, 26
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_PID, IFLA_IFALIAS = 1, 3, 10, 18, 19, 20
IFLA_NET_NS_FD, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 28, 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

# nftables (linux/netfilter/nfnetlink.h, nf_tables.h)
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFGEN = struct.Struct("=BBH")  # family, version, resource id (big endian)
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE, NFT_MSG_GETCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSETELEM = 2, 4, 5, 8, 14
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY = 1, 3, 5
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE = 1, 1, 1
NFT_FAMILIES = {"inet": 1, "ip": 2, "bridge": 7}
NF_DROP = 0
IFNAMSIZ = 16
SIOCGIFINDEX = 0x8933
IFREQ = struct.Struct("16s24x")  # struct ifreq: the name, then its 24-byte union


class NetlinkError(OSError):
    """The kernel refused a request; errno says why."""


# Plain classes, not namedtuples: collections' import and the class-making were ~1 ms of a
# stop before its bridge's deletion (issue 20).
class Link:
    """kind, alias, master, mac: None if unset."""

    __slots__ = ("alias", "index", "kind", "mac", "master", "name")

    def __init__(
        self, index: int, name: str, kind: str | None, alias: str | None, master: int | None, mac=None
    ):
        self.index, self.name, self.kind, self.alias, self.master, self.mac = (
            index,
            name,
            kind,
            alias,
            master,
            mac,
        )

    def __repr__(self) -> str:
        return (
            f"Link({self.index}, {self.name!r}, {self.kind!r}, {self.alias!r}, {self.master!r}, {self.mac!r})"
        )


class Route:
    """dst: None for a default route."""

    __slots__ = ("dst", "dst_len", "oif")

    def __init__(self, dst: str | None, dst_len: int, oif: int | None):
        self.dst, self.dst_len, self.oif = dst, dst_len, oif

    def __repr__(self) -> str:
        return f"Route({self.dst!r}, {self.dst_len}, {self.oif!r})"


# -- encoding and decoding ------------------------------------------------------------


def attr(kind: int, data: bytes) -> bytes:
    length = NLA_HDR.size + len(data)
    return NLA_HDR.pack(length, kind) + data + b"\0" * (-length % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    attrs = {}
    while offset + NLA_HDR.size <= len(data):
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + NLA_HDR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")


def u32(raw: bytes | None) -> int | None:
    return None if raw is None else struct.unpack("=I", raw[:4])[0]


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_text(raw: bytes | None) -> str | None:
    return None if raw is None else ":".join(f"{b:02x}" for b in raw)


# -- a socket --------------------------------------------------------------------------


class Socket:
    """One netlink socket (of the calling thread's network namespace)."""

    def __init__(self, protocol: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.bind((0, 0))
        self.seq = 0
        self.protocol = protocol

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.protocol != NETLINK_NETFILTER:
            self.sock.close()
        elif parking:
            parking[-1].append(self.sock)
        else:
            close_behind(self.sock)

    def message(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, NLMSG_HDR.pack(
            NLMSG_HDR.size + len(body), kind, flags | F_REQUEST, self.seq, 0
        ) + body

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[tuple[int, bytes]]:
        """Send one request; returns the (type, payload) replies up to its ACK or DONE."""
        seq, data = self.message(kind, flags if flags & F_DUMP == F_DUMP else flags | F_ACK, body)
        self.sock.send(data)
        return self.replies({seq})

    def replies(self, pending: set[int]) -> list[tuple[int, bytes]]:
        """Read until every sequence number in pending is acknowledged (or its dump done);
        the first error raises once all are in (nothing of ours stays queued)."""
        found, error = [], None
        while pending:
            data = self.sock.recv(RECV_SIZE)
            offset = 0
            while offset + NLMSG_HDR.size <= len(data):
                length, kind, _, seq, _ = NLMSG_HDR.unpack_from(data, offset)
                payload = data[offset + NLMSG_HDR.size : offset + length]
                offset += max((length + 3) & ~3, NLMSG_HDR.size)
                if seq not in pending:
                    continue
                if kind in (NLMSG_ERROR, NLMSG_DONE):
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    pending.discard(seq)
                    if code > 0 and error is None:
                        error = NetlinkError(code, os.strerror(code))
                else:
                    found.append((kind, payload))
        if error is not None:
            raise error
        return found


# [the netfilter sockets kept open since park_releases()] while parking, else empty.
parking: list[list] = []


def park_releases() -> None:
    """Keep netfilter sockets open until release_parked(). Releasing one flushes the last
    nftables transaction's destroy work (an RCU grace period, ~10-20 ms here) while holding
    the nftables commit mutex, and registering or unregistering any network device (a
    start's veth, a stop's bridge) waits for that mutex: a start's veth waited up to 19 ms
    for its own closes (issue 20)."""
    if not parking:
        parking.append([])


def release_parked() -> None:
    """Release the sockets kept since park_releases(), behind us (close_behind); stop parking."""
    for sock in parking.pop() if parking else []:
        close_behind(sock)


def close_behind(sock) -> None:
    """Close a netfilter socket in a thread of its own. The release of any netfilter socket
    flushes the destroy work of the last nftables transaction, an RCU grace period (~10 ms,
    twice in each start: the batch's socket and the next one, issue 20) that the caller
    need not wait for: a transaction is committed once acknowledged. The socket is
    close-on-exec, and a forked stage closes every fd before it execs."""
    import _thread

    _thread.start_new_thread(sock.close, ())


def open_route(netns: str | None = None) -> Socket:
    """An rtnetlink socket; in the network namespace at path netns if given (the socket
    stays bound to it; this thread goes back to its own namespace at once)."""
    if netns is None:
        return Socket(NETLINK_ROUTE)
    from . import syscalls as sc

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
        try:
            return Socket(NETLINK_ROUTE)
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


# -- links -------------------------------------------------------------------------------


def decode_link(payload: bytes) -> Link:
    _, _, index, _, _ = IFINFO.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFO.size)
    info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
    return Link(
        index,
        text(attrs.get(IFLA_IFNAME)) or "",
        text(info.get(IFLA_INFO_KIND)),
        text(attrs.get(IFLA_IFALIAS)),
        u32(attrs.get(IFLA_MASTER)),
        mac_text(attrs.get(IFLA_ADDRESS)),
    )


def get_link(nl: Socket, name: str) -> Link | None:
    try:
        replies = nl.request(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))
    except NetlinkError as e:
        if e.errno == errno.ENODEV:
            return None
        raise
    return decode_link(replies[0][1]) if replies else None


def link_exists(nl: Socket, name: str) -> bool:
    """Whether a link of that name exists, by SIOCGIFINDEX on the socket: a lookup under
    RCU alone. RTM_GETLINK waits for the rtnl lock, which a dying network namespace's
    cleanup holds for tens of ms (the stopped container's, right after its init exits)."""
    import fcntl

    if len(name.encode()) >= IFNAMSIZ:
        return get_link(nl, name) is not None  # no such name fits struct ifreq
    try:
        fcntl.ioctl(nl.sock.fileno(), SIOCGIFINDEX, IFREQ.pack(name.encode()))
    except OSError as e:
        if e.errno == errno.ENODEV:
            return False
        raise
    return True


def get_links(nl: Socket) -> list[Link]:
    return [decode_link(p) for kind, p in nl.request(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0), F_DUMP)]


def delete_link(nl: Socket, index: int) -> None:
    nl.request(RTM_DELLINK, IFINFO.pack(0, 0, index, 0, 0))


def set_link(nl: Socket, index: int, up: bool = False, master: int | None = None, alias: str | None = None):
    attrs = b""
    if master is not None:
        attrs += attr_u32(IFLA_MASTER, master)
    if alias is not None:
        attrs += attr_str(IFLA_IFALIAS, alias)
    flags = IFF_UP if up else 0
    nl.request(RTM_NEWLINK, IFINFO.pack(0, 0, index, flags, flags) + attrs)


def add_bridge(nl: Socket, name: str, mac: str) -> None:
    nl.request(
        RTM_NEWLINK,
        IFINFO.pack(0, 0, 0, 0, 0)
        + attr_str(IFLA_IFNAME, name)
        + attr(IFLA_ADDRESS, mac_bytes(mac))
        + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")),
        F_CREATE | F_EXCL,
    )


# One tx and one rx queue, asked for at creation: the count veth settles on anyway. Left out,
# each end is made with one queue per CPU and then cut to one under the RTNL lock, and each
# cut waits an expedited RCU grace period (netif_set_real_num_tx_queues): 0.5-7 ms per
# start, measured, on the start's critical path (issue 20).
ONE_QUEUE = attr_u32(IFLA_NUM_TX_QUEUES, 1) + attr_u32(IFLA_NUM_RX_QUEUES, 1)


def add_veth(
    nl: Socket, name: str, peer: str, peer_netns_pid: int, peer_mac: str, peer_netns_fd: int | None = None
) -> None:
    """A veth pair whose peer is born in the network namespace of peer_netns_pid, or the one
    the fd peer_netns_fd holds (no pid to look up, which another process may have by then)."""
    where = (
        attr_u32(IFLA_NET_NS_PID, peer_netns_pid)
        if peer_netns_fd is None
        else attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    )
    peer_info = (
        IFINFO.pack(0, 0, 0, 0, 0)
        + attr_str(IFLA_IFNAME, peer)
        + where
        + attr(IFLA_ADDRESS, mac_bytes(peer_mac))
        + ONE_QUEUE
    )
    nl.request(
        RTM_NEWLINK,
        IFINFO.pack(0, 0, 0, 0, 0)
        + attr_str(IFLA_IFNAME, name)
        + ONE_QUEUE
        + nested(
            IFLA_LINKINFO,
            attr_str(IFLA_INFO_KIND, "veth"),
            nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info)),
        ),
        F_CREATE | F_EXCL,
    )


# -- addresses and routes ----------------------------------------------------------------------


def add_address(nl: Socket, index: int, address: str, prefixlen: int) -> None:
    raw = socket.inet_aton(address)
    nl.request(
        RTM_NEWADDR,
        IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        + attr(IFA_LOCAL, raw)
        + attr(IFA_ADDRESS, raw),
        F_CREATE | F_EXCL,
    )


def add_default_route(nl: Socket, gateway: str) -> None:
    nl.request(
        RTM_NEWROUTE,
        RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        + attr(RTA_GATEWAY, socket.inet_aton(gateway)),
        F_CREATE | F_EXCL,
    )


def main_table_routes(nl: Socket) -> list[Route]:
    """The IPv4 routes of the main table."""
    routes = []
    for _, payload in nl.request(RTM_GETROUTE, RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), F_DUMP):
        _, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(payload)
        attrs = parse_attrs(payload, RTMSG.size)
        if (u32(attrs.get(RTA_TABLE)) or table) != RT_TABLE_MAIN:  # RTA_TABLE: ids above 255
            continue
        dst = attrs.get(RTA_DST)
        routes.append(Route(socket.inet_ntoa(dst) if dst else None, dst_len, u32(attrs.get(RTA_OIF))))
    return routes


# -- nftables ----------------------------------------------------------------------------------


def nft_message(nl: Socket, kind: int, family: str, attrs: bytes, flags: int = F_ACK) -> tuple[int, bytes]:
    return nl.message(
        (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, NFGEN.pack(NFT_FAMILIES[family], 0, 0) + attrs
    )


def nft_batch(messages: list[tuple[int, int, str, bytes]]) -> None:
    """Run (type, flags, family, attributes) messages as one nftables transaction:
    all or nothing. Raises the first error."""
    with Socket(NETLINK_NETFILTER) as nl:
        res_id = socket.htons(NFNL_SUBSYS_NFTABLES)
        _, begin = nl.message(NFNL_MSG_BATCH_BEGIN, 0, NFGEN.pack(0, 0, res_id))
        pending, data = set(), begin
        for kind, flags, family, attrs in messages:
            seq, message = nft_message(nl, kind, family, attrs, flags | F_ACK)
            pending.add(seq)
            data += message
        _, end = nl.message(NFNL_MSG_BATCH_END, 0, NFGEN.pack(0, 0, res_id))
        nl.sock.send(data + end)
        nl.replies(pending)


def delete_nft_table(family: str, table: str) -> bool:
    """Delete a whole table; False if there was none."""
    return ignore_missing(
        lambda: nft_batch([(NFT_MSG_DELTABLE, 0, family, attr_str(NFTA_TABLE_NAME, table))])
    )


def delete_nft_port(table: str, ports_map: str, port: str, chain: str) -> bool:
    """In one transaction: the ifname map element `port` of the bridge table, the rules
    of `chain` and the chain itself. False if any of them was missing (nothing changed).
    They are only ever added together: without the chain there is nothing to delete, and
    asking costs 0.2 ms where a refused transaction costs 10-20 (the kernel's abort)."""
    if nft_chain("bridge", table, chain) is None:
        return False
    key = nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, port.encode().ljust(IFNAMSIZ, b"\0")))
    elements = (
        attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        + attr_str(NFTA_SET_ELEM_LIST_SET, ports_map)
        + nested(NFTA_SET_ELEM_LIST_ELEMENTS, nested(NFTA_LIST_ELEM, key))
    )
    in_chain = attr_str(NFTA_RULE_TABLE, table) + attr_str(NFTA_RULE_CHAIN, chain)
    return ignore_missing(
        lambda: nft_batch(
            [
                (NFT_MSG_DELSETELEM, 0, "bridge", elements),
                (NFT_MSG_DELRULE, 0, "bridge", in_chain),
                (
                    NFT_MSG_DELCHAIN,
                    0,
                    "bridge",
                    attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, chain),
                ),
            ]
        )
    )


# -- nftables: building a ruleset ------------------------------------------------------------
#
# What `nft -f` sends for Kiwi's few rules (checked against `nft --debug=mnl`): tables,
# base and regular chains, a verdict map, anonymous sets and rules made of the
# expressions below. nf_tables attributes are big endian unless they carry data.

NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM = 0, 3, 6, 9, 12
F_APPEND = 0x800  # a new rule goes after the chain's last one (without: before the first)
NFTA_TABLE_FLAGS = 2
NFTA_CHAIN_HOOK, NFTA_CHAIN_TYPE, NFTA_CHAIN_USERDATA = 4, 7, 12
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_EXPRESSIONS, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 4, 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN, NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_USERDATA = 6, 7, 9, 10, 13
NFTA_SET_DESC_SIZE, NFTA_SET_ELEM_LIST_SET_ID, NFTA_SET_ELEM_DATA = 1, 4, 2
NFTA_DATA_VERDICT, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 2, 1, 2
NF_ACCEPT, NFT_JUMP = 1, -3
REG_VERDICT, REG_1 = 0, 1
CMP_EQ, CMP_NEQ = 0, 1
BASE_LINK, BASE_NETWORK = 0, 1
META_IIFNAME, META_OIFNAME, META_NFPROTO = 6, 7, 15
CT_STATE = 0
LOOKUP_INVERT = 1
UDATA_CHAIN_COMMENT = 0


def attr_be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def ifname_bytes(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ, b"\0")


def nft_new_table(family: str, table: str) -> tuple:
    return (
        NFT_MSG_NEWTABLE,
        F_CREATE,
        family,
        attr_str(NFTA_TABLE_NAME, table) + attr_be32(NFTA_TABLE_FLAGS, 0),
    )


def nft_delete_table(family: str, table: str) -> tuple:
    return (NFT_MSG_DELTABLE, 0, family, attr_str(NFTA_TABLE_NAME, table))


def nft_new_chain(family: str, table: str, chain: str, hook: tuple | None = None, comment: str = "") -> tuple:
    """hook: (type, hook number, priority) for a base chain (policy accept)."""
    attrs = attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, chain)
    if hook is not None:
        kind, number, priority = hook
        attrs += attr_str(NFTA_CHAIN_TYPE, kind) + attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        attrs += nested(
            NFTA_CHAIN_HOOK, attr_be32(NFTA_HOOK_HOOKNUM, number), attr_be32(NFTA_HOOK_PRIORITY, priority)
        )
    if comment:
        raw = comment.encode() + b"\0"
        attrs += attr(NFTA_CHAIN_USERDATA, bytes([UDATA_CHAIN_COMMENT, len(raw)]) + raw)
    return (NFT_MSG_NEWCHAIN, F_CREATE, family, attrs)


def nft_flush_chain(family: str, table: str, chain: str) -> tuple:
    return (NFT_MSG_DELRULE, 0, family, attr_str(NFTA_RULE_TABLE, table) + attr_str(NFTA_RULE_CHAIN, chain))


def nft_new_rule(family: str, table: str, chain: str, *expressions: bytes) -> tuple:
    attrs = attr_str(NFTA_RULE_TABLE, table) + attr_str(NFTA_RULE_CHAIN, chain)
    return (NFT_MSG_NEWRULE, F_CREATE | F_APPEND, family, attrs + nested(NFTA_RULE_EXPRESSIONS, *expressions))


def nft_new_set(
    family: str,
    table: str,
    name: str,
    set_id: int,
    flags: int,
    key: tuple,
    userdata: bytes,
    data_type: int | None = None,
    size: int | None = None,
) -> tuple:
    """key: (type, length); data_type for a map (its data length 0: verdicts); size for a constant set."""
    key_type, key_len = key
    attrs = attr_str(NFTA_SET_TABLE, table) + attr_str(NFTA_SET_NAME, name) + attr_be32(NFTA_SET_FLAGS, flags)
    attrs += attr_be32(NFTA_SET_KEY_TYPE, key_type) + attr_be32(NFTA_SET_KEY_LEN, key_len)
    if data_type is not None:
        attrs += attr_be32(NFTA_SET_DATA_TYPE, data_type) + attr_be32(NFTA_SET_DATA_LEN, 0)
    attrs += attr_be32(NFTA_SET_ID, set_id)
    if size is not None:
        attrs += nested(NFTA_SET_DESC, attr_be32(NFTA_SET_DESC_SIZE, size))
    return (NFT_MSG_NEWSET, F_CREATE, family, attrs + attr(NFTA_SET_USERDATA, userdata))


def nft_new_elements(family: str, table: str, name: str, set_id: int, elements: list[bytes]) -> tuple:
    """elements: from set_element()."""
    attrs = attr_str(NFTA_SET_ELEM_LIST_TABLE, table) + attr_str(NFTA_SET_ELEM_LIST_SET, name)
    attrs += attr_be32(NFTA_SET_ELEM_LIST_SET_ID, set_id)
    numbered = (nested(i, element) for i, element in enumerate(elements, 1))  # as nft numbers them
    return (NFT_MSG_NEWSETELEM, F_CREATE, family, attrs + nested(NFTA_SET_ELEM_LIST_ELEMENTS, *numbered))


def set_element(key: bytes, jump: str | None = None) -> bytes:
    """A set element's attributes; with jump, a verdict map's `key : jump <chain>`."""
    data = b""
    if jump is not None:
        data = nested(NFTA_SET_ELEM_DATA, verdict_data(NFT_JUMP, jump))
    return nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)) + data


def verdict_data(code: int, chain: str | None = None) -> bytes:
    target = attr_str(NFTA_VERDICT_CHAIN, chain) if chain else b""
    return nested(NFTA_DATA_VERDICT, attr_be32(NFTA_VERDICT_CODE, code), target)


def expression(name: str, *attrs: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, attr_str(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, *attrs))


def load_meta(key: int) -> bytes:
    return expression("meta", attr_be32(2, key), attr_be32(1, REG_1))  # KEY, DREG


def load_ct(key: int) -> bytes:
    return expression("ct", attr_be32(2, key), attr_be32(1, REG_1))  # KEY, DREG


def load_payload(base: int, offset: int, length: int) -> bytes:
    return expression(
        "payload", *(attr_be32(k, v) for k, v in ((1, REG_1), (2, base), (3, offset), (4, length)))
    )


def compare(op: int, value: bytes) -> bytes:
    return expression("cmp", attr_be32(1, REG_1), attr_be32(2, op), nested(3, attr(NFTA_DATA_VALUE, value)))


def mask(value: bytes, xor: bytes) -> bytes:
    """reg 1 = (reg 1 & value) ^ xor"""
    return expression(
        "bitwise",
        attr_be32(1, REG_1),
        attr_be32(2, REG_1),
        attr_be32(3, len(value)),
        nested(4, attr(NFTA_DATA_VALUE, value)),
        nested(5, attr(NFTA_DATA_VALUE, xor)),
    )


def lookup(set_name: str, set_id: int, verdict_map: bool = False, invert: bool = False) -> bytes:
    """reg 1 in the set (not in it, invert); a verdict map's lookup sets the verdict."""
    if verdict_map:
        return expression(
            "lookup",
            attr_be32(2, REG_1),
            attr_be32(3, REG_VERDICT),
            attr_str(1, set_name),
            attr_be32(4, set_id),
        )
    flags = attr_be32(5, LOOKUP_INVERT) if invert else b""
    return expression("lookup", attr_be32(2, REG_1), attr_str(1, set_name), attr_be32(4, set_id), flags)


def verdict(code: int) -> bytes:
    return expression("immediate", attr_be32(1, REG_VERDICT), nested(2, verdict_data(code)))


def masquerade() -> bytes:
    return expression("masq")


def nft_chain(family: str, table: str, chain: str) -> dict[int, bytes] | None:
    """A chain's attributes (e.g. an iptables-nft chain in `ip filter`), None if it does not exist."""
    body = attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, chain)
    return nft_get(NFT_MSG_GETCHAIN, family, body)


def nft_table_exists(family: str, table: str) -> bool:
    """A lookup costs ~0.2 ms where deleting a missing table costs 10-20 (the kernel's abort)."""
    return nft_get(NFT_MSG_GETTABLE, family, attr_str(NFTA_TABLE_NAME, table)) is not None


def nft_get(kind: int, family: str, body: bytes) -> dict[int, bytes] | None:
    """One nftables object's attributes, None if it does not exist."""
    with Socket(NETLINK_NETFILTER) as nl:
        seq, data = nft_message(nl, kind, family, body)
        nl.sock.send(data)
        try:
            replies = nl.replies({seq})
        except NetlinkError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
    return parse_attrs(replies[0][1], NFGEN.size) if replies else None


def chain_policy(chain: dict[int, bytes]) -> int | None:
    """A base chain's policy (NF_DROP, NF_ACCEPT) from nft_chain's attributes; None for others."""
    raw = chain.get(NFTA_CHAIN_POLICY)
    return None if raw is None else struct.unpack(">I", raw[:4])[0]


def ignore_missing(action) -> bool:
    return unless_errno(errno.ENOENT, action)


def unless_errno(code: int, action) -> bool:
    """Run a request; False if the kernel refused it with errno `code` (others raise)."""
    try:
        action()
    except NetlinkError as e:
        if e.errno != code:
            raise
        return False
    return True
