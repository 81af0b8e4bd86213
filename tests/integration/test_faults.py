"""Issue 13, "faults that must not hurt": signals and kill -9 at a spread of
moments, full host disks and killed restores, injected into the frozen kiwi.

A kill here ends kiwi's whole process group (the one-file launcher and the
Python process doing the work, with its helpers): the worst case."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_limits import cgroup_of  # this process computes the cgroup paths of the kiwi under test

MIB = 1 << 20
GIB = 1 << 30


def signal_midway(kiwi, args, after: float, sig: int) -> subprocess.CompletedProcess:
    """Run `kiwi args` in its own process group and send sig to the whole group after `after` s."""
    proc = subprocess.Popen(
        kiwi.cmd + [str(a) for a in args],
        env=kiwi.env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:  # the launcher may die before its child: end the rest of the group too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30  # what the next command meets: the killed group gone
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lease_path(kiwi, cid):
    return kiwi.root / "mounts" / cid / "freeze.json"


# --- 1. frozen containers -------------------------------------------------------------


def test_killed_snap_and_commit_never_leave_the_container_frozen(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "2G")
    # A few hundred MB of changes that compress badly: snap and commit take a while.
    kiwi.sh(
        cid,
        "dd if=/dev/urandom of=/root/noise bs=1M count=300 2>/dev/null; "
        "(while true; do date > /root/clock; sleep 0.1; done) >/dev/null 2>&1 &",
        timeout=300,
    )
    group = cgroup_of(kiwi, cid)
    took = {}  # how long each takes here and now, uninterrupted
    for command, target in (("snap", "whole"), ("commit", "whole")):
        started = time.monotonic()
        kiwi(command, cid, target, timeout=300)
        took[command] = time.monotonic() - started
    caught_frozen = unwound = 0

    def plans():
        yield from [("snap", signal.SIGKILL, f) for f in (0.3, 0.45, 0.6, 0.75, 0.9)]
        yield from [("commit", signal.SIGKILL, f) for f in (0.4, 0.6, 0.8)]
        yield from [
            (cmd, sig, f)
            for cmd in ("snap", "commit")
            for sig in (signal.SIGTERM, signal.SIGHUP)
            for f in (0.5, 0.8)
        ]
        rng = random.Random(13)
        for _ in range(16):  # the load on the machine moves the window: go on until the faults landed
            if caught_frozen >= 2 and unwound >= 2:
                return
            sig = signal.SIGKILL if caught_frozen < 2 else rng.choice((signal.SIGTERM, signal.SIGHUP))
            yield rng.choice(("snap", "commit")), sig, rng.uniform(0.3, 0.9)

    for n, (command, sig, fraction) in enumerate(plans()):
        target = f"s{n}" if command == "snap" else f"img{n}"
        after = fraction * took[command]
        done = signal_midway(kiwi, [command, cid, target], after, sig)
        if sig == signal.SIGKILL:
            caught_frozen += group.is_frozen() and lease_path(kiwi, cid).exists()
        elif done.returncode == 128 + sig:
            unwound += 1
            assert "the container was thawed" in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert not group.is_frozen()
        # No cleanup: the next command must find the container usable at once.
        attached = kiwi("attach", cid, "--", "cat", "/root/clock", timeout=30, check=False)
        assert attached.returncode == 0, (command, sig, after, attached.stderr)
        assert not group.is_frozen(), (command, sig, after)
        assert not lease_path(kiwi, cid).exists()
        assert kiwi.json("list", "containers")[0]["status"] == "running"
    # The faults really hit the frozen window (else this test proves nothing).
    assert caught_frozen >= 2, caught_frozen
    assert unwound >= 2, unwound
    kiwi("cleanup")
    assert not group.is_frozen()
    assert kiwi.sh(cid, "test -s /root/noise && echo ok").stdout == "ok\n"


def test_list_and_cleanup_thaw_an_abandoned_freeze(kiwi, busybox):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    group = cgroup_of(kiwi, cid)
    # A lease whose owner is a zombie: exited, not yet reaped.
    pid, zombie = zombie_pid()
    stat = open(f"/proc/{pid}/stat").read()
    start = int(stat[stat.rindex(")") + 2 :].split()[19])
    for thawer in (("list",), ("cleanup",), ("stop", cid, "--time", "2")):
        lease_path(kiwi, cid).write_text(json.dumps({"pid": pid, "start_time": start}))
        group.freeze()
        kiwi(*thawer)
        assert not lease_path(kiwi, cid).exists(), thawer
        assert not group.exists() or not group.is_frozen(), thawer
    zombie.wait()
    # A live owner's freeze is left alone by list.
    kiwi("attach", cid, "--", "true")
    group.freeze()
    me = open("/proc/self/stat").read()
    lease_path(kiwi, cid).write_text(
        json.dumps({"pid": os.getpid(), "start_time": int(me[me.rindex(")") + 2 :].split()[19])})
    )
    try:
        kiwi("list")
        assert group.is_frozen()
    finally:
        group.thaw()
        lease_path(kiwi, cid).unlink()


# --- 2. killed resizes -------------------------------------------------------------


def image_facts(kiwi, cid) -> dict:
    img = kiwi.root / "containers" / cid / "state.img"
    info = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    config = json.loads((kiwi.root / "containers" / cid / "config.json").read_text())
    return {
        "config": config["storage"],
        "file": img.stat().st_size,
        "fs": int(fields["Block count"]) * int(fields["Block size"]),
    }


def assert_storage_sound(kiwi, cid, context):
    img = kiwi.root / "containers" / cid / "state.img"
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, (context, fsck.stdout[-2000:])
    facts = image_facts(kiwi, cid)
    assert facts["config"] == facts["file"] == facts["fs"], (context, facts)
    assert not (kiwi.root / "containers" / cid / "resize.json").exists(), context
    assert kiwi.json("list", "containers")[0]["storage_limit"] == facts["config"], context


def test_killed_resize_is_finished_by_the_next_command(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "3G")
    # Data spread over the image, so a shrink must move blocks.
    kiwi.sh(
        cid,
        "for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/root/f$i bs=1M count=60 2>/dev/null; "
        "mkdir -p /srv/d$i; echo $i > /srv/d$i/small; done; rm /root/f2 /root/f4; "
        "sha256sum /root/f* /srv/d*/small > /root/sums; sync",
        timeout=300,
    )
    kiwi("stop", cid)
    took = 0.0  # how long a whole resize takes here and now
    for size in ("2G", "3G"):
        started = time.monotonic()
        kiwi("set", cid, "--storage", size, timeout=300)
        took = max(took, time.monotonic() - started)
    fractions = [0.3, 0.45, 0.55, 0.65, 0.75, 0.85, 0.5, 0.7]
    rng = random.Random(7)
    interrupted, before = 0, 3 * GIB
    for n in range(len(fractions) + 12):
        if n >= len(fractions):  # the load on the machine moves the window: go on until kills landed
            if interrupted >= 2:
                break
            fractions.append(rng.uniform(0.3, 0.9))
        size, after = ("2G", "4G", "2G", "3G")[n % 4], fractions[n] * took
        signal_midway(kiwi, ["set", cid, "--storage", size], after, signal.SIGKILL)
        journaled = (kiwi.root / "containers" / cid / "resize.json").exists()
        interrupted += journaled
        if n % 2 == 0:  # start at once: waits for the orphaned resize2fs, then finishes its work
            assert kiwi.sh(cid, "sha256sum -c -s /root/sums && echo intact", timeout=300).stdout == "intact\n"
            kiwi("stop", cid)
        else:  # or set again: the same size reconciles, finishing the interrupted change
            again = kiwi("set", cid, "--storage", size, timeout=300)
            assert "Traceback" not in again.stderr
        assert_storage_sound(kiwi, cid, (size, after))
        # Killed before its journal entry: nothing changed; after it: the change is complete.
        wanted = {int(size[0]) * GIB} if journaled or n % 2 else {before, int(size[0]) * GIB}
        before = image_facts(kiwi, cid)["config"]
        assert before in wanted, (size, after, before)
    assert interrupted >= 2, interrupted  # the kills really landed mid-resize
    assert kiwi.sh(cid, "sha256sum -c -s /root/sums && echo intact").stdout == "intact\n"


def test_set_to_the_current_size_reconciles_a_disagreeing_image(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "2G")
    kiwi.sh(cid, "echo kept > /root/kept")
    kiwi("stop", cid)
    # What an older kiwi could leave: config 4G, file and filesystem 2G.
    config_path = kiwi.root / "containers" / cid / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "storage": 4 * GIB}))
    kiwi("set", cid, "--storage", "4G")
    assert_storage_sound(kiwi, cid, "reconciled")
    assert image_facts(kiwi, cid)["fs"] == 4 * GIB
    assert kiwi.out("attach", cid, "--", "cat", "/root/kept") == "kept"
    kiwi("stop", cid)
    # A damaged journal entry is refused with one line, never guessed at.
    (kiwi.root / "containers" / cid / "resize.json").write_text('{"old": 1, "new": "x"}')
    refused = kiwi("attach", cid, "--", "true", check=False)
    assert (
        refused.returncode == 1 and refused.stderr.startswith("kiwi: ") and "Traceback" not in refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    kiwi("set", cid, "--storage", "3G")  # giving the size again replaces the damaged entry
    assert_storage_sound(kiwi, cid, "redone")
    assert kiwi.out("attach", cid, "--", "cat", "/root/kept") == "kept"


# --- 3. a full host disk ---------------------------------------------------------------


@pytest.fixture
def small_disk(kiwi, tmp_path):
    """The same Kiwi environment, its data folder on a 2600M tmpfs this test mounts."""
    from conftest import Kiwi, teardown_env

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2600m,mode=0755", "kiwi-test-disk", str(disk)], check=True
    )
    small = Kiwi({**kiwi.env, "KIWI_ROOT": str(disk / "kiwi-data")}, disk / "kiwi-data")
    try:
        yield small
    finally:
        try:
            teardown_env(small)
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(path) -> None:
    """Fill the filesystem holding path to the last byte."""
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M"], capture_output=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={path}.tail", "bs=4k"], capture_output=True)
    assert os.statvfs(path).f_bavail == 0


def one_error_line(done, *words):
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiwi: "), done.stderr
    assert all(w in lines[0] for w in words), done.stderr


def test_full_host_disk_loses_nothing_a_container_synced(small_disk, busybox_tar):
    kiwi = small_disk
    kiwi("import", "--name", "busybox", busybox_tar)
    cid = kiwi.create("busybox", "--storage", "1G")
    # The limit is reserved on the host at once: a second one does not fit and says so.
    one_error_line(kiwi("create", "busybox", "--storage", "2G", check=False), "reserving", "--sparse")
    assert [r["id"] for r in kiwi.json("list", "containers")] == [cid]
    assert not os.listdir(kiwi.root / ".tmp")
    kiwi("attach", cid, "--", "true")
    fill(kiwi.root.parent / "filler")
    # The host's disk is full, yet what the container writes and syncs is safe.
    written = kiwi.sh(
        cid,
        "dd if=/dev/urandom of=/root/precious bs=1M count=100 2>/dev/null && sync "
        "&& sha256sum /root/precious > /root/sum && sync && echo ok",
        timeout=300,
    )
    assert written.stdout == "ok\n", written.stderr
    # Filling the container hits its own limit, nothing else.
    full = kiwi.sh(cid, "dd if=/dev/zero of=/root/fill bs=1M", check=False, timeout=300)
    assert full.returncode != 0 and "No space left" in full.stderr, full.stderr
    kiwi.sh(cid, "rm /root/fill; sync")
    kiwi("stop", cid)
    fill(kiwi.root.parent / "filler-again")  # stop freed a few pages of runtime files
    # Kiwi's own small files do not fit on the full disk: one clear line, nothing half-made.
    one_error_line(kiwi("attach", cid, "--", "true", check=False), "disk is full")
    assert kiwi.json("list", "containers")[0]["status"] == "stopped"
    for filler in kiwi.root.parent.glob("filler*"):
        filler.unlink()
    assert kiwi.sh(cid, "sha256sum -c -s /root/sum && echo intact").stdout == "intact\n"
    assert kiwi.sh(cid, "dmesg >/dev/null 2>&1; touch /root/still-writable && echo rw").stdout == "rw\n"


def test_sparse_storage_is_marked_warned_and_gives_space_back(small_disk, busybox_tar):
    kiwi = small_disk
    kiwi("import", "--name", "busybox", busybox_tar)
    cid = kiwi.create("busybox", "--storage", "3G", "--sparse")  # more than the disk: opt-in only
    listed = kiwi("list")
    assert "sparse" in listed.stdout.splitlines()[1], listed.stdout
    assert "warning: sparse containers may still write" in listed.stderr, listed.stderr
    assert "Traceback" not in listed.stderr and kiwi.json("list", "containers")[0]["storage_sparse"] is True
    img = kiwi.root / "containers" / cid / "state.img"
    kiwi.sh(cid, "dd if=/dev/urandom of=/root/big bs=1M count=300 2>/dev/null; sync")
    grown = img.stat().st_blocks * 512
    assert grown > 300 * MIB
    kiwi.sh(cid, "rm /root/big; sync; sleep 1; sync")
    # Deleted inside = returned to the host (discard through the loop device).
    deadline = time.monotonic() + 30
    while img.stat().st_blocks * 512 > grown - 250 * MIB and time.monotonic() < deadline:
        time.sleep(0.5)
    assert img.stat().st_blocks * 512 <= grown - 250 * MIB, (grown, img.stat().st_blocks * 512)
    # --reserve claims the whole limit, or refuses in one line when the disk cannot hold it.
    # (3G on this 2.5G disk: refused before any reservation is tried)
    one_error_line(kiwi("set", cid, "--reserve", check=False), "more than the whole filesystem")
    kiwi("stop", cid)
    kiwi("set", cid, "--storage", "2G")
    kiwi("set", cid, "--reserve")
    assert img.stat().st_blocks * 512 >= 2 * GIB
    assert "warning" not in kiwi("list").stderr


# --- 5. leftovers ----------------------------------------------------------------------


@pytest.fixture
def kiwi2(tmp_path_factory):
    from conftest import fresh_kiwi

    yield from fresh_kiwi(tmp_path_factory)


def zombie_pid():
    """A child that has exited but is not reaped yet: (pid, its Popen to reap it later)."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while open(f"/proc/{child.pid}/stat").read().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return child.pid, child


