from kiwi import dns


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def servers_of(text):
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver ")]


STUB = """# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search lan example.org
"""


def test_stub_only_uses_resolved_upstream(tmp_path):
    host = write(tmp_path, "resolv.conf", STUB)
    upstream = write(
        tmp_path, "upstream.conf", "nameserver 192.0.2.53\nnameserver 198.51.100.53\nsearch lan\n"
    )
    text = dns.resolv_conf_text(host, upstream)
    assert servers_of(text) == ["192.0.2.53", "198.51.100.53"]
    assert "127.0.0.53" not in text


def test_stub_only_without_upstream_falls_back_to_public(tmp_path):
    host = write(tmp_path, "resolv.conf", STUB)
    text = dns.resolv_conf_text(host, str(tmp_path / "missing.conf"))
    assert servers_of(text) == ["1.1.1.1", "8.8.8.8", "9.9.9.9"]


def test_stub_with_loopback_only_upstream_falls_back(tmp_path):
    host = write(tmp_path, "resolv.conf", STUB)
    upstream = write(tmp_path, "upstream.conf", "nameserver 127.0.0.1\n")
    assert servers_of(dns.resolv_conf_text(host, upstream)) == dns.PUBLIC_RESOLVERS


def test_mixed_drops_loopback_keeps_order(tmp_path):
    host = write(
        tmp_path,
        "resolv.conf",
        "nameserver 127.0.0.1\nnameserver 192.0.2.1\nnameserver 127.1.2.3\nnameserver 203.0.113.7\n",
    )
    text = dns.resolv_conf_text(host, str(tmp_path / "missing.conf"))
    assert servers_of(text) == ["192.0.2.1", "203.0.113.7"]


def test_mixed_with_stub_adds_upstream_without_duplicates(tmp_path):
    host = write(tmp_path, "resolv.conf", "nameserver 127.0.0.53\nnameserver 192.0.2.1\n")
    upstream = write(tmp_path, "upstream.conf", "nameserver 192.0.2.1\nnameserver 192.0.2.2\n")
    assert servers_of(dns.resolv_conf_text(host, upstream)) == ["192.0.2.1", "192.0.2.2"]


def test_ipv6_loopback_dropped_global_kept(tmp_path):
    host = write(
        tmp_path,
        "resolv.conf",
        "nameserver ::1\nnameserver 2001:db8::53\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n",
    )
    text = dns.resolv_conf_text(host, str(tmp_path / "missing.conf"))
    assert servers_of(text) == ["2001:db8::53", "192.0.2.1"]


def test_ipv6_only_gets_ipv4_fallback_too(tmp_path):
    # Containers get only IPv4, so an IPv6-only list would leave them without DNS.
    host = write(tmp_path, "resolv.conf", "nameserver ::1\nnameserver 2001:db8::53\n")
    text = dns.resolv_conf_text(host, str(tmp_path / "missing.conf"))
    assert servers_of(text) == ["2001:db8::53", "1.1.1.1", "8.8.8.8", "9.9.9.9"]


def test_search_domain_options_kept_comments_and_junk_dropped(tmp_path):
    host = write(
        tmp_path,
        "resolv.conf",
        "# comment\n; other comment\ndomain corp.example\n"
        "search corp.example example.org\noptions ndots:2 timeout:1\n"
        "nameserver not-an-address\nsortlist 130.155.160.0\nnameserver 192.0.2.1\n",
    )
    text = dns.resolv_conf_text(host, str(tmp_path / "missing.conf"))
    lines = text.splitlines()
    assert "domain corp.example" in lines
    assert "search corp.example example.org" in lines
    assert "options ndots:2 timeout:1" in lines
    assert servers_of(text) == ["192.0.2.1"]
    assert "# comment" not in lines and "not-an-address" not in text
    assert text.endswith("\n")


def test_missing_host_file_gives_public_resolvers(tmp_path):
    text = dns.resolv_conf_text(str(tmp_path / "none"), str(tmp_path / "none2"))
    assert servers_of(text) == ["1.1.1.1", "8.8.8.8", "9.9.9.9"]


def test_hosts_text_names_localhost_and_container():
    text = dns.hosts_text("web")
    entries = {}
    for line in text.splitlines():
        address, *names = line.split()
        for name in names:
            entries.setdefault(name, []).append(address)
    assert "127.0.0.1" in entries["localhost"] and "::1" in entries["localhost"]
    assert entries["web"] == ["127.0.1.1"]


def test_hosts_text_uses_container_address_when_given():
    text = dns.hosts_text("8f3b9d2a1c44", "10.44.0.2")
    assert "10.44.0.2\t8f3b9d2a1c44" in text.splitlines()
