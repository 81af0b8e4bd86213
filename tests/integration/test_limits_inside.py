"""Limits visible inside (issue 17 item 11): free, /proc/meminfo, /proc/cpuinfo,
/proc/stat, nproc, getconf _NPROCESSORS_ONLN, uptime and df in a container show its
limits and usage, live, through kiwi-lxfs (kiwi/lxfs.py, cffi_build/lxfs.c).
Each test runs unprivileged (a user namespace) and --privileged."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

BOTH_MODES = True
MIB = 1 << 20


def meminfo(kiwi, cid: str) -> dict[str, int]:
    """/proc/meminfo inside, in kB."""
    values = {}
    for line in kiwi.sh(cid, "cat /proc/meminfo").stdout.splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


def host_meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f}


def inspect(kiwi, cid: str) -> dict:
    return json.loads(kiwi.out("inspect", cid))


def server_pids(kiwi, cid: str) -> list[int]:
    """The container's processes outside its PID namespace: the kiwi-lxfs server."""
    info = inspect(kiwi, cid)
    init_ns = os.readlink(f"/proc/{info['init_pid']}/ns/pid")
    return [pid for pid in info["pids"] if os.readlink(f"/proc/{pid}/ns/pid") != init_ns]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for the host's PID 1 to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def assert_no_server_left(pids: list[int]) -> None:
    assert pids and wait_until(lambda: not any(alive(pid) for pid in pids)), pids


def started(kiwi, *create_args) -> str:
    cid = kiwi.create(*create_args)
    kiwi("start", cid)
    return cid