def images_without_container(kiwi) -> set:
    used = {r["image"] for r in kiwi.json("list", "containers")}
    return {i["name"] for i in kiwi.json("list", "images")} - used


def test_killed_restore_leaves_no_image_behind(kiwi, kiwi2, busybox):
    cid = kiwi.create(busybox, "--storage", "2G")
    kiwi.sh(
        cid, "dd if=/dev/urandom of=/root/noise bs=1M count=150 2>/dev/null; echo hi > /root/hi", timeout=300
    )
    kiwi("stop", cid)
    archive = kiwi.out("snap", cid, "s1", timeout=300)
    # How long a whole restore takes here and now; then forget it (image included).
    started = time.monotonic()
    kiwi2.create(archive, "--storage", "2G")
    took = time.monotonic() - started
    for row in kiwi2.json("list", "containers"):
        kiwi2("delete", row["id"], "--yes")
    for image in (kiwi2.root / "images").iterdir():
        shutil.rmtree(image)
    orphans_seen = 0
    for fraction in (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97):
        after = fraction * took
        signal_midway(kiwi2, ["create", archive, "--storage", "2G"], after, signal.SIGKILL)
        orphans_seen += bool(images_without_container(kiwi2))
        kiwi2("cleanup")
        assert images_without_container(kiwi2) == set(), after
        assert not os.listdir(kiwi2.root / ".tmp")
        for row in kiwi2.json("list", "containers"):  # a kill after the container exists keeps it whole
            assert kiwi2.out("attach", row["id"], "--", "cat", "/root/hi") == "hi"
            kiwi2("stop", row["id"])
    assert orphans_seen >= 1, "no kill landed between the image and its container"
    # A restore killed after its image appeared is taken over by the next one: no second copy.
    for fraction in (0.6, 0.7, 0.8, 0.9):
        after = fraction * took
        signal_midway(kiwi2, ["create", archive, "--storage", "2G"], after, signal.SIGKILL)
        if images_without_container(kiwi2):
            break
    kiwi2.create(archive, "--storage", "2G")
    kiwi2("cleanup")
    assert len(kiwi2.json("list", "images")) == 1
    assert images_without_container(kiwi2) == set()


