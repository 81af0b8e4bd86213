"""Bridge, veth, NAT on real kernel objects (run as root).

Every test uses its own bridge (kwt<random>) and subnet (10.213.<random>.0/24);
"containers" are `unshare --net sleep` processes; "the outside world" is a
namespace on TEST-NET 198.51.100.0/24 reached through a test-made veth.
Traffic only goes to 127.0.0.1 and addresses inside those namespaces.
"""

import errno
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kiwi import network
from kiwi.errors import KiwiError

OUTSIDE_NET = "198.51.100.0/24"
OUTSIDE_HOST_IP = "198.51.100.1"
OUTSIDE_SERVER_IP = "198.51.100.2"

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    conn, peer = s.accept()
    conn.sendall(f"{sys.argv[3]} {peer[0]}\n".encode())
    conn.close()
"""

CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
    print(c.makefile().readline().strip())
"""


# -- host state that tests change --------------------------------------------------------


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {line.removeprefix("table ").strip() for line in out.splitlines() if line.strip()}


def nft_table_has_rules(table: str) -> bool:
    out = subprocess.run(
        ["nft", "-j", "list", "table", *table.split()], capture_output=True, text=True
    ).stdout
    return not out or any("rule" in item for item in json.loads(out)["nftables"])


@pytest.fixture(scope="module", autouse=True)
def restore_host_settings():
    """ip_forward and the iptables-nft tables our tests bring into being."""
    with open(network.IP_FORWARD) as f:
        forward_before = f.read()
    tables_before = nft_tables()
    yield
    for table in nft_tables() - tables_before:
        # Only iptables-nft's empty shells (e.g. "ip filter" made by `iptables -P`).
        if table in ("ip filter", "ip nat") and not nft_table_has_rules(table):
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
    with open(network.IP_FORWARD, "w") as f:
        f.write(forward_before)


# -- per-test bridge, subnet, namespaces, processes -------------------------------------------


def used_routes() -> list:
    with IPRoute() as ipr:
        return [
            ipaddress.ip_network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False)
            for r in ipr.get_routes(family=socket.AF_INET)
            if r["dst_len"]
        ]


def free_test_subnet() -> str:
    taken = used_routes()
    while True:
        candidate = ipaddress.ip_network(f"10.213.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(r) for r in taken):
            return str(candidate)


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # a dying namespace took the pair with it
                raise


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


class Lab:
    """What one test made; `close` removes all of it."""

    def __init__(self, monkeypatch):
        self.bridge = "kwt" + secrets.token_hex(3)
        self.subnet = free_test_subnet()
        self.gateway = str(ipaddress.ip_network(self.subnet).network_address + 1)
        self.processes: list[subprocess.Popen] = []
        self.links: list[str] = []
        self.cids: list[str] = []
        self.folder = secrets.token_hex(6)  # the data folder these "containers" belong to
        monkeypatch.setenv("KIWI_BRIDGE", self.bridge)
        monkeypatch.setenv("KIWI_SUBNET", self.subnet)

    def address(self, n: int) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address + n)

    def netns(self) -> int:
        """A sleeping process in a new network namespace; returns its pid."""
        proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.processes.append(proc)
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 30
        while os.readlink(f"/proc/{proc.pid}/ns/net") == own:
            assert time.monotonic() < deadline, "unshare did not create a namespace"
            time.sleep(0.01)
        return proc.pid

    def container(self, n: int) -> tuple[str, str, int]:
        """(cid, ipv4, pid) of a namespace attached to the bridge."""
        cid = secrets.token_hex(6)
        self.cids.append(cid)
        pid = self.netns()
        ipv4 = self.address(n)
        network.attach_container(cid, ipv4, pid, self.folder)
        return cid, ipv4, pid

    def serve(self, pid: int | None, ip: str, port: int, name: str) -> None:
        """A TCP server replying '<name> <peer ip>'; inside the netns of `pid` if given."""
        argv = [sys.executable, "-c", SERVER, ip, str(port), name]
        if pid is not None:
            argv = ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.processes.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def outside_world(self) -> int:
        """A namespace on 198.51.100.0/24 that the host routes to through a veth."""
        pid = self.netns()
        host_side = "kwo" + secrets.token_hex(4)
        self.links.append(host_side)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_side, kind="veth", peer={"ifname": "eth0", "net_ns_pid": pid})
            index = ipr.link_lookup(ifname=host_side)[0]
            ipr.addr("add", index=index, address=OUTSIDE_HOST_IP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=OUTSIDE_SERVER_IP, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return pid

    def close(self) -> None:
        """Remove everything, continuing past failures; the first one is re-raised."""
        steps = [lambda proc=proc: stop(proc) for proc in reversed(self.processes)]
        steps += [lambda cid=cid: delete_link(network.veth_name(cid, self.folder)) for cid in self.cids]
        steps += [lambda name=name: delete_link(name) for name in self.links]
        steps += [network.remove_nat, lambda: delete_link(self.bridge)]
        failures = []
        for step in steps:
            try:
                step()
            except Exception as e:
                failures.append(e)
        if failures:
            raise failures[0]


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


@pytest.fixture
def lab(monkeypatch):
    made = Lab(monkeypatch)
    try:
        yield made
    finally:
        made.close()
    assert not link_exists(made.bridge)
    assert f"inet kiwi-{made.bridge}" not in nft_tables()
    assert f"bridge kiwi-{made.bridge}" not in nft_tables()


@pytest.fixture
def forward_drop():
    """iptables FORWARD policy DROP, as Docker sets it; restored afterwards."""
    before = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True).stdout
    policy = "DROP" if "-P FORWARD DROP" in before else "ACCEPT"
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)


