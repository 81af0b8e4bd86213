"""Limits visible inside (issue 17 item 11): free, /proc/meminfo, /proc/cpuinfo,
/proc/stat, /proc/loadavg, /proc/swaps, nproc, getconf _NPROCESSORS_ONLN, uptime and
df in a container show its limits and usage, live, through kiwi-lxfs (kiwi/lxfs.py,
cffi_build/lxfs.c); sysinfo(2) (busybox free and uptime) through its kiwi-sysinfo
handler and the container's time namespace.
Each test runs unprivileged (a user namespace) and --privileged."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time

import pexpect
import pytest

from conftest import alive, wait_until

BOTH_MODES = True
MIB = 1 << 20


def meminfo(kiwi, cid: str) -> dict[str, int]:
    """/proc/meminfo inside, in kB."""
    values = {}
    for line in kiwi.sh(cid, "cat /proc/meminfo").stdout.splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


def free_total(kiwi, cid: str) -> int:
    """busybox free's total in kB: sysinfo(2) inside."""
    return int(kiwi.sh(cid, "free -k | grep Mem:").stdout.split()[1])


def host_meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f}


def inspect(kiwi, cid: str) -> dict:
    return json.loads(kiwi.out("inspect", cid))


SERVERS = ("kiwi-lxfs", "kiwi-sysinfo")


def servers(kiwi, cid: str) -> dict[str, int]:
    """The limits server's processes in the container's cgroup, by name: the FUSE server
    (outside the container's PID namespace) and its sysinfo handler (outside it too when
    unprivileged; in it, not ptraceable, when privileged)."""
    return servers_among(inspect(kiwi, cid)["pids"])


def servers_among(pids: list[int]) -> dict[str, int]:
    found = {}
    for pid in pids:
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
        if name in SERVERS:
            found[name] = pid
    return found


def server_pids(kiwi, cid: str) -> list[int]:
    return sorted(servers(kiwi, cid).values())


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
    # busybox free takes total/used/free from sysinfo(2) (answered by kiwi-sysinfo), its
    # "available" column from /proc/meminfo.
    free = kiwi.sh(cid, "free -k | grep Mem:").stdout.split()
    assert int(free[1]) == 256 * 1024
    assert 0 < int(free[2]) < 256 * 1024 and 0 < int(free[3]) < 256 * 1024
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
    # busybox uptime reads sysinfo(2): the container's time namespace starts near 0
    assert re.search(r"up +[0-4] min", kiwi.sh(cid, "uptime").stdout)
    # Read-only, whoever asks.
    denied = kiwi.sh(cid, "echo x > /proc/meminfo", check=False)
    assert denied.returncode != 0


def sections(text: str) -> list[str]:
    """A script's outputs separated by lines of "@"."""
    return text.split("@\n")


BUSY_11S = "timeout 11 sh -c 'while :; do :; done'"