def test_killed_first_start_is_never_listed_as_stopped_with_processes(kiwi, busybox):
    for after in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7):
        cid = kiwi.create(busybox)
        signal_midway(kiwi, ["attach", cid, "--", "true"], after, signal.SIGKILL)
        group = cgroup_of(kiwi, cid)
        status = {r["id"]: r["status"] for r in kiwi.json("list", "containers")}[cid]
        if group.exists() and group.pids():
            assert status in ("running", "stale"), (after, status)
        if status == "stale":
            one_off = kiwi("attach", cid, "--", "echo", "fine")  # a start ends the leftovers first
            assert one_off.stdout == "fine\n"
        kiwi("cleanup")
        kiwi("stop", cid, "--time", "1")
        assert not group.exists() or not group.pids()
        assert {r["id"]: r["status"] for r in kiwi.json("list", "containers")}[cid] == "stopped"
        kiwi("delete", cid, "--yes")


def test_cleanup_counts_a_zombie_owner_as_dead(kiwi, busybox):
    kiwi.create(busybox)
    pid, child = zombie_pid()
    dead = kiwi.root / ".tmp" / f"create-{pid}-0123456789ab"
    alive = kiwi.root / ".tmp" / f"create-{os.getpid()}-0123456789ab"
    dead.mkdir()
    alive.mkdir()
    try:
        kiwi("cleanup")
        assert not dead.exists()  # its writer is a zombie: gone
        assert alive.exists()  # its writer (this test) lives
    finally:
        child.wait()
        alive.rmdir()