def run_client_in(pid: int, ip: str, port: int, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", CLIENT, ip, str(port), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 15,
    )


def client_in(pid: int, ip: str, port: int) -> str:
    result = run_client_in(pid, ip, port, timeout=5)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def cannot_connect_from(pid: int, ip: str, port: int) -> bool:
    return run_client_in(pid, ip, port, timeout=1.5).returncode != 0


def client_on_host(ip: str, port: int) -> str:
    with socket.create_connection((ip, port), timeout=5) as conn:
        return conn.makefile().readline().strip()


def links_in(pid: int) -> dict:
    with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as ns:
        return {link.get("IFLA_IFNAME"): link for link in ns.get_links()}


def ipv4_of(pid: int | None, ifname: str) -> list[str]:
    path = {} if pid is None else {"netns": f"/proc/{pid}/ns/net", "flags": 0}
    with IPRoute(**path) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return [
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=socket.AF_INET, index=index)
        ]


def iptables_rules(*args: str) -> str:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True).stdout


def nft_ruleset(bridge: str) -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", f"kiwi-{bridge}"], capture_output=True, text=True
    ).stdout


# -- bridge -------------------------------------------------------------------------------------


def test_bridge_gets_gateway_address_and_is_idempotent(lab):
    assert network.ensure_bridge() == lab.bridge
    network.ensure_bridge()
    assert ipv4_of(None, lab.bridge) == [f"{lab.gateway}/24"]
    with IPRoute() as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=lab.bridge)[0])[0]
    assert link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "bridge"
    assert link.get("IFLA_OPERSTATE") != "DOWN" or link["flags"] & 1  # IFF_UP


def test_bridge_refuses_subnet_overlapping_a_host_route(lab, monkeypatch):
    dummy = "kwd" + secrets.token_hex(4)
    lab.links.append(dummy)
    with IPRoute() as ipr:
        # a veth rather than a dummy: not every kernel has the dummy driver
        ipr.link("add", ifname=dummy, kind="veth", peer={"ifname": "kwe" + dummy[3:]})
        index = ipr.link_lookup(ifname=dummy)[0]
        ipr.addr("add", index=index, address=lab.address(1), prefixlen=24)
        ipr.link("set", index=index, state="up")
    half = str(ipaddress.ip_network(lab.subnet).network_address) + "/25"
    monkeypatch.setenv("KIWI_SUBNET", half)
    with pytest.raises(KiwiError) as caught:
        network.ensure_bridge()
    assert "overlaps" in caught.value.message and lab.subnet in caught.value.message
    assert not link_exists(lab.bridge)


def test_bad_bridge_name_is_a_user_error(monkeypatch):
    monkeypatch.setenv("KIWI_BRIDGE", "a-name-far-too-long")
    with pytest.raises(KiwiError):
        network.bridge_name()


# -- veth --------------------------------------------------------------------------------------


