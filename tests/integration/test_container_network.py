"""Container-level network proof through the frozen binary (SPEC section 6).

Every test runs real containers from the busybox image with its own bridge and
subnet (the `kiwi` fixture). Traffic only goes to 127.0.0.1, to the test's
bridge address and to addresses inside namespaces the test made: containers it
started and, for NAT, an "outside" namespace on TEST-NET 198.51.100.0/24 that
the host reaches through a test-made veth. Host settings the tests change
(iptables FORWARD policy, ip_forward, iptables-nft's empty tables) are put back.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import ipaddress
import json
import os
import re
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from conftest import remove_network

OUTSIDE_HOST_IP = "198.51.100.1"
OUTSIDE_SERVER_IP = "198.51.100.2"
OUTSIDE_PORT = 7100
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
# Serialises, between runs of this file, the host-wide things two tests must not
# do at once: the FORWARD policy and the 198.51.100.1 host address.
HOST_LOCK = "/run/lock/kiwi-test-container-network.lock"

OUTSIDE_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    conn, peer = s.accept()
    print("peer", peer[0], flush=True)
    conn.sendall(f"outside {peer[0]}\n".encode())
    conn.close()
"""


# -- polling and small clients -------------------------------------------------------------


def wait_for(probe, what: str, timeout: float = 60, interval: float = 0.2):
    """Call `probe` until it returns something true; exceptions count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def read_line(ip: str, port: int, timeout: float = 10) -> str:
    with socket.create_connection((ip, port), timeout=timeout) as conn:
        return conn.makefile().readline().strip()


def answer_from(ip: str, port: int, what: str) -> str:
    """First non-empty line a server at ip:port sends, polling until it listens."""
    return wait_for(lambda: read_line(ip, port), f"an answer from {ip}:{port} ({what})")


def serve_in(kiwi, cid: str, command: str) -> None:
    """Run a server in the background inside the container; the attach returns at once."""
    kiwi.sh(cid, f"{command} </dev/null >/dev/null 2>&1 &")


def nc_in(kiwi, cid: str, ip: str, port: int, tries: int = 50) -> str:
    """busybox nc from inside the container; retried there until it reads something."""
    script = (
        f"i=0; while [ $i -lt {tries} ]; do "
        f"out=$(nc -w 5 {ip} {port} </dev/null 2>/dev/null); "
        f'if [ -n "$out" ]; then echo "$out"; exit 0; fi; '
        f"i=$((i+1)); sleep 0.2; done; exit 1"
    )
    result = kiwi.sh(cid, script, check=False, timeout=300)
    assert result.returncode == 0, (
        f"{cid} could not read from {ip}:{port}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout.strip()


def wget_in(kiwi, cid: str, url: str, tries: int = 50) -> str:
    script = (
        f"i=0; while [ $i -lt {tries} ]; do "
        # busybox 1.35 wget -T segfaults (also on the host), hence timeout(1)
        f'if out=$(timeout 10 wget -q -O - {url} 2>/dev/null); then echo "$out"; exit 0; fi; '
        f"i=$((i+1)); sleep 0.2; done; exit 1"
    )
    result = kiwi.sh(cid, script, check=False, timeout=300)
    assert result.returncode == 0, (
        f"{cid} could not fetch {url}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout.strip()


def start(kiwi, cid: str) -> None:
    kiwi("attach", cid, "--", "true", timeout=300)


def gateway(kiwi) -> str:
    return str(ipaddress.ip_network(kiwi.env["KIWI_SUBNET"]).network_address + 1)


def random_port() -> int:
    return 20000 + secrets.randbelow(20000)


def free_port() -> int:
    """A port nothing on the host's 127.0.0.1 listens on right now."""
    while True:
        candidate = random_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
                return candidate
            except OSError:
                continue