def test_memory_and_cpus_inside(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M", "--cpu", "1")
    info = inspect(kiwi, cid)
    assert info["limits_inside"] == "active"
    mem = meminfo(kiwi, cid)
    assert mem["MemTotal"] == 256 * 1024
    assert 0 < mem["MemFree"] < mem["MemTotal"]  # the shell and cat use some
    assert mem["MemFree"] <= mem["MemAvailable"] <= mem["MemTotal"]
    assert mem["SwapTotal"] == 0  # Kiwi ties swap to the memory limit
    # busybox free takes total/used/free from sysinfo(2), which no file changes (Incus
    # intercepts that syscall); its "available" column is /proc/meminfo's.
    free = kiwi.sh(cid, "free -k | grep Mem:").stdout.split()
    assert 0 < int(free[6]) <= 256 * 1024
    assert kiwi.sh(cid, "nproc").stdout.strip() == "1"
    assert kiwi.sh(cid, "cat /sys/devices/system/cpu/online").stdout.strip() == "0"
    assert kiwi.sh(cid, "grep -c ^processor /proc/cpuinfo").stdout.strip() == "1"
    assert kiwi.sh(cid, "grep ^processor /proc/cpuinfo").stdout.split() == ["processor", ":", "0"]
    stat = kiwi.sh(cid, "grep ^cpu /proc/stat").stdout.splitlines()
    assert [line.split()[0] for line in stat] == ["cpu", "cpu0"]
    assert stat[0].split()[1:] == stat[1].split()[1:]  # the sum of the one CPU shown
    uptime, idle = map(float, kiwi.sh(cid, "cat /proc/uptime").stdout.split())
    host_uptime = float(open("/proc/uptime").read().split()[0])
    assert 0 <= uptime < 60 < host_uptime and idle >= 0  # since the container started
    assert "up " in kiwi.sh(cid, "uptime").stdout
    # Read-only, whoever asks.
    denied = kiwi.sh(cid, "echo x > /proc/meminfo", check=False)
    assert denied.returncode != 0


def test_no_limits_shows_the_host(kiwi, busybox):
    cid = started(kiwi, busybox)
    assert inspect(kiwi, cid)["limits_inside"] == "active"
    assert meminfo(kiwi, cid)["MemTotal"] == host_meminfo()["MemTotal"]
    cpus = len(os.sched_getaffinity(0))
    assert kiwi.sh(cid, "grep -c ^processor /proc/cpuinfo").stdout.strip() == str(cpus)
    with open("/sys/devices/system/cpu/online") as f:
        assert kiwi.sh(cid, "cat /sys/devices/system/cpu/online").stdout == f.read()


def test_set_memory_shows_at_once(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M", "--cpu", "1")
    assert meminfo(kiwi, cid)["MemTotal"] == 256 * 1024
    kiwi("set", cid, "--memory", "300M")
    assert meminfo(kiwi, cid)["MemTotal"] == 300 * 1024
    kiwi("set", cid, "--memory", "host")
    assert meminfo(kiwi, cid)["MemTotal"] == host_meminfo()["MemTotal"]
    if len(os.sched_getaffinity(0)) > 1:
        kiwi("set", cid, "--cpu", "host")
        assert kiwi.sh(cid, "grep -c ^processor /proc/cpuinfo").stdout.strip() == str(
            len(os.sched_getaffinity(0))
        )


def test_usage_grows_as_the_container_allocates(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M")
    before = meminfo(kiwi, cid)
    kiwi.sh(cid, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null")
    after = meminfo(kiwi, cid)
    # tmpfs pages are shared memory: charged to the container, not reclaimable
    assert before["MemFree"] - after["MemFree"] >= 40 * 1024
    assert before["MemAvailable"] - after["MemAvailable"] >= 40 * 1024
    assert after["Shmem"] - before["Shmem"] >= 40 * 1024
    kiwi.sh(cid, "rm /dev/shm/fill")
    assert meminfo(kiwi, cid)["MemFree"] - after["MemFree"] >= 40 * 1024


def test_server_ends_with_stop(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M")
    pids = server_pids(kiwi, cid)
    assert len(pids) == 1
    with open(f"/proc/{pids[0]}/status") as f:
        status = f.read()
    # the container's nobody (the host's for --privileged), no capabilities, < 1 MiB
    base = (json.loads(kiwi.out("inspect", cid)).get("other_settings", {}).get("idmap") or {}).get("base", 0)
    uid = base + 65534
    assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in status
    assert "\nCapEff:\t0000000000000000\n" in status
    rss = int(status.split("VmRSS:")[1].split()[0])
    assert rss < 1024, rss
    # Started from a sealed memfd, not a host file; it holds no terminal and no directory
    # (only /dev/fuse and the files it renders from).
    assert os.readlink(f"/proc/{pids[0]}/exe").startswith("/memfd:"), os.readlink(f"/proc/{pids[0]}/exe")
    for fd in os.listdir(f"/proc/{pids[0]}/fd"):
        target = os.readlink(f"/proc/{pids[0]}/fd/{fd}")
        st = os.stat(f"/proc/{pids[0]}/fd/{fd}")
        assert not stat.S_ISDIR(st.st_mode) and not target.startswith(("/dev/pts", "/dev/tty")), target
    kiwi("stop", cid)
    assert_no_server_left(pids)


def test_server_ends_when_init_is_killed(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M")
    pids = server_pids(kiwi, cid)
    os.kill(inspect(kiwi, cid)["init_pid"], signal.SIGKILL)
    assert_no_server_left(pids)  # the mount namespace went: the kernel ended the connection
    assert kiwi.json("list")[0]["status"] == "stopped"
    # and it starts again with a new server
    assert meminfo(kiwi, cid)["MemTotal"] == 256 * 1024
    assert len(server_pids(kiwi, cid)) == 1


def test_hostile_root_inside(kiwi, busybox):
    """Root inside opens many files, reads at odd offsets, writes, removes the binds:
    the server keeps answering or ends cleanly; nothing on the host changes."""
    cid = started(kiwi, busybox, "--memory", "256M", "--cpu", "1")
    pids = server_pids(kiwi, cid)
    with open("/proc/meminfo") as f:
        host_before = f.readline()
    script = r"""
        for f in /proc/meminfo /proc/cpuinfo /proc/stat /proc/uptime /sys/devices/system/cpu/online; do
            ( : > $f ) 2>/dev/null && echo "wrote $f"
            ( echo x >> $f ) 2>/dev/null && echo "appended $f"
            ( chmod 777 $f ) 2>/dev/null && echo "chmod $f"
            ( touch $f ) 2>/dev/null && echo "touched $f"
            dd if=$f bs=1 skip=999999999 count=10 2>/dev/null | wc -c
            dd if=$f bs=7 skip=3 count=5 2>/dev/null >/dev/null
        done
        i=0
        while [ $i -lt 200 ]; do exec 3</proc/meminfo; eval "exec $((i % 50 + 10))</proc/stat"; i=$((i+1)); done
        ls -la /proc/meminfo; stat -f /proc/meminfo >/dev/null
        cat /proc/meminfo | head -1
    """
    out = kiwi.sh(cid, script).stdout
    assert not any(word in out for word in ("wrote", "appended", "chmod", "touched")), out
    assert "MemTotal:         262144 kB" in out
    assert all(alive(pid) for pid in pids)
    # root inside may take the binds away (it then sees the host's file, as with lxcfs)
    kiwi.sh(cid, "umount /proc/meminfo; umount -l /proc/cpuinfo; true")
    assert meminfo(kiwi, cid)["MemTotal"] in (256 * 1024, host_meminfo()["MemTotal"])
    with open("/proc/meminfo") as f:
        assert f.readline().split(":")[0] == host_before.split(":")[0]
    kiwi("stop", cid)
    assert_no_server_left(pids)


def test_starts_without_fuse(kiwi, busybox):
    """A host whose /dev/fuse is no FUSE device (here /dev/null bound over it, in a mount
    namespace of this start only): the container starts with the host's files, and
    inspect says why."""
    cid = kiwi.create(busybox, "--memory", "256M")
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *kiwi.cmd, "start", cid],
        env=kiwi.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reason = inspect(kiwi, cid)["limits_inside"]
    assert reason.startswith("cannot mount FUSE here"), reason
    assert meminfo(kiwi, cid)["MemTotal"] == host_meminfo()["MemTotal"]
    assert server_pids(kiwi, cid) == []
    kiwi("stop", cid)