def test_attach_gives_eth0_address_and_default_route(lab):
    network.ensure_bridge()
    cid, ipv4, pid = lab.container(2)
    links = links_in(pid)
    assert set(links) == {"lo", "eth0"}
    assert links["eth0"]["flags"] & 1 and links["lo"]["flags"] & 1  # IFF_UP
    assert ipv4_of(pid, "eth0") == [f"{ipv4}/24"]
    with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as ns:
        defaults = [r for r in ns.get_routes(family=socket.AF_INET) if r["dst_len"] == 0]
    assert [r.get("RTA_GATEWAY") for r in defaults] == [lab.gateway]
    host = network.veth_name(cid, lab.folder)
    assert len(host) <= 15
    with IPRoute() as ipr:
        bridge_index = ipr.link_lookup(ifname=lab.bridge)[0]
        veth = ipr.get_links(ipr.link_lookup(ifname=host)[0])[0]
    assert veth.get("IFLA_MASTER") == bridge_index and veth["flags"] & 1
    assert network.list_kiwi_veths(lab.folder) == {host: cid}
    assert network.list_kiwi_veths(secrets.token_hex(6)) == {}  # another folder's view


def test_detach_removes_veth_and_is_idempotent(lab):
    network.ensure_bridge()
    cid, _, pid = lab.container(2)
    network.detach_container(cid, lab.folder)
    assert not link_exists(network.veth_name(cid, lab.folder))
    assert set(links_in(pid)) == {"lo"}
    network.detach_container(cid, lab.folder)
    assert network.list_kiwi_veths(lab.folder) == {}


def test_attach_refuses_address_outside_subnet(lab):
    network.ensure_bridge()
    pid = lab.netns()
    with pytest.raises(KiwiError):
        network.attach_container(secrets.token_hex(6), "10.99.0.2", pid, lab.folder)


def test_host_reaches_server_in_container(lab):
    network.setup_host()  # the forward-chain drop must not catch the host's own traffic
    _, ipv4, pid = lab.container(2)
    lab.serve(pid, "0.0.0.0", 7001, "inside")
    assert client_on_host(ipv4, 7001) == f"inside {lab.gateway}"


def test_two_containers_reach_each_other(lab):
    network.setup_host()  # with br_netfilter, bridged traffic meets the forward hook
    _, ip_a, pid_a = lab.container(2)
    _, ip_b, pid_b = lab.container(3)
    lab.serve(pid_a, "0.0.0.0", 7002, "a")
    lab.serve(pid_b, "0.0.0.0", 7002, "b")
    assert client_in(pid_b, ip_a, 7002) == f"a {ip_b}"
    assert client_in(pid_a, ip_b, 7002) == f"b {ip_a}"


def test_port_6000_on_host_and_in_two_containers_at_once(lab):
    network.setup_host()
    _, ip_a, pid_a = lab.container(2)
    _, ip_b, pid_b = lab.container(3)
    lab.serve(None, "127.0.0.1", 6000, "host")
    lab.serve(pid_a, "0.0.0.0", 6000, "a")
    lab.serve(pid_b, "0.0.0.0", 6000, "b")
    assert client_on_host("127.0.0.1", 6000).startswith("host ")
    assert client_on_host(ip_a, 6000).startswith("a ")
    assert client_on_host(ip_b, 6000).startswith("b ")


# -- NAT -------------------------------------------------------------------------------------------


def check_masquerade(lab, port: int) -> int:
    """The outside has no route to the subnet: only a masqueraded connection works."""
    outside = lab.outside_world()
    lab.serve(outside, OUTSIDE_SERVER_IP, port, "outside")
    _, _, pid = lab.container(2)
    assert client_in(pid, OUTSIDE_SERVER_IP, port) == f"outside {OUTSIDE_HOST_IP}"
    return pid


def test_nat_with_nft_masquerades_to_the_outside(lab):
    assert network.setup_host() is None
    assert f"inet kiwi-{lab.bridge}" in nft_tables()
    assert "masquerade" in nft_ruleset(lab.bridge)
    check_masquerade(lab, 7003)