@pytest.mark.limits
def test_limits_inside_at_a_glance(kiwi, busybox):
    """All the container sees of its limits in few commands: the cgroup v2 VM tier runs it
    (-m limits, tests/vm/test_vm_limits.py), where the server reads memory.max,
    memory.current, memory.swap.max, cpuset.cpus.effective, cpu.stat and pids.current."""
    began = time.monotonic()
    cid = started(kiwi, busybox, "--memory", "96M", "--cpu", "1")
    info = inspect(kiwi, cid)
    assert info["limits_inside"] == "active"
    script = "free -k; for f in meminfo swaps loadavg uptime; do echo @; cat /proc/$f; done; echo @; "
    script += "uptime; echo @; nproc; grep -c ^processor /proc/cpuinfo; readlink /proc/self/ns/time"
    free, mem, swaps, loadavg, uptime, busybox_uptime, cpus = sections(kiwi.sh(cid, script).stdout)
    since_start = time.monotonic() - began
    total = int(free.split("Mem:")[1].split()[0])  # sysinfo(2), answered by kiwi-sysinfo
    used, unused = map(int, free.split("Mem:")[1].split()[1:3])
    assert total == 96 * 1024 and 0 < used < total and 0 < unused < total, free
    values = {line.split(":")[0]: int(line.split()[1]) for line in mem.splitlines()}
    assert values["MemTotal"] == 96 * 1024 and 0 < values["MemFree"] <= values["MemAvailable"] < 96 * 1024
    assert values["SwapTotal"] == values["SwapFree"] == 0, mem  # no swap beyond the limit
    assert swaps.splitlines() == ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"]
    # the container's tasks (init, sh, cat, the servers' threads), not the host's
    match = re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d (\d+)/(\d+) 0\n", loadavg)
    assert match and 1 <= int(match[1]) <= int(match[2]) < 20, loadavg
    # its own uptime (counted from its start, not the host's boot) and time namespace
    assert 0 <= float(uptime.split()[0]) <= since_start + 1, (uptime, since_start)
    minutes = re.search(r"up +(\d+) min", busybox_uptime)  # sysinfo(2)'s uptime
    assert minutes and int(minutes[1]) <= since_start / 60, busybox_uptime
    nproc, processors, time_ns = cpus.split()
    assert nproc == processors == "1"
    assert time_ns != os.readlink("/proc/self/ns/time")
    # Both servers confined whatever the cgroup version (the handler keeps CAP_SYS_PTRACE and CAP_DAC_OVERRIDE)
    found = servers_among(info["pids"])
    assert sorted(found) == sorted(SERVERS)
    base = (info.get("other_settings", {}).get("idmap") or {}).get("base", 0)
    for name, pid in found.items():
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        caps = "0000000000080002" if name == "kiwi-sysinfo" else "0000000000000000"
        assert f"\nCapEff:\t{caps}\n" in status and "\nNoNewPrivs:\t1\n" in status, (name, status)
        uid = base + (65535 if name == "kiwi-sysinfo" else 65534)
        assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in status, (name, status)
    # A CPU kept busy 11 s (a whole 5-s load sample) while the memory limit changes live
    busy = subprocess.Popen(
        kiwi.cmd + ["attach", cid, "--", "sh", "-c", f"{BUSY_11S}; cat /proc/loadavg /proc/uptime; uptime"],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        kiwi("set", cid, "--memory", "128M")
        free, mem = sections(kiwi.sh(cid, "free -k; echo @; grep MemTotal /proc/meminfo").stdout)
        assert free.split("Mem:")[1].split()[0] == mem.split()[1] == str(128 * 1024), (free, mem)
        out, _ = busy.communicate(timeout=120)
    finally:
        busy.kill()
        busy.wait()
    load1, later = float(out.split()[0]), float(out.splitlines()[1].split()[0])
    assert 0.01 <= load1 <= 1.0, out
    assert re.search(r"load average: 0\.(0[1-9]|[1-9][0-9])", out), out  # sysinfo's loads too
    assert later >= float(uptime.split()[0]) + 11, (uptime, out)


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
    assert free_total(kiwi, cid) == 300 * 1024  # sysinfo(2) too
    kiwi("set", cid, "--memory", "host")
    assert meminfo(kiwi, cid)["MemTotal"] == host_meminfo()["MemTotal"]
    assert free_total(kiwi, cid) == host_meminfo()["MemTotal"]
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
    found = servers(kiwi, cid)
    assert sorted(found) == sorted(SERVERS)
    base = (json.loads(kiwi.out("inspect", cid)).get("other_settings", {}).get("idmap") or {}).get("base", 0)
    for name, pid in found.items():
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        # the container's own ids (the host's for --privileged), < 1 MiB, no_new_privs, not
        # dumpable (nothing can ptrace it or open its fds); the FUSE server has no
        # capabilities, the sysinfo handler CAP_SYS_PTRACE and CAP_DAC_OVERRIDE alone (over
        # the container's processes only: its user namespace's, or its PID namespace's when
        # privileged; DAC_OVERRIDE opens a caller's 0600 /proc/<pid>/mem)
        # (the handler: the id block's top, 65535, so that no everyday process inside,
        # e.g. nobody, shares its uid and could SIGSTOP it)
        uid = base + (65535 if name == "kiwi-sysinfo" else 65534)
        assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in status, name
        caps = "0000000000080002" if name == "kiwi-sysinfo" else "0000000000000000"
        for line in ("CapEff", "CapPrm", "CapBnd"):
            assert f"\n{line}:\t{caps}\n" in status, (name, line)
        assert "\nNoNewPrivs:\t1\n" in status, name
        rss = int(status.split("VmRSS:")[1].split()[0])
        assert rss < 1024, (name, rss)
        # Started from a sealed memfd, not a host file; confined to an empty folder; it
        # holds no terminal and no directory (only /dev/fuse or the seccomp listeners, and
        # the files it renders from), but for the handler's procfs of the container's PID
        # namespace (its pid folders only: the container's init is 1 there).
        assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:"), os.readlink(f"/proc/{pid}/exe")
        assert os.listdir(f"/proc/{pid}/root") == [], name
        folders = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if stat.S_ISDIR(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                folders.append(set(os.listdir(f"/proc/{pid}/fd/{fd}")))
            assert not target.startswith(("/dev/pts", "/dev/tty")), target
        if name == "kiwi-sysinfo":
            assert len(folders) == 1 and "1" in folders[0], folders
            assert not {n for n in folders[0] if not n.isdigit()} - {"self", "thread-self"}, folders
        else:
            assert folders == [], folders
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        if name == "kiwi-sysinfo":  # a privileged container sees it: no host path in it
            assert b"/" not in cmdline, cmdline
    kiwi("stop", cid)
    assert_no_server_left(list(found.values()))


def test_server_ends_when_init_is_killed(kiwi, busybox):
    cid = started(kiwi, busybox, "--memory", "256M")
    pids = server_pids(kiwi, cid)
    os.kill(inspect(kiwi, cid)["init_pid"], signal.SIGKILL)
    assert_no_server_left(pids)  # the mount namespace went: the kernel ended the connection
    assert kiwi.json("list")[0]["status"] == "stopped"
    # and it starts again with a new server
    assert meminfo(kiwi, cid)["MemTotal"] == 256 * 1024
    assert sorted(servers(kiwi, cid)) == sorted(SERVERS)


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


def test_loadavg_and_swaps(kiwi, busybox):
    """/proc/loadavg: the container's tasks and the CPUs it keeps busy (sampled every 5 s);
    /proc/swaps: the swap its limit allows (none: Kiwi ties swap to the memory limit)."""
    cid = started(kiwi, busybox, "--memory", "256M", "--cpu", "1")
    fields = kiwi.sh(cid, "cat /proc/loadavg").stdout.split()
    running, total = map(int, fields[3].split("/"))
    # kiwi-init, sh, cat, the limits server: not the host's hundreds of tasks
    assert len(fields) == 5 and 1 <= running <= total < 20, fields
    assert kiwi.sh(cid, "cat /proc/swaps").stdout.splitlines() == [
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"
    ]
    # A CPU kept busy for 11 s: at least one whole 5-s sample, the 1-minute average climbs
    # (by up to 1 - e^-1/6 ~ 0.15 for each sample of a CPU fully busy; less on a busy host)
    busy = kiwi.sh(cid, "timeout 11 sh -c 'while :; do :; done'; cat /proc/loadavg; uptime", check=False)
    load1 = float(busy.stdout.split()[0])
    assert 0.01 <= load1 <= 1.0, busy.stdout
    # busybox uptime (sysinfo's loads) shows the same averages
    assert re.search(r"load average: 0\.(0[1-9]|[1-9][0-9])", busy.stdout), busy.stdout


def test_a_session_sees_the_same(kiwi, busybox, terminals):
    cid = started(kiwi, busybox, "--memory", "256M")
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid], kiwi.env)
    child.expect(r"kiwi: session [0-9a-f]{8} ")
    child.sendline("free -k | grep Mem: | tr -s ' ' | cut -d' ' -f2; uptime; echo DONE-$((6*7))")
    child.expect(r"\n262144\r?\n")
    child.expect(r"up +[0-4] min")
    child.expect("DONE-42")
    child.sendline("exit")
    child.expect(pexpect.EOF)