def test_storage_column_matches_the_filesystem_after_resizes(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "3G")
    kiwi.sh(cid, "dd if=/dev/urandom of=/root/f bs=1M count=120 2>/dev/null; sync")
    for size in ("2G", "4G", "3G"):
        kiwi("stop", cid)
        kiwi("set", cid, "--storage", size)
        stopped = kiwi.json("list", "containers")[0]["storage_used"]
        kiwi("attach", cid, "--", "true")
        running = kiwi.json("list", "containers")[0]["storage_used"]
        df_used = int(kiwi.sh(cid, "df -k / | tail -1 | awk '{print $3}'").stdout) * 1024
        assert abs(stopped - df_used) < 2 * MIB and abs(running - df_used) < 2 * MIB, (
            size,
            stopped,
            running,
            df_used,
        )


def kiwi_links_and_tables(bridge: str, veth: str) -> list[str]:
    """What of the network a stop must release: the bridge, its nft tables, the veth."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    left = [name for name in (bridge, veth) if name in names]
    return left + [line for line in tables.splitlines() if line.endswith(f"kiwi-{bridge}")]


def test_killed_stop_leaves_nothing_cleanup_does_not_remove(kiwi, busybox):
    """An idle container's last stop removes the bridge and NAT while its init exits
    (issue 20): killed at any point of it, nothing stays behind once cleanup ran."""
    from test_runtime import cgroup_dirs_of, loop_devices_of

    bridge = kiwi.env["KIWI_BRIDGE"]
    cid = kiwi.create(busybox)
    stopped_by_kill = 0
    for after in (0.02, 0.05, 0.08, 0.11, 0.14, 0.17, 0.2, 0.25, 0.3, 0.4):
        kiwi("attach", cid, "--", "true")
        record = json.loads((kiwi.root / "mounts" / cid / "runtime.json").read_text())
        veth, init = record["veth"], Path(f"/proc/{record['init_pid']}")
        signal_midway(kiwi, ["stop", cid], after, signal.SIGKILL)
        deadline = time.monotonic() + 10  # a stop killed after its SIGTERM: the init exits on its own
        while init.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        kiwi("cleanup")
        if kiwi.json("list", "containers")[0]["status"] == "stopped":
            stopped_by_kill += 1
        else:
            kiwi("stop", cid, "--time", "1")  # killed before its SIGTERM
            kiwi("cleanup")
        assert kiwi_links_and_tables(bridge, veth) == [], after
        assert cgroup_dirs_of(kiwi) == [], after
        assert loop_devices_of(kiwi.root) == [], after
    assert stopped_by_kill >= 2, stopped_by_kill  # kills landed after the SIGTERM
    assert kiwi.sh(cid, "echo again").stdout == "again\n"