def test_nat_with_forward_policy_drop(lab, forward_drop):
    assert network.setup_host() is None
    chain = f"KIWI-{lab.bridge}"
    assert f"-j {chain}" in iptables_rules("-S", "FORWARD")
    pid = check_masquerade(lab, 7004)
    # Without Kiwi's accept the DROP policy wins despite the nft table's accept.
    subprocess.run(["iptables", "-w", "-D", "FORWARD", "-j", chain], check=True)
    assert cannot_connect_from(pid, OUTSIDE_SERVER_IP, 7004)
    network.ensure_nat()
    assert client_in(pid, OUTSIDE_SERVER_IP, 7004) == f"outside {OUTSIDE_HOST_IP}"
    network.ensure_nat()
    assert iptables_rules("-S", "FORWARD").count(f"-j {chain}") == 1
    network.remove_nat()
    assert chain not in iptables_rules("-S")


def test_nat_with_iptables_when_nft_is_missing(lab, monkeypatch):
    monkeypatch.setattr(network, "find_nft", lambda: None)
    chain = f"KIWI-{lab.bridge}"
    for _ in range(3):
        assert "anti-spoofing" in network.setup_host()
    assert f"inet kiwi-{lab.bridge}" not in nft_tables()
    assert iptables_rules("-t", "nat", "-S", "POSTROUTING").count(f"-j {chain}") == 1
    assert iptables_rules("-S", "FORWARD").count(f"-j {chain}") == 1
    assert iptables_rules("-t", "nat", "-S", chain).count("MASQUERADE") == 1
    check_masquerade(lab, 7005)
    network.remove_nat()
    assert chain not in iptables_rules("-S") + iptables_rules("-t", "nat", "-S")


def test_without_nft_and_iptables_a_warning_is_returned(lab, monkeypatch):
    monkeypatch.setattr(network, "find_nft", lambda: None)
    monkeypatch.setattr(network, "find_iptables", lambda: None)
    monkeypatch.setattr(network, "iptables_variants", list)
    warning = network.setup_host()
    assert warning and "no outbound" in warning
    assert f"inet kiwi-{lab.bridge}" not in nft_tables()


def test_fifty_attach_detach_cycles_leave_nothing_behind(lab):
    network.setup_host()
    ruleset = nft_ruleset(lab.bridge)
    pid = lab.netns()
    cid = secrets.token_hex(6)
    lab.cids.append(cid)
    for _ in range(50):
        network.ensure_bridge()
        assert network.ensure_nat() is None
        network.attach_container(cid, lab.address(2), pid, lab.folder)
        network.detach_container(cid, lab.folder)
    assert nft_ruleset(lab.bridge) == ruleset
    assert ruleset.count("masquerade") == 1
    assert network.list_kiwi_veths(lab.folder) == {}
    assert network.own_port_chains(lab.bridge, lab.folder) == {}
    assert not link_exists(network.veth_name(cid, lab.folder))
    assert set(links_in(pid)) == {"lo"}
    assert ipv4_of(None, lab.bridge) == [f"{lab.gateway}/24"]


def test_port_filter_comes_with_the_nat_and_attach_detach_start_no_process(lab, monkeypatch):
    """A start installs the container's anti-spoofing chain in the NAT's nft run, before
    its veth exists; attaching and detaching then go over netlink only."""
    network.ensure_bridge()
    pid = lab.netns()
    cid = secrets.token_hex(6)
    lab.cids.append(cid)
    veth = network.veth_name(cid, lab.folder)
    assert network.ensure_nat(network.container_port_filter(cid, lab.address(2), lab.folder)) is None
    assert network.own_port_chains(lab.bridge, lab.folder) == {veth: cid}
    started = []
    real_run = network.run
    monkeypatch.setattr(
        network, "run", lambda argv, stdin=None: started.append(argv) or real_run(argv, stdin)
    )
    network.attach_container(cid, lab.address(2), pid, lab.folder, filtered=True)
    assert ipv4_of(pid, "eth0") == [f"{lab.address(2)}/24"]
    network.detach_container(cid, lab.folder)
    assert started == []
    assert network.own_port_chains(lab.bridge, lab.folder) == {}
    assert not link_exists(veth)