HOSTILE_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static int call(void *p) { return syscall(SYS_sysinfo, p) < 0 ? errno : 0; }

int main(void)
{
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("null %d bad %d readonly %d\n", call(NULL), call((void *)1), call(ro));
    for (int round = 0; round < 20; round++) { /* killed in the middle of its calls */
        pid_t pid = fork();
        if (pid == 0) { struct sysinfo s; for (;;) syscall(SYS_sysinfo, &s); }
        usleep(10000);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    DIR *proc = opendir("/proc");
    for (struct dirent *e; (e = readdir(proc));) { /* the servers, where they can be seen */
        int pid = atoi(e->d_name);
        char path[64], comm[32] = "";
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        FILE *f = pid > 1 ? fopen(path, "r") : NULL;
        if (!f)
            continue;
        if (!fgets(comm, sizeof comm, f) || strncmp(comm, "kiwi-", 5)) { fclose(f); continue; }
        fclose(f);
        char buf[8], link[256];
        struct iovec local = {buf, 8}, remote = {(void *)0x400000, 8};
        snprintf(path, sizeof path, "/proc/%d/fd/4", pid);
        int fd = open(path, O_RDONLY);
        long linked = readlink(path, link, sizeof link);
        snprintf(path, sizeof path, "/proc/%d/root/", pid);
        DIR *root = opendir(path);
        long traced = ptrace(PTRACE_ATTACH, pid, 0, 0);
        int traced_errno = errno;
        long read = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        printf("seen %d ptrace %ld/%d readv %ld fd %d %ld root %s\n", pid, traced, traced_errno, read, fd, linked,
               root ? "open" : "denied");
    }
    struct sysinfo s;
    int r = sysinfo(&s);
    printf("ok %d total %llu procs %u uptime %ld\n", r, (unsigned long long)s.totalram * s.mem_unit, s.procs, s.uptime);
    return 0;
}
"""


def test_hostile_root_against_sysinfo(kiwi, busybox, tmp_path):
    """Root inside calls sysinfo with bad pointers, dies in the middle of calls, floods it
    from 50 processes, and goes for the handler (ptrace, its memory, its fds): the calls
    fail as the kernel's would, the handler keeps answering, another container too."""
    source = tmp_path / "hostile.c"
    source.write_text(HOSTILE_C)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(tmp_path / "hostile"), str(source)], check=True)
    cid = started(kiwi, busybox, "--memory", "256M", "--cpu", "1")
    other = started(kiwi, busybox, "--memory", "200M")
    before = servers(kiwi, cid)
    copy = kiwi.cmd + ["attach", cid, "--", "sh", "-c", "cat > /hostile; chmod +x /hostile"]
    subprocess.run(copy, input=(tmp_path / "hostile").read_bytes(), env=kiwi.env, check=True, timeout=60)
    out = kiwi.sh(cid, "/hostile").stdout
    assert "null 14 bad 14 readonly 14" in out, out  # EFAULT, as the kernel answers
    for line in out.splitlines():
        if line.startswith("seen"):  # the handler (in its PID namespace), and nothing of it
            assert re.fullmatch(r"seen \d+ ptrace -1/1 readv -1 fd -1 -1 root denied", line), line
    assert "seen" in out, out
    assert re.search(r"^ok 0 total 268435456 procs \d+ uptime [0-9]{1,3}$", out, re.M), out
    flood = "i=0; while [ $i -lt 50 ]; do (for j in 1 2 3 4 5 6 7 8 9 10; do free >/dev/null; done) & i=$((i+1)); done; wait"
    kiwi.sh(cid, flood)
    assert free_total(kiwi, cid) == 256 * 1024
    assert free_total(kiwi, other) == 200 * 1024
    assert servers(kiwi, cid) == before and all(alive(pid) for pid in before.values())


