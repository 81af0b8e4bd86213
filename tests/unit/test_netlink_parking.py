"""netlink.park_releases: a start keeps its netfilter sockets open until its veth exists
(releasing one holds the nftables commit mutex through an RCU grace period, and a
network device's registration waits for that mutex)."""

from __future__ import annotations

import os
import time

from kiwi import netlink


def closed_soon(sock, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if sock.fileno() == -1:
            return True
        time.sleep(0.01)
    return False


def test_a_parked_netfilter_socket_stays_open_until_released():
    netlink.park_releases()
    try:
        nl = netlink.Socket(netlink.NETLINK_NETFILTER)
        fd = nl.sock.fileno()
        nl.close()
        time.sleep(0.05)
        assert nl.sock.fileno() == fd
        os.fstat(fd)  # still ours
    finally:
        netlink.release_parked()
    assert closed_soon(nl.sock)
    assert netlink.parking == []


def test_without_parking_a_netfilter_socket_is_closed_behind_us():
    nl = netlink.Socket(netlink.NETLINK_NETFILTER)
    nl.close()
    assert closed_soon(nl.sock)


def test_route_sockets_are_never_parked():
    netlink.park_releases()
    try:
        nl = netlink.Socket(netlink.NETLINK_ROUTE)
        nl.close()
        assert nl.sock.fileno() == -1
    finally:
        netlink.release_parked()


def test_release_without_parking_is_harmless():
    netlink.release_parked()
    assert netlink.parking == []


def test_the_veth_request_asks_for_one_queue_each_way():
    """Each end made with one tx and one rx queue: no cut under the RTNL lock afterwards."""
    sent = []

    class Recorder:
        def request(self, kind, body, flags=0):
            sent.append(body)

    netlink.add_veth(Recorder(), "kwv0", "eth0", 1, "02:00:00:00:00:01")  # type: ignore[arg-type]
    (body,) = sent
    assert body.count(netlink.ONE_QUEUE) == 2  # the host end and, nested, the peer