# What `nft -f` made of these lines before Kiwi sent the same over netlink.
NFT_TEXT = """\
table inet kiwi-{bridge}
delete table inet kiwi-{bridge}
table inet kiwi-{bridge} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{bridge}" accept
        oifname "{bridge}" ct state established,related accept
        oifname "{bridge}" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} masquerade
    }}
}}
add table bridge kiwi-{bridge}
add map bridge kiwi-{bridge} ports {{ type ifname : verdict; }}
add chain bridge kiwi-{bridge} prerouting {{ type filter hook prerouting priority filter; policy accept; }}
flush chain bridge kiwi-{bridge} prerouting
add rule bridge kiwi-{bridge} prerouting iifname vmap @ports
"""
NFT_PORT_TEXT = """\
add chain bridge kiwi-{bridge} port-{host} {{ comment "kiwi {owner}"; }}
flush chain bridge kiwi-{bridge} port-{host}
add rule bridge kiwi-{bridge} port-{host} ether saddr != {mac} drop
add rule bridge kiwi-{bridge} port-{host} ether type arp arp htype != 1 drop
add rule bridge kiwi-{bridge} port-{host} ether type arp arp hlen != 6 drop
add rule bridge kiwi-{bridge} port-{host} ether type arp arp plen != 4 drop
add rule bridge kiwi-{bridge} port-{host} ether type arp arp saddr ether != {mac} drop
add rule bridge kiwi-{bridge} port-{host} ether type arp arp saddr ip != {ipv4} drop
add rule bridge kiwi-{bridge} port-{host} ether type ip ip saddr != {ipv4} drop
add rule bridge kiwi-{bridge} port-{host} ether type != {{ ip, arp }} drop
add rule bridge kiwi-{bridge} port-{host} accept
add element bridge kiwi-{bridge} ports {{ "{host}" : jump port-{host} }}
"""

NETLINK_RULESET = r"""
import ipaddress, sys
from kiwi import netlink, network
bridge, subnet, ports = sys.argv[1], ipaddress.ip_network(sys.argv[2]), sys.argv[3:]
for _ in range(2):  # a second start changes nothing
    messages = network.nft_ruleset(bridge, subnet) + network.spoof_filter_ruleset(bridge)
    for port in ports:
        host, mac, ipv4, owner = port.split(",")
        messages += network.port_ruleset(bridge, host, mac, ipv4, owner)
    netlink.nft_batch(messages)
"""


@pytest.mark.parametrize("subnet", ["10.213.7.0/24", "10.208.0.0/13", "10.0.0.0/8"])
def test_netlink_ruleset_is_what_nft_makes_of_the_text(subnet, tmp_path):
    """ensure_nat sends the rules over netlink instead of running `nft -f`: in private
    network namespaces, the same text through nft and Kiwi's messages list alike,
    down to the bytecode (`nft --debug=netlink`)."""
    bridge = "kwt" + secrets.token_hex(4)
    # One port: a map's elements list in hash order, which differs between two maps.
    ports = [("kw" + secrets.token_hex(6), "02:6b:0a:d5:07:02", "10.213.7.2", "f0/c0")]
    text = NFT_TEXT.format(bridge=bridge, subnet=subnet) + "".join(
        NFT_PORT_TEXT.format(bridge=bridge, host=h, mac=m, ipv4=a, owner=o) for h, m, a, o in ports
    )
    (tmp_path / "ruleset.nft").write_text(text)
    listing = "nft list ruleset; nft --debug=netlink list ruleset"
    by_nft = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            f'nft -f "$1" && nft -f "$1" && {listing}',
            "sh",
            tmp_path / "ruleset.nft",
        ],
        capture_output=True,
        text=True,
    )
    assert by_nft.returncode == 0, by_nft.stderr
    code = f"{NETLINK_RULESET}\nimport subprocess\nsubprocess.run({listing!r}, shell=True, check=True)\n"
    by_kiwi = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code, bridge, subnet, *(",".join(p) for p in ports)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(network.__file__).parent.parent)},
    )
    assert by_kiwi.returncode == 0, by_kiwi.stderr
    assert "masquerade" in by_kiwi.stdout and "ether type != { ip, arp } drop" in by_kiwi.stdout
    assert by_kiwi.stdout == by_nft.stdout


def test_remove_nat_is_idempotent(lab):
    network.setup_host()
    network.remove_nat()
    network.remove_nat()
    assert f"inet kiwi-{lab.bridge}" not in nft_tables()


@pytest.fixture(autouse=True)
def require_tools():
    for tool in ("nft", "iptables", "unshare", "nsenter"):
        assert shutil.which(tool), f"{tool} is needed for the network tests"