def test_container_works_after_the_handler_is_killed(kiwi, busybox):
    """Root inside kills the handler (it sees it in its PID namespace): processes that had
    it get ENOSYS from sysinfo (busybox free and uptime print nonsense, the shell goes on);
    commands started later get the host's figures; the files stay the container's."""
    cid = started(kiwi, busybox, "--memory", "256M")
    waiting = subprocess.Popen(
        kiwi.cmd
        + [
            "attach",
            cid,
            "--",
            "sh",
            "-c",
            "read x; free -k; echo free=$?; uptime; echo uptime=$?; echo alive",
        ],
        env=kiwi.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: len(inspect(kiwi, cid)["pids"]) >= 4)  # init, servers, sh
        handler = servers(kiwi, cid)["kiwi-sysinfo"]
        kill = (
            'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = kiwi-sysinfo ] && kill -9 ${p#/proc/}; done; true'
        )
        kiwi.sh(cid, kill)
        assert wait_until(lambda: not alive(handler))
        out, err = waiting.communicate("go\n", timeout=60)
    finally:
        waiting.kill()
        waiting.wait()
    assert "alive" in out and "free=" in out and "uptime=" in out, (out, err)
    assert free_total(kiwi, cid) == host_meminfo()["MemTotal"]  # no handler: the host's
    assert meminfo(kiwi, cid)["MemTotal"] == 256 * 1024  # the FUSE server goes on
    assert re.search(r"up +[0-4] min", kiwi.sh(cid, "uptime").stdout)  # the time namespace


def test_nobody_inside_cannot_stop_the_handler(kiwi, busybox):
    """The sysinfo handler is in the container's PID namespace: a non-root user inside
    (nobody, what daemons run as) must not be able to stop or kill it, which would hang
    or take away every process's sysinfo, root's too."""
    cid = started(kiwi, busybox, "--memory", "256M")
    handler = servers(kiwi, cid)["kiwi-sysinfo"]
    signals = (
        'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = kiwi-sysinfo ] || continue; '
        "kill -STOP ${p#/proc/} && echo stopped; kill -9 ${p#/proc/} && echo killed; done; echo tried"
    )
    out = kiwi.out("attach", "-u", "nobody", cid, "--", "sh", "-c", signals)
    assert "tried" in out and "stopped" not in out and "killed" not in out, out
    with open(f"/proc/{handler}/status") as f:
        state = re.search(r"\nState:\t(\S)", f.read())
    # Asleep waiting for calls, or runnable (a loaded machine): not stopped (T) nor traced (t).
    assert state is not None and state.group(1) in ("S", "R"), state
    assert alive(handler)
    assert free_total(kiwi, cid) == 256 * 1024  # root's sysinfo still answered
