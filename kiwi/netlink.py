"""The few netlink requests Kiwi's network makes, on the socket module alone.

rtnetlink for links, addresses and routes; nftables' netlink for removing
tables, chains and map elements and for asking whether a chain exists.
pyroute2's IPRoute cost 0.1-0.5 s of import (asyncio, hundreds of message
classes) on every container start and stop; these messages are a few structs.

Every request is synchronous: send it, read until its acknowledgement (or the
end of a dump). Failures raise NetlinkError, an OSError with the kernel's errno.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import namedtuple

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
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

# nftables (linux/netfilter/nfnetlink.h, nf_tables.h)
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFGEN = struct.Struct("=BBH")  # family, version, resource id (big endian)
NFT_MSG_DELTABLE, NFT_MSG_GETCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSETELEM = 2, 4, 5, 8, 14
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY = 1, 3, 5
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE = 1, 1, 1
NFT_FAMILIES = {"inet": 1, "ip": 2, "bridge": 7}
NF_DROP = 0
IFNAMSIZ = 16


class NetlinkError(OSError):
    """The kernel refused a request; errno says why."""


Link = namedtuple("Link", "index name kind alias master")  # kind, alias, master: None if unset
Route = namedtuple("Route", "dst dst_len oif")  # dst: None for a default route


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


# -- a socket --------------------------------------------------------------------------


class Socket:
    """One netlink socket (of the calling thread's network namespace)."""

    def __init__(self, protocol: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

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
    )


def get_link(nl: Socket, name: str) -> Link | None:
    try:
        replies = nl.request(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))
    except NetlinkError as e:
        if e.errno == errno.ENODEV:
            return None
        raise
    return decode_link(replies[0][1]) if replies else None


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


def add_veth(nl: Socket, name: str, peer: str, peer_netns_pid: int, peer_mac: str) -> None:
    """A veth pair whose peer is born in the network namespace of peer_netns_pid."""
    peer_info = (
        IFINFO.pack(0, 0, 0, 0, 0)
        + attr_str(IFLA_IFNAME, peer)
        + attr_u32(IFLA_NET_NS_PID, peer_netns_pid)
        + attr(IFLA_ADDRESS, mac_bytes(peer_mac))
    )
    nl.request(
        RTM_NEWLINK,
        IFINFO.pack(0, 0, 0, 0, 0)
        + attr_str(IFLA_IFNAME, name)
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
    of `chain` and the chain itself. False if any of them was missing (nothing changed)."""
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


def nft_chain(family: str, table: str, chain: str) -> dict[int, bytes] | None:
    """A chain's attributes (e.g. an iptables-nft chain in `ip filter`), None if it does not exist."""
    with Socket(NETLINK_NETFILTER) as nl:
        body = attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, chain)
        seq, data = nft_message(nl, NFT_MSG_GETCHAIN, family, body)
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
