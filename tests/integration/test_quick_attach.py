"""The everyday `kiwi attach c -- cmd` enters with what the start recorded in runtime.json
(quickattach.py); anything else goes through cmd_attach. Both must confine the command
alike, and a record the quick path must not trust (another build's, writable by others)
must not steer it: the command then runs exactly as before, through the full path."""

from __future__ import annotations

import json
import os

import pytest

# What a command sees of its confinement: capabilities, seccomp, no_new_privs, its cgroups
# (each ":/" when in the container's own: the cgroup namespace's root).
PROBE = "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; cat /proc/self/cgroup; echo $HOSTNAME $PATH"


@pytest.fixture
def running(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "qa")
    kiwi("start", cid, check=True)
    return cid


def record_path(kiwi, cid: str):
    return kiwi.root / "mounts" / cid / "runtime.json"


def rewrite_facts(k, cid: str, mode: int = 0o600, **changes) -> None:
    path = record_path(k, cid)
    record = json.loads(path.read_text())
    if changes:
        record["enter"] = {**record["enter"], **changes}
    else:
        del record["enter"]
    path.write_text(json.dumps(record))
    os.chmod(path, mode)


def probe(kiwi, cid: str) -> list[str]:
    lines = kiwi.out("attach", cid, "--", "sh", "-c", PROBE).splitlines()
    cgroups = [line for line in lines if line[:1].isdigit()]
    assert cgroups and all(line.endswith(":/") for line in cgroups), lines
    return lines


def test_quick_and_full_paths_confine_alike(kiwi, running):
    record = json.loads(record_path(kiwi, running).read_text())
    assert set(record["enter"]) >= {"procs", "seccomp", "seccomp_sysinfo", "caps", "kiwi"}
    quick = probe(kiwi, running)
    assert "Seccomp:\t2" in quick
    rewrite_facts(kiwi, running)  # a record of an older Kiwi: cmd_attach enters
    assert probe(kiwi, running) == quick
    assert kiwi.out("attach", "qa", "-e", "X=1", "-w", "/etc", "--", "sh", "-c", "echo $X $PWD") == "1 /etc"


def test_the_recorded_facts_are_what_enters(kiwi, running):
    # The control for the test below: a good record's cgroup files are the ones opened.
    rewrite_facts(kiwi, running, procs=["/sys/fs/cgroup/pids/kiwi-no-such-cgroup/cgroup.procs"])
    done = kiwi("attach", running, "--", "true", check=False)
    assert done.returncode == 1 and "cannot open the container's cgroup" in done.stderr


@pytest.mark.parametrize("case", ["another build", "writable by others"])
def test_an_untrusted_record_does_not_steer(kiwi, running, case):
    bogus = ["/sys/fs/cgroup/pids/kiwi-no-such-cgroup/cgroup.procs"]
    if case == "another build":
        rewrite_facts(kiwi, running, procs=bogus, kiwi="kiwi 0.0.1 (an older build)")
    else:
        rewrite_facts(kiwi, running, mode=0o666, procs=bogus)
    probe(kiwi, running)  # entered through cmd_attach, into the container's own cgroups


def held_by_the_shell(kiwi, cid: str) -> list[str]:
    """Each fd of the shell and what it is (pipe, or a file's path), as `ls -l` (its child)
    sees them, and the shell's exe."""
    lines = kiwi.out("attach", cid, "--", "sh", "-c", "ls -l /proc/$$/fd; readlink /proc/$$/exe").splitlines()
    fds = [line.split()[-3] + " " + line.split()[-1].split(":")[0] for line in lines if " -> " in line]
    return fds + lines[-1:]


def test_quick_path_hands_no_host_fd(kiwi, running):
    """The command holds the three pipes kiwi relays and nothing else of the host's
    (no cgroup, namespace, seccomp, handler or memfd fd of kiwi-exec's), on both paths."""
    quick = held_by_the_shell(kiwi, running)
    assert quick == ["0 pipe", "1 pipe", "2 pipe", "/bin/busybox"]
    rewrite_facts(kiwi, running)  # through cmd_attach
    assert held_by_the_shell(kiwi, running) == quick
