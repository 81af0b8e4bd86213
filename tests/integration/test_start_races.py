"""Red team of the parallel cold start: the parent killed between two of its steps, and the
pid stage 1 reports recycled before the parent puts the container's veth into its network
namespace. Frozen binary under strace (kills and pauses injected at a chosen syscall of
the parent kiwi alone), the test's own bridge, subnet and cgroup parent only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def strace_start(kiwi, cid: str, trace: Path, syscall: str, inject: str = "") -> subprocess.Popen:
    """`kiwi start cid` with strace on the parent kiwi alone (no -f: the stages run free),
    tracing syscall into trace; inject: what strace's -e inject= does to it."""
    injection = ["-e", f"inject={syscall}:{inject}"] if inject else []
    return subprocess.Popen(
        ["strace", "-qq", "-o", str(trace), "-e", f"trace={syscall}", *injection, *kiwi.cmd, "start", cid],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_start_killed_at_its_record_leaves_no_runtime_folder(kiwi, busybox, tmp_path):
    """SIGKILL as the start renames its written runtime.json into place: the next start
    and stop (and cleanup) remove the record's temporary file with the runtime folder."""
    cid = kiwi.create(busybox)
    trace = tmp_path / "trace"
    proc = strace_start(kiwi, cid, trace, "rename", "signal=KILL:when=1")
    proc.communicate(timeout=60)
    killed_at = trace.read_text().splitlines()[-2]
    assert "runtime.json" in killed_at, killed_at  # the kill hit the record's rename
    rdir = kiwi.root / "mounts" / cid
    assert [p.name for p in rdir.glob(".runtime.json.*.tmp")]
    assert "stale" in kiwi.out("list")
    kiwi("start", cid)
    kiwi("stop", cid)
    assert not rdir.exists(), sorted(p.name for p in rdir.iterdir())

    # The same kill, then cleanup instead of a start.
    proc = strace_start(kiwi, cid, trace, "rename", "signal=KILL:when=1")
    proc.communicate(timeout=60)
    kiwi("cleanup")
    assert not rdir.exists(), sorted(p.name for p in rdir.iterdir())


def container_procs(kiwi, cid: str) -> list[int]:
    """The processes of the container's cgroup (the pids hierarchy on v1, the one on v2)."""
    parent = kiwi.env["KIWI_CGROUP_PARENT"]
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"**/{parent}/kiwi-{cid}/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def veth_sendto(trace: Path) -> int:
    """Which sendto of the parent kiwi creates the veth pair (strace -e trace=sendto)."""
    calls = [line for line in trace.read_text().splitlines() if line.startswith("sendto(")]  # no signals
    for number, line in enumerate(calls, 1):
        if '"veth"' in line and "RTM_NEWLINK" in line:
            return number
    raise AssertionError("no veth creation in the trace")


# The intruder: prints every network device its namespace gets, the moment it appears.
WATCH = """
import socket, sys, time
seen = set()
while True:
    for _, name in socket.if_nameindex():
        if name not in seen:
            seen.add(name)
            print(name, flush=True)
    time.sleep(0.0005)
"""


def take_pid(pid: int, argv: list[str], out) -> subprocess.Popen | None:
    """Run argv as process `pid` (root sets ns_last_pid, as a racing host user forking in a
    loop would get there); None when another process on the machine got it first."""
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.parametrize("mode", ["unprivileged", "privileged"])
def test_a_recycled_stage_pid_never_gets_the_containers_veth(kiwi, busybox, tmp_path, mode):
    """Stage 2 dies while the parent is about to create the veth (a hostile image can make
    it fail; here SIGKILL), and its pid goes to another process in a network namespace of
    its own (pid_max may be 32768: a fork loop gets there). The veth pair must not be born
    in that namespace (its eth0 would carry the container's address on the bridge)."""
    assert Path("/proc/sys/kernel/ns_last_pid").exists(), "the kernel has no ns_last_pid to aim a pid with"
    cid = kiwi.create(busybox, *(["--privileged"] if mode == "privileged" else []))
    kiwi("start", cid)
    kiwi("stop", cid)  # the last container: the bridge goes; each start below begins alike
    calibration = tmp_path / "calibration"
    proc = strace_start(kiwi, cid, calibration, "sendto")
    assert proc.wait(timeout=60) == 0, proc.communicate()
    kiwi("stop", cid)
    when = veth_sendto(calibration)

    # Another process of the machine may take the freed pid before the intruder: try again.
    for attempt in range(5):
        events = tmp_path / f"events{attempt}"
        outcome = recycle_stage_pid(kiwi, cid, tmp_path / f"trace{attempt}", when, events)
        if outcome is not None:
            break
        kiwi("cleanup")  # what the start left that the next one would trip over
    else:
        raise AssertionError("five times another process took the stage's pid before the intruder")
    returncode, err = outcome
    assert returncode != 0  # its init is gone: the start fails, in one line
    assert "Traceback" not in err
    seen = events.read_text()
    assert "eth0" not in seen.split(), seen
    # Nothing of the failed start is left, and the container starts again.
    assert not any(comm(p) for p in container_procs(kiwi, cid))
    kiwi("start", cid)
    assert "inet " in kiwi.sh(cid, "ip -4 -o addr show eth0").stdout


def recycle_stage_pid(kiwi, cid: str, trace: Path, when: int, events: Path) -> tuple[int, str] | None:
    """A start held at its veth creation (strace delays that sendto), its init killed and the
    pid given to the WATCH intruder (its output in events): (the start's exit status, its
    stderr), or None when another process got the pid first (the start is ended)."""
    start = strace_start(kiwi, cid, trace, "sendto", f"delay_enter=3000000:when={when - 1}..{when + 1}")
    intruder = None
    try:
        deadline = time.monotonic() + 30
        init = None
        while init is None and time.monotonic() < deadline:
            init = next((p for p in container_procs(kiwi, cid) if comm(p) == "kiwi-init"), None)
            time.sleep(0.01)
        assert init is not None, "the container's init never appeared"
        time.sleep(0.3)  # the parent is held at its veth creation now
        os.kill(init, signal.SIGKILL)
        while comm(init) and time.monotonic() < deadline:  # reaped by whoever adopted it
            time.sleep(0.005)
        with open(events, "w") as out:
            intruder = take_pid(init, ["unshare", "--net", sys.executable, "-c", WATCH], out)
        if intruder is None:
            return None
        _, err = start.communicate(timeout=60)
        time.sleep(0.2)
        return start.returncode, err
    finally:
        if intruder is not None:
            intruder.kill()
            intruder.wait()
        with contextlib.suppress(ProcessLookupError):
            start.kill()
        start.wait()


def test_a_record_from_an_earlier_boot_is_not_trusted(kiwi, busybox):
    """runtime.json outlives a host crash (kiwi-data is on disk, not /run). After the reboot
    its init pid and start time may be another process's (boot is deterministic: autostart
    starts the same inits at the same moments): that process is not the container's init,
    for list, stop (which would signal it), attach and autostart (which would not start it)."""
    cid = kiwi.create(busybox)
    kiwi("start", cid)
    rdir = kiwi.root / "mounts" / cid
    record = json.loads((rdir / "runtime.json").read_text())
    kiwi("stop", cid)
    assert record["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        fields = Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1].split()
        record.update(
            init_pid=bystander.pid,
            init_start_time=int(fields[19]),
            boot="00000000-0000-4000-8000-000000000000",  # the boot before this one
        )
        rdir.mkdir(mode=0o700, exist_ok=True)
        path = rdir / "runtime.json"
        path.write_text(json.dumps(record))
        path.chmod(0o600)
        assert "running" not in kiwi.out("list")
        kiwi("stop", cid, check=False)
        time.sleep(0.2)
        assert bystander.poll() is None, "kiwi stop signalled a process of this boot"
        kiwi("start", cid)
        assert kiwi.sh(cid, "echo in").stdout.strip() == "in"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