class LineServer(socketserver.ThreadingTCPServer):
    """A host TCP server that answers '<name> <peer address>' and remembers the peers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ip: str, port: int, name: str):
        self.name = name
        self.peers: list[str] = []
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                server.peers.append(self.client_address[0])
                self.request.sendall(f"{server.name} {self.client_address[0]}\n".encode())

        super().__init__((ip, port), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def host_server(ip: str, name: str, preferred: int = 0):
    """A LineServer on `preferred` if it is free, else on another free port."""
    server = None
    for port in [preferred] + [random_port() for _ in range(50)]:
        try:
            server = LineServer(ip, port, name)
            break
        except OSError:
            continue
    assert server is not None, f"no free port on {ip}"
    try:
        yield server
    finally:
        server.close()


# -- host state --------------------------------------------------------------------------------


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {line.removeprefix("table ").strip() for line in out.splitlines() if line.strip()}


def nft_table_json(family: str, name: str) -> list[dict]:
    out = subprocess.run(["nft", "-j", "list", "table", family, name], capture_output=True, text=True).stdout
    return json.loads(out)["nftables"] if out.strip() else []


def nft_rule_count(bridge: str) -> int:
    return sum(1 for item in nft_table_json("inet", f"kiwi-{bridge}") if "rule" in item)


def is_empty_accepting_shell(table: str) -> bool:
    """An iptables-nft table with no rules and only accepting base chains."""
    items = nft_table_json(*table.split())
    if not items or any("rule" in item for item in items):
        return False
    return all(item["chain"].get("policy", "accept") == "accept" for item in items if "chain" in item)


def forward_policy() -> str:
    out = subprocess.run(
        ["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout
    return "DROP" if "-P FORWARD DROP" in out else "ACCEPT"


def firewall_snapshot() -> tuple[list[str], set[str]]:
    """iptables rules and nft tables minus every Kiwi instance's own (other developers'
    too), and minus iptables-nft tables that hold nothing but accepting built-in chains:
    such an empty shell filters nothing, and concurrent tests make and delete them.
    (While the policy is DROP, other Kiwi instances starting containers rightly add
    their KIWI-<bridge> jump, which stays until their own cleanup.)"""
    save = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    rules: list[str] = []
    section: list[str] = []
    for line in save.splitlines():
        line = re.sub(r"\s*\[\d+:\d+\]", "", line).strip()
        if not line or line.startswith("#") or "KIWI-" in line:
            continue
        section.append(line)
        if line == "COMMIT":
            body = section[1:-1]
            if not all(re.fullmatch(r":[A-Z]+ ACCEPT", item) for item in body):
                rules += section
            section = []
    # iptables-nft's own tables are compared through iptables-save above.
    tables = {
        t
        for t in nft_tables()
        if not t.startswith(("inet kiwi-", "bridge kiwi-")) and t not in ("ip filter", "ip nat")
    }
    return rules, tables


@pytest.fixture(scope="module", autouse=True)
def restore_host_settings():
    """ip_forward (Kiwi turns it on) and iptables-nft shells that `iptables -P` brings about."""
    with open(IP_FORWARD) as f:
        forward_before = f.read()
    tables_before = nft_tables()
    yield
    for table in nft_tables() - tables_before:
        if table in ("ip filter", "ip nat") and is_empty_accepting_shell(table):
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
    with open(IP_FORWARD, "w") as f:
        f.write(forward_before)


@pytest.fixture
def host_lock():
    fd = os.open(HOST_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- links --------------------------------------------------------------------------------------


def veth_of(kiwi, cid: str) -> str:
    from kiwi import network

    return network.veth_name(cid, (kiwi.root / "folder-id").read_text().strip())


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def ipv4_addresses(ifname: str) -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        return sorted(
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=socket.AF_INET, index=found[0])
        )


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=found[0])


# -- the outside world ----------------------------------------------------------------------------


class Outside:
    """A namespace on 198.51.100.0/24 that the host routes to through a veth, with a
    TCP server that answers 'outside <peer>' and prints every peer it sees."""

    def __init__(self):
        self.processes: list[subprocess.Popen] = []
        self.host_side = "kto" + secrets.token_hex(4)
        self.server: subprocess.Popen | None = None

    def open(self) -> None:
        sleeper = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.processes.append(sleeper)
        own = os.readlink("/proc/self/ns/net")
        wait_for(
            lambda: os.readlink(f"/proc/{sleeper.pid}/ns/net") != own,
            "unshare to make a namespace",
            timeout=20,
            interval=0.01,
        )
        self.pid = sleeper.pid
        with IPRoute() as ipr:
            ipr.link(
                "add", ifname=self.host_side, kind="veth", peer={"ifname": "eth0", "net_ns_pid": self.pid}
            )
            index = ipr.link_lookup(ifname=self.host_side)[0]
            ipr.addr("add", index=index, address=OUTSIDE_HOST_IP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        with IPRoute(netns=f"/proc/{self.pid}/ns/net", flags=0) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=OUTSIDE_SERVER_IP, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            # No route back to any container subnet: only masqueraded traffic can be answered.
            assert all(
                r["dst_len"] == 0 or r.get("RTA_DST", "").startswith("198.51.100.")
                for r in ns.get_routes(family=socket.AF_INET)
                if r.get("RTA_TABLE") == 254
            )
        self.server = subprocess.Popen(
            [
                "nsenter",
                f"--net=/proc/{self.pid}/ns/net",
                sys.executable,
                "-c",
                OUTSIDE_SERVER,
                OUTSIDE_SERVER_IP,
                str(OUTSIDE_PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(self.server)
        assert self.server.stdout.readline().strip() == "ready"

    def next_peer(self) -> str:
        line = self.server.stdout.readline().strip()
        assert line.startswith("peer "), line
        return line.split()[1]

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        delete_link(self.host_side)  # usually gone with the namespace already


@pytest.fixture
def outside(host_lock):
    world = Outside()
    try:
        world.open()
        yield world
    finally:
        world.close()
    assert not link_exists(world.host_side)


# -- tests ---------------------------------------------------------------------------------------


def test_host_reaches_tcp_server_in_container(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "web")
    start(kiwi, cid)
    ip = kiwi.out("ip", "web")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(kiwi.env["KIWI_SUBNET"])
    assert ip != gateway(kiwi)
    serve_in(kiwi, cid, "nc -ll -p 7000 -e echo hi")
    assert answer_from(ip, 7000, "nc in the container") == "hi"
    # httpd too: a real multi-connection server, fetched over HTTP from the host.
    serve_in(
        kiwi, cid, f"mkdir -p /tmp/www && echo {cid} > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www"
    )

    def fetch():
        conn = http.client.HTTPConnection(ip, 8080, timeout=10)
        try:
            conn.request("GET", "/index.html")
            response = conn.getresponse()
            return response.status == 200 and response.read().decode().strip()
        finally:
            conn.close()

    assert wait_for(fetch, "httpd in the container") == cid


def test_two_containers_reach_each_other(kiwi, busybox):
    a = kiwi.create(busybox, "--name", "alpha")
    b = kiwi.create(busybox, "--name", "beta")
    start(kiwi, a)
    start(kiwi, b)
    ip_a, ip_b = kiwi.out("ip", a), kiwi.out("ip", b)
    assert ip_a != ip_b
    serve_in(
        kiwi, a, f"mkdir -p /tmp/www && echo from-{a} > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www"
    )
    serve_in(kiwi, b, f"nc -ll -p 7000 -e echo from-{b}")
    assert wget_in(kiwi, b, f"http://{ip_a}:8080/index.html") == f"from-{a}"
    assert nc_in(kiwi, a, ip_b, 7000) == f"from-{b}"


def test_same_port_on_host_and_in_two_containers(kiwi, busybox):
    a = kiwi.create(busybox)
    b = kiwi.create(busybox)
    start(kiwi, a)
    start(kiwi, b)
    ip_a, ip_b = kiwi.out("ip", a), kiwi.out("ip", b)
    # 6000 unless the host already uses it; the same number everywhere.
    with host_server("127.0.0.1", "host", preferred=6000) as server:
        port = server.server_address[1]
        serve_in(kiwi, a, f"nc -ll -p {port} -e echo {a}")
        serve_in(kiwi, b, f"nc -ll -p {port} -e echo {b}")
        assert answer_from(ip_a, port, "container a") == a
        assert answer_from(ip_b, port, "container b") == b
        assert read_line("127.0.0.1", port) == "host 127.0.0.1"
        # Inside, 127.0.0.1:port is the container's own server, not the host's.
        assert nc_in(kiwi, a, "127.0.0.1", port) == a
        assert nc_in(kiwi, b, "127.0.0.1", port) == b
        assert nc_in(kiwi, a, ip_b, port) == b
        assert read_line("127.0.0.1", port) == "host 127.0.0.1"


def check_masquerade(kiwi, busybox, outside) -> str:
    cid = kiwi.create(busybox)
    start(kiwi, cid)
    assert f"inet kiwi-{kiwi.env['KIWI_BRIDGE']}" in nft_tables()
    # Few tries: while a test holds the FORWARD policy at DROP, every try may cost 5 s.
    answer = nc_in(kiwi, cid, OUTSIDE_SERVER_IP, OUTSIDE_PORT, tries=15)
    assert answer == f"outside {OUTSIDE_HOST_IP}"
    assert outside.next_peer() == OUTSIDE_HOST_IP  # the server's own record
    return cid


def test_nat_masquerades_to_the_outside(kiwi, busybox, outside):
    check_masquerade(kiwi, busybox, outside)


def test_nat_with_forward_policy_drop(kiwi, busybox, outside):
    bridge = kiwi.env["KIWI_BRIDGE"]
    before = firewall_snapshot()
    policy = forward_policy()
    tables_before = nft_tables()
    subprocess.run(["iptables", "-w", "-P", "FORWARD", "DROP"], check=True)
    try:
        cid = check_masquerade(kiwi, busybox, outside)
        assert (
            f"-j KIWI-{bridge}"
            in subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
        )
        # Container to container still works too (bridged traffic may meet FORWARD).
        other = kiwi.create(busybox)
        start(kiwi, other)
        serve_in(kiwi, other, f"nc -ll -p 7000 -e echo {other}")
        assert nc_in(kiwi, cid, kiwi.out("ip", other), 7000) == other
        kiwi("stop", cid, "--time", "5")
        kiwi("stop", other, "--time", "5")
    finally:
        remove_network(kiwi.env)
        subprocess.run(["iptables", "-w", "-P", "FORWARD", policy], check=True)
        for table in nft_tables() - tables_before:
            if table in ("ip filter", "ip nat") and is_empty_accepting_shell(table):
                subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
    assert forward_policy() == policy
    assert firewall_snapshot() == before
    assert f"KIWI-{bridge}" not in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert f"inet kiwi-{bridge}" not in nft_tables()


def test_stop_and_delete_leave_no_veth(kiwi, busybox):
    bridge = kiwi.env["KIWI_BRIDGE"]
    cid = kiwi.create(busybox)
    start(kiwi, cid)
    veth = veth_of(kiwi, cid)
    assert link_exists(veth)
    assert bridge_ports(bridge) == [veth]
    assert "eth0" in kiwi.out("attach", cid, "--", "cat", "/proc/net/dev")
    kiwi("stop", cid)
    assert not link_exists(veth)
    assert bridge_ports(bridge) == []
    start(kiwi, cid)
    assert bridge_ports(bridge) == [veth]
    kiwi("stop", cid)
    kiwi("delete", cid, "--yes")
    assert not link_exists(veth)
    assert bridge_ports(bridge) == []
    assert kiwi.json("list", "containers") == []
    assert "veth" not in kiwi.out("cleanup")


def test_each_end_of_the_veth_is_made_with_one_queue(kiwi, busybox):
    """Both ends are created with one tx and one rx queue (what veth settles on anyway),
    not one per CPU cut down afterwards: each cut waits an RCU grace period in the start."""
    cid = kiwi.create(busybox)
    start(kiwi, cid)
    with IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=veth_of(kiwi, cid))
    assert (link.get_attr("IFLA_NUM_TX_QUEUES"), link.get_attr("IFLA_NUM_RX_QUEUES")) == (1, 1)
    inside = kiwi.out("attach", cid, "--", "ls", "/sys/class/net/eth0/queues").split()
    assert sorted(inside) == ["rx-0", "tx-0"]
    kiwi("stop", cid)


@pytest.mark.slow
def test_fifty_start_stop_cycles_leak_nothing(kiwi, busybox):
    bridge = kiwi.env["KIWI_BRIDGE"]
    cid = kiwi.create(busybox)
    start(kiwi, cid)
    ip = kiwi.out("ip", cid)
    rules = nft_rule_count(bridge)
    assert rules > 0
    bridge_addresses = ipv4_addresses(bridge)
    assert bridge_addresses == [f"{gateway(kiwi)}/{ipaddress.ip_network(kiwi.env['KIWI_SUBNET']).prefixlen}"]
    kiwi("stop", cid)
    for _ in range(50):
        start(kiwi, cid)
        assert bridge_ports(bridge) == [veth_of(kiwi, cid)]
        kiwi("stop", cid)
        assert not link_exists(veth_of(kiwi, cid))
        # The last container on the bridge stopped: bridge and NAT went with it.
        assert not link_exists(bridge) and nft_rule_count(bridge) == 0
    assert kiwi.out("ip", cid) == ip
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert iptables.count(f"-j KIWI-{bridge}") <= 2  # at most one jump per hook
    # Still working after all that, with the same bridge and rules as the first time.
    start(kiwi, cid)
    assert nft_rule_count(bridge) == rules
    assert ipv4_addresses(bridge) == bridge_addresses
    with host_server(gateway(kiwi), "host") as server:
        assert nc_in(kiwi, cid, gateway(kiwi), server.server_address[1]) == f"host {ip}"


@pytest.mark.slow
def test_thirty_containers_started_in_parallel(kiwi, busybox):
    count = 30
    with ThreadPoolExecutor(max_workers=6) as pool:
        cids = list(
            pool.map(lambda _: kiwi.out("create", busybox, timeout=300).splitlines()[-1], range(count))
        )
    assert len(set(cids)) == count
    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(lambda cid: start(kiwi, cid), cids))
    rows = {row["id"]: row for row in kiwi.json("list", "containers")}
    assert all(rows[cid]["status"] == "running" for cid in cids)
    addresses = {cid: rows[cid]["ipv4"] for cid in cids}
    assert len(set(addresses.values())) == count
    subnet = ipaddress.ip_network(kiwi.env["KIWI_SUBNET"])
    assert all(ipaddress.ip_address(ip) in subnet for ip in addresses.values())
    assert len(bridge_ports(kiwi.env["KIWI_BRIDGE"])) == count
    gw = gateway(kiwi)

    with host_server(gw, "host") as server:
        port = server.server_address[1]

        def probe(cid: str) -> tuple[str, str]:
            shown = kiwi.out("attach", cid, "--", "ip", "-4", "-o", "addr", "show", "eth0", timeout=300)
            return shown, nc_in(kiwi, cid, gw, port)

        with ThreadPoolExecutor(max_workers=10) as pool:
            results = dict(zip(cids, pool.map(probe, cids)))
    for cid, (shown, answer) in results.items():
        assert f"inet {addresses[cid]}/{subnet.prefixlen}" in shown, shown
        assert answer == f"host {addresses[cid]}"
    assert sorted(set(server.peers)) == sorted(addresses.values())


def test_network_host_shares_the_host_stack(kiwi, busybox):
    bridge = kiwi.env["KIWI_BRIDGE"]
    # A separate-network container first, so the test bridge exists on the host.
    separate = kiwi.create(busybox)
    start(kiwi, separate)
    cid = kiwi.create(busybox, "--name", "hostnet")
    kiwi("set", cid, "--network", "host")
    rows = {row["id"]: row for row in kiwi.json("list", "containers")}
    assert rows[cid]["network"] == "host"
    shown = kiwi.out("attach", cid, "--", "ip", "-4", "addr", "show", bridge)
    assert f"inet {gateway(kiwi)}/" in shown
    assert bridge in kiwi.out("attach", cid, "--", "ls", "/sys/class/net")
    assert veth_of(kiwi, cid) not in os.listdir("/sys/class/net")
    refused = kiwi("ip", cid, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("kiwi: ") and "host" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    # A server it starts on 127.0.0.1 is the host's 127.0.0.1.
    port = free_port()
    serve_in(
        kiwi,
        cid,
        f"mkdir -p /tmp/www && echo {cid} > /tmp/www/index.html && httpd -f -p 127.0.0.1:{port} -h /tmp/www",
    )

    def fetch():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/index.html")
            return conn.getresponse().read().decode().strip()
        finally:
            conn.close()

    assert wait_for(fetch, "httpd of the host-network container on 127.0.0.1") == cid
    # Its resolv.conf is the host's, unchanged (a loopback stub works there).
    with open("/etc/resolv.conf") as f:
        assert kiwi.out("attach", cid, "--", "cat", "/etc/resolv.conf") == f.read().strip()
    hosts = kiwi.out("attach", cid, "--", "cat", "/etc/hosts")
    assert re.search(r"^\S+\s+hostnet$", hosts, re.M), hosts
    kiwi("stop", cid)

    def closed():
        with socket.socket() as s:
            s.settimeout(5)
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_for(closed, "the host-network container's server to go away with stop")


def test_resolv_conf_and_hosts_inside(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "dnsbox")
    start(kiwi, cid)
    ip = kiwi.out("ip", cid)
    resolv = kiwi.out("attach", cid, "--", "cat", "/etc/resolv.conf")
    servers = [
        line.split()[1]
        for line in resolv.splitlines()
        if line.split()[:1] == ["nameserver"] and len(line.split()) > 1
    ]
    assert servers, resolv
    for server in servers:
        address = ipaddress.ip_address(server)
        assert not address.is_loopback and not address.is_link_local, resolv
    assert any(ipaddress.ip_address(s).version == 4 for s in servers), resolv
    # The host's usable nameservers are passed on.
    with open("/etc/resolv.conf") as f:
        host_servers = [
            line.split()[1] for line in f if line.split()[:1] == ["nameserver"] and len(line.split()) > 1
        ]
    for server in host_servers:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(server)
            if not (address.is_loopback or address.is_link_local):
                assert server in servers, (server, resolv)
    assert kiwi("attach", cid, "--", "test", "-L", "/etc/resolv.conf", check=False).returncode != 0
    hosts = kiwi.out("attach", cid, "--", "cat", "/etc/hosts")
    assert re.search(rf"^{re.escape(ip)}\s+dnsbox$", hosts, re.M), hosts
    assert re.search(r"^127\.0\.0\.1\s+localhost", hosts, re.M), hosts
    assert kiwi.out("attach", cid, "--", "hostname") == "dnsbox"


def port_filter(bridge: str) -> tuple[set[str], set[str]]:
    """The anti-spoofing table's per-veth chains and its `ports` map's keys."""
    items = nft_table_json("bridge", f"kiwi-{bridge}")
    chains = {i["chain"]["name"] for i in items if "chain" in i and i["chain"]["name"].startswith("port-")}
    keys = {e[0] for i in items if "map" in i for e in i["map"].get("elem", [])}
    return chains, keys


def test_stop_removes_its_port_filter_and_the_last_stop_the_whole_firewall(kiwi, busybox):
    """A stop removes its veth's chain and map element only; the last stop on the bridge
    removes the bridge and both tables, the chain with its table (no transaction of its own)."""
    bridge = kiwi.env["KIWI_BRIDGE"]
    first, second = kiwi.create(busybox), kiwi.create(busybox)
    start(kiwi, first)
    start(kiwi, second)
    veths = {veth_of(kiwi, first), veth_of(kiwi, second)}
    assert port_filter(bridge) == ({f"port-{v}" for v in veths}, veths)
    kiwi("stop", first)
    kept = veth_of(kiwi, second)
    assert port_filter(bridge) == ({f"port-{kept}"}, {kept})
    assert bridge_ports(bridge) == [kept] and nft_rule_count(bridge) > 0
    assert kiwi.out("attach", second, "--", "true") == ""
    kiwi("stop", second)
    assert not link_exists(bridge)
    assert not {f"inet kiwi-{bridge}", f"bridge kiwi-{bridge}"} & nft_tables()
    assert "nothing to clean up" in kiwi.out("cleanup")


def test_last_stop_keeps_the_network_for_what_still_runs_in_its_grace_period(kiwi, busybox):
    """The last stop on a bridge removes it while the init exits only when nothing but
    the init runs in the container (issue 20): a process that answers SIGTERM over the
    network still reaches the host, and the bridge and NAT go after it."""
    bridge = kiwi.env["KIWI_BRIDGE"]
    cid = kiwi.create(busybox)
    start(kiwi, cid)
    ip = kiwi.out("ip", cid)
    with host_server(gateway(kiwi), "host") as server:
        # A second into the grace period: long after the init could have taken the bridge away.
        farewell = f"sleep 1; nc -w 5 {gateway(kiwi)} {server.server_address[1]} </dev/null"
        serve_in(kiwi, cid, f"sh -c \"trap '{farewell}; exit 0' TERM; while :; do sleep 0.1; done\"")
        wait_for(lambda: "sleep 0.1" in kiwi.out("attach", cid, "--", "ps"), "the farewell script")
        kiwi("stop", cid, "--time", "10")
        wait_for(lambda: server.peers, "the container's farewell")
        assert server.peers == [ip]
    assert not link_exists(bridge)
    assert not {f"inet kiwi-{bridge}", f"bridge kiwi-{bridge}"} & nft_tables()
