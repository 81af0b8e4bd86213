"""kiwi-sysinfo must not show the host's network to the container.

The sysinfo handler lives in the container's PID namespace, so every process inside
sees it in /proc, and /proc/<pid>/net shows the network namespace of that process. It was
the host's: any user inside (here uid 1000 of a default, unprivileged container) read the
host's interfaces and their counters (every container's veth, the bridges of other data
folders), routes, ARP table, TCP listeners and unix sockets with their paths (seventh
red-team pass). Now the handler joins the container's own network namespace.
"""

from __future__ import annotations

BOTH_MODES = True


def test_the_sysinfo_handler_shows_only_the_containers_network(kiwi, busybox):
    cid = kiwi.create(busybox)
    script = (
        "for p in /proc/[0-9]*; do [ $(cat $p/comm) = kiwi-sysinfo ] && h=${p#/proc/}; done;"
        ' echo "pid $h"; echo ==dev; cat /proc/$h/net/dev; echo ==route; cat /proc/$h/net/route;'
        " echo ==unix; cat /proc/$h/net/unix; echo ==own; cat /proc/self/net/dev"
    )
    done = kiwi("attach", cid, "-u", "1000", "--", "sh", "-c", script)
    text = done.stdout
    assert text.splitlines()[0].split()[1].isdigit(), text  # the handler is there, seen by pid
    handler = text.split("==dev\n")[1].split("==route\n")[0]
    own = text.split("==own\n")[1]

    def names(table: str) -> set[str]:
        return {line.split(":")[0].strip() for line in table.splitlines()[2:] if ":" in line}

    # The container's interfaces, not the host's (its bridge, other veths, its eth0 of the host).
    assert names(handler) == names(own) == {"lo", "eth0"}, text
    assert kiwi.env["KIWI_BRIDGE"] not in text, text
    # No host unix socket (each running container's sysinfo.sock is one, under the data folder).
    assert str(kiwi.root) not in text and "sysinfo.sock" not in text, text
    # It still answers sysinfo(2) with the container's figures.
    assert kiwi.out("attach", cid, "--", "sh", "-c", "free | wc -l").isdigit()
