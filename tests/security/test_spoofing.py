"""Issue 12 item 7: a container may only send with its own IPv4 and MAC.

Container A (root, CAP_NET_RAW) forges frames with a static program built here
(tests/security/spoof.c) through a packet socket: UDP with B's source address,
UDP with B's MAC, UDP to B pretending to be the host, and ARP replies claiming
B's address. A listener in B and one on the bridge address must never see the
forged datagrams, and the host's neighbour entry for B must keep B's MAC; the
same program's honest datagrams must arrive (so the test can fail).

Traffic stays inside the test's own bridge subnet."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

HERE = Path(__file__).resolve().parent
PORT = 40777


@pytest.fixture(scope="module")
def spoof_binary(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spoof") / "spoof"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(HERE / "spoof.c")], check=True)
    return out


def gateway(kiwi) -> str:
    return str(ipaddress.ip_network(kiwi.env["KIWI_SUBNET"]).network_address + 1)


def install(kiwi, cid: str, binary: Path) -> None:
    with open(binary, "rb") as f:
        done = subprocess.run(
            kiwi.cmd + ["attach", cid, "--", "sh", "-c", "cat > /spoof && chmod 755 /spoof"],
            stdin=f,
            env=kiwi.env,
            capture_output=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr


def mac_inside(kiwi, cid: str) -> str:
    return kiwi.out("attach", cid, "--", "cat", "/sys/class/net/eth0/address")


def neighbour_mac(bridge: str, ip: str) -> str | None:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=bridge)[0]
        for entry in ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
            if entry.get("NDA_DST") == ip:
                return entry.get("NDA_LLADDR")
    return None


def learn_neighbour(bridge: str, ip: str) -> None:
    """The host resolves `ip` the normal way (a datagram to it makes it ARP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(50):
            s.sendto(b"hello", (ip, 9))
            if neighbour_mac(bridge, ip):
                return
            time.sleep(0.1)


class HostListener:
    """UDP on the bridge address of the host: what reaches the host as a datagram."""

    def __init__(self, ip: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, PORT))
        self.sock.settimeout(0.2)

    def received(self, seconds: float) -> list[tuple[str, str]]:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, (peer, _) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            got.append((peer, data.decode(errors="replace").rstrip("\0")))
        return got

    def close(self) -> None:
        self.sock.close()


def test_container_cannot_send_with_another_containers_addresses(kiwi, busybox, spoof_binary):
    bridge, gw = kiwi.env["KIWI_BRIDGE"], gateway(kiwi)
    ca, cb = kiwi.create(busybox), kiwi.create(busybox)
    for cid in (ca, cb):
        kiwi("attach", cid, "--", "true", timeout=300)
        install(kiwi, cid, spoof_binary)
    ip_a, ip_b = kiwi.out("ip", ca), kiwi.out("ip", cb)
    mac_a, mac_b = mac_inside(kiwi, ca), mac_inside(kiwi, cb)
    bridge_mac = Path("/sys/class/net", bridge, "address").read_text().strip()
    assert mac_a != mac_b

    learn_neighbour(bridge, ip_b)
    assert neighbour_mac(bridge, ip_b) == mac_b

    host = HostListener(gw)
    in_b = subprocess.Popen(
        kiwi.cmd + ["attach", cb, "--", "/spoof", "listen", str(PORT), "8"],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert in_b.stdout.readline().strip() == "listening"

        def send(*args: str) -> None:
            kiwi("attach", ca, "--", "/spoof", *args)

        for _ in range(3):  # datagrams may be lost; forged ones must never arrive
            send("udp", "eth0", mac_a, bridge_mac, ip_a, gw, str(PORT), "honest-to-host")
            send("udp", "eth0", mac_a, mac_b, ip_a, ip_b, str(PORT), "honest-to-b")
            send("udp", "eth0", mac_a, bridge_mac, ip_b, gw, str(PORT), "forged-ip-to-host")
            send("udp", "eth0", mac_b, bridge_mac, ip_a, gw, str(PORT), "forged-mac-to-host")
            send("udp", "eth0", mac_a, mac_b, gw, ip_b, str(PORT), "forged-host-to-b")
            send("udp", "eth0", mac_b, mac_b, ip_b, ip_b, str(PORT), "forged-b-to-b")
            # "B's address is at A's MAC", to the host and to everyone; past the 1 s locktime.
            send("arp", "eth0", mac_a, ip_b, bridge_mac, gw)
            send("arp", "eth0", mac_a, ip_b, "ff:ff:ff:ff:ff:ff", gw)
            time.sleep(0.6)
        at_host = host.received(2)
        out_b, _ = in_b.communicate(timeout=60)
    finally:
        host.close()
        if in_b.poll() is None:
            in_b.kill()
            in_b.wait()
    at_b = [tuple(line.split(" ", 1)) for line in out_b.splitlines() if line.strip()]

    assert (ip_a, "honest-to-host") in at_host, at_host
    assert (ip_a, "honest-to-b") in at_b, at_b
    assert not [text for _, text in at_host + at_b if text.startswith("forged")], (at_host, at_b)
    assert neighbour_mac(bridge, ip_b) == mac_b
    # Normal traffic still flows both ways.
    assert kiwi("attach", ca, "--", "ping", "-c", "1", "-W", "2", ip_b, check=False).returncode == 0
    assert kiwi("attach", ca, "--", "ping", "-c", "1", "-W", "2", gw, check=False).returncode == 0


def test_changing_its_own_mac_or_address_cuts_a_container_off(kiwi, busybox, spoof_binary):
    """Root inside may not rename itself on the wire: a new MAC or IP gets nothing through."""
    gw = gateway(kiwi)
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true", timeout=300)
    ip = kiwi.out("ip", cid)
    assert kiwi("attach", cid, "--", "ping", "-c", "1", "-W", "2", gw, check=False).returncode == 0
    other = str(ipaddress.ip_address(ip) + 100)
    # CAP_NET_ADMIN is dropped, so `ip addr add` fails already; a raw socket is what remains.
    install(kiwi, cid, spoof_binary)
    host = HostListener(gw)
    try:
        bridge_mac = Path("/sys/class/net", kiwi.env["KIWI_BRIDGE"], "address").read_text().strip()
        mac = mac_inside(kiwi, cid)
        for _ in range(3):
            kiwi("attach", cid, "--", "/spoof", "udp", "eth0", mac, bridge_mac, ip, gw, str(PORT), "honest")
            kiwi(
                "attach",
                cid,
                "--",
                "/spoof",
                "udp",
                "eth0",
                mac,
                bridge_mac,
                other,
                gw,
                str(PORT),
                "forged-free-ip",
            )
            kiwi(
                "attach",
                cid,
                "--",
                "/spoof",
                "udp",
                "eth0",
                "02:00:00:00:00:01",
                bridge_mac,
                ip,
                gw,
                str(PORT),
                "forged-free-mac",
            )
        got = host.received(2)
    finally:
        host.close()
    assert (ip, "honest") in got, got
    assert not [text for _, text in got if text.startswith("forged")], got
