"""Issue 17 item 6: kiwi cp between the host and a container, running or stopped,
through the container's view only."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest


@pytest.fixture(params=["running", "stopped"])
def box(request, kiwi, busybox) -> str:
    cid = kiwi.create("busybox", "--name", "cpbox", "--network", "host")
    kiwi.sh(
        cid,
        "mkdir -p /data/sub/deep && echo hello > /data/a.txt && chmod 640 /data/a.txt"
        " && chown 1234:5678 /data/a.txt && ln -s a.txt /data/link && ln -s /etc/passwd /data/abs"
        " && echo deep > /data/sub/deep/f && chmod 4755 /data/sub/deep/f"
        " && mkdir /spec && echo ok > /spec/a && mkfifo /spec/fifo",
    )
    if request.param == "stopped":
        kiwi("stop", cid, "--time", "1")
    return cid


def test_copy_out_keeps_modes_ids_and_links(kiwi, box, tmp_path):
    out = kiwi.out("cp", "--archive", f"{box}:/data", tmp_path)
    assert out.startswith("copied 7 file(s)")
    data = tmp_path / "data"
    a = data / "a.txt"
    assert a.read_text() == "hello\n"
    st = os.stat(a)
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.readlink(data / "link") == "a.txt" and os.readlink(data / "abs") == "/etc/passwd"
    # A setuid file of the container is never setuid on the host, even with --archive.
    assert stat.S_IMODE(os.stat(data / "sub" / "deep" / "f").st_mode) == 0o755
    # A single file, to a new name, and into an existing folder.
    kiwi("cp", "cpbox:/data/a.txt", tmp_path / "renamed")
    assert (tmp_path / "renamed").read_text() == "hello\n"
    kiwi("cp", "cpbox:/data/link", tmp_path / "data" / "sub")  # the link resolves inside: a.txt
    assert (data / "sub" / "link").read_text() == "hello\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".kiwi-cp")]


@pytest.fixture(params=["unprivileged", "privileged"])
def owned(request, kiwi, busybox) -> str:
    """A running container whose root gave a folder to uid 1000, world-writable."""
    privileged = ("--privileged",) if request.param == "privileged" else ()
    cid = kiwi.create("busybox", "--network", "host", *privileged)
    kiwi.sh(
        cid,
        "mkdir -p /data/sticky && echo hi > /data/f && chown -R 1000:1000 /data && chmod 777 /data"
        " && chmod 4777 /data/f && chmod 1777 /data/sticky && touch -d '2001-02-03 04:05:06' /data/f",
    )
    return cid


def run_with_umask(kiwi, umask: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*kiwi.cmd, *map(str, args)], env=kiwi.env, umask=umask, capture_output=True, text=True, timeout=120
    )


def owner_mode(path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize("state", ["running", "stopped"])
def test_copy_out_is_the_callers_masked_by_the_umask(kiwi, owned, tmp_path, state):
    """Root inside made /data uid 1000's and world-writable: copied out by the admin, it is
    the admin's, with the admin's umask (as GNU cp without -p and docker cp), never a host
    folder that uid 1000 owns or anyone writes into. --archive keeps the ids and modes."""
    if state == "stopped":
        kiwi("stop", owned, "--time", "1")
    me = (os.getuid(), os.getgid())
    done = run_with_umask(kiwi, 0o022, "cp", f"{owned}:/data", tmp_path / "plain")
    assert done.returncode == 0, done.stderr
    assert owner_mode(tmp_path / "plain") == (*me, 0o755)
    assert owner_mode(tmp_path / "plain" / "f") == (*me, 0o755)  # no setuid
    assert owner_mode(tmp_path / "plain" / "sticky") == (*me, 0o1755)
    done = run_with_umask(kiwi, 0o077, "cp", f"{owned}:/data/f", tmp_path / "private")
    assert done.returncode == 0, done.stderr
    assert owner_mode(tmp_path / "private") == (*me, 0o700)
    done = run_with_umask(kiwi, 0o077, "cp", "-a", f"{owned}:/data", tmp_path / "archive")
    assert done.returncode == 0, done.stderr
    assert owner_mode(tmp_path / "archive") == (1000, 1000, 0o777)
    assert owner_mode(tmp_path / "archive" / "f") == (1000, 1000, 0o777)
    assert owner_mode(tmp_path / "archive" / "sticky") == (1000, 1000, 0o1777)
    for copy in ("plain", "archive"):  # times kept either way
        assert os.stat(tmp_path / copy / "f").st_mtime == 981173106, copy


def test_copy_in_is_the_containers_root(kiwi, owned, tmp_path):
    """In, the copy is owned by the container's root as it sees it (an unprivileged one's
    shifted id on the host), modes kept but setuid; -a keeps the host's ids and modes."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "tool").write_text("x")
    os.chown(src / "tool", 1000, 1000)
    os.chmod(src / "tool", 0o4750)
    kiwi("cp", src, f"{owned}:/plain")
    listing = kiwi.out("attach", owned, "--", "stat", "-c", "%u %g %a", "/plain/tool", "/plain")
    assert listing.splitlines() == ["0 0 750", "0 0 755"]
    kiwi("cp", "-a", src, f"{owned}:/kept")
    assert kiwi.out("attach", owned, "--", "stat", "-c", "%u %g %a", "/kept/tool") == "1000 1000 4750"
    kiwi("stop", owned, "--time", "1")  # and so the stopped one: its state holds its own ids
    kiwi("cp", src / "tool", f"{owned}:/plain/again")
    kiwi("cp", "-a", src / "tool", f"{owned}:/kept/again")
    listing = kiwi.out("attach", owned, "--", "stat", "-c", "%u %g %a", "/plain/again", "/kept/again")
    assert listing.splitlines() == ["0 0 750", "1000 1000 4750"]


def test_copy_in_and_back(kiwi, box, tmp_path):
    src = tmp_path / "tree"
    (src / "x" / "y").mkdir(parents=True)
    (src / "x" / "y" / "z.txt").write_text("zed")
    os.chmod(src / "x" / "y" / "z.txt", 0o604)
    os.symlink("../y/z.txt", src / "x" / "rel")
    out = kiwi.out("cp", src, f"{box}:/data/")
    assert out.startswith("copied 5 file(s)")
    kiwi("cp", tmp_path / "tree" / "x" / "y" / "z.txt", f"{box}:/data/renamed.txt")
    kiwi("start", box)
    listing = kiwi.out(
        "attach",
        box,
        "--",
        "sh",
        "-c",
        "cat /data/tree/x/y/z.txt /data/renamed.txt; echo; stat -c '%a %u' /data/tree/x/y/z.txt;"
        " readlink /data/tree/x/rel",
    )
    assert listing.splitlines() == ["zedzed", "604 0", "../y/z.txt"]


def test_special_files_and_missing_paths_are_one_line(kiwi, box, tmp_path):
    done = kiwi("cp", f"{box}:/spec/fifo", tmp_path / "fifo-copy", check=False)
    assert (
        done.returncode == 1
        and done.stderr
        == f"kiwi: {box}:/spec/fifo is a FIFO; kiwi cp copies only files, folders and symlinks\n"
    )
    done = kiwi("cp", f"{box}:/no/such", tmp_path, check=False)
    assert done.returncode == 1 and "no such file or folder in the container" in done.stderr
    os.mkfifo(tmp_path / "fifo")
    done = kiwi("cp", tmp_path / "fifo", f"{box}:/data/", check=False)
    assert done.returncode == 1 and "is a FIFO" in done.stderr
    for args in ((tmp_path, tmp_path), (f"{box}:/a", f"{box}:/b")):
        done = kiwi("cp", *args, check=False)
        assert done.returncode == 1 and "between a container and the host" in done.stderr
    # A tree holding a FIFO is refused whole: nothing half-copied is left.
    done = kiwi("cp", f"{box}:/spec", tmp_path / "speccopy", check=False)
    assert done.returncode == 1 and "/spec/fifo is a FIFO" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["fifo"]


def test_device_nodes_are_refused(kiwi, box, tmp_path):
    kiwi("start", box)
    done = kiwi("cp", f"{box}:/dev/null", tmp_path / "null", check=False)
    assert done.returncode == 1 and "/dev/null is a device" in done.stderr and done.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


def in_box(kiwi, box, script) -> None:
    """Change the container's files, leaving it running or stopped as it was."""
    was_running = any(r["id"] == box and r["status"] == "running" for r in kiwi.json("list"))
    kiwi.sh(box, script)
    if not was_running:
        kiwi("stop", box, "--time", "1")


def test_container_links_never_reach_the_host(kiwi, box, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("HOST ONLY")
    victim = tmp_path / "victim"
    victim.mkdir()
    in_box(
        kiwi,
        box,
        f"ln -s {secret} /data/evil; ln -s ../../../../../../..{secret} /data/evil2;"
        f" ln -s /proc/self/root{secret} /data/evil3; ln -s {victim} /data/outdir;"
        " ln -s /etc/shadow /data/shadow; echo CONTAINER-SHADOW > /etc/shadow",
    )
    for name in ("evil", "evil2", "evil3"):
        done = kiwi("cp", f"{box}:/data/{name}", tmp_path / f"got-{name}", check=False)
        assert done.returncode == 1, name
        assert done.stderr.count("\n") == 1
        assert not (tmp_path / f"got-{name}").exists()
    # /etc/shadow of the container, not the host's.
    kiwi("cp", f"{box}:/data/shadow", tmp_path / "shadow")
    assert (tmp_path / "shadow").read_text() == "CONTAINER-SHADOW\n"
    # Copying in through a container link to a host folder stays inside the container.
    (tmp_path / "payload").write_text("in")
    kiwi("cp", tmp_path / "payload", f"{box}:/data/outdir/")
    assert os.listdir(victim) == []
    assert kiwi.out("attach", box, "--", "cat", "/data/outdir") == "in"


def test_swapping_a_folder_for_a_link_during_copies(kiwi, busybox, tmp_path):
    """The container swaps a folder for a link to a host folder in a tight loop while
    copies run both ways: nothing of the host is ever read or written."""
    cid = kiwi.create("busybox", "--network", "host")
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    (host_dir / "secret").write_text("HOSTDATA")
    kiwi.sh(
        cid,
        "mkdir -p /race/a/d/sub && echo inside > /race/a/d/sub/f && "
        f"(setsid sh -c 'while :; do mv /race/a/d /race/keep; ln -s {host_dir} /race/a/d;"
        " rm /race/a/d; mv /race/keep /race/a/d; done' </dev/null >/dev/null 2>&1 &)",
    )
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "p").write_text("x")
    copies = tmp_path / "copies"
    copies.mkdir()
    for i in range(15):
        kiwi("cp", f"{cid}:/race/a", copies / f"out{i}", check=False)
        kiwi("cp", f"{cid}:/race/a/d/sub", copies / f"sub{i}", check=False)
        done = kiwi("cp", payload, f"{cid}:/race/a/d/", check=False)
        assert done.returncode in (0, 1) and done.stderr.count("\n") <= 1
    found = [Path(d) / f for d, _, files in os.walk(copies) for f in files]
    assert found  # some copies got through
    assert all(p.read_text() != "HOSTDATA" for p in found if not p.is_symlink())
    assert sorted(os.listdir(host_dir)) == ["secret"]
    kiwi("stop", cid, "--time", "1")


def test_stopped_and_mounted_is_refused(kiwi, busybox, tmp_path):
    cid = kiwi.create("busybox")
    target = tmp_path / "mnt"
    target.mkdir()
    kiwi("mount", cid, target)
    done = kiwi("cp", f"{cid}:/etc/passwd", tmp_path / "p", check=False)
    assert done.returncode == 1 and f"is mounted at {target}" in done.stderr
    kiwi("unmount", cid)
    kiwi("cp", f"{cid}:/etc/passwd", tmp_path / "p")
    assert (tmp_path / "p").read_text().startswith("root:")


def test_full_container_storage_is_one_line_and_leaves_nothing(kiwi, busybox, tmp_path):
    cid = kiwi.create("busybox", "--network", "host", "--sparse")
    big = tmp_path / "big"
    with open(big, "wb") as f:  # more than the 1G limit, in data (a copy keeps holes as holes)
        for _ in range(1100):
            f.write(b"\1" * (1 << 20))
    done = kiwi("cp", big, f"{cid}:/root/", check=False, timeout=300)
    assert done.returncode == 1
    assert done.stderr.startswith("kiwi: the container's storage is full; nothing was copied")
    assert kiwi.out("attach", cid, "--", "ls", "-A", "/root") == ""


def interrupted_switch_to_host(kiwi, cid: str, tmp_path) -> None:
    """What a `set --storage host` killed after copying the state out and before removing
    state.img leaves (storage_ops.image_to_folder): both, and the journal of the change."""
    cdir = kiwi.root / "containers" / cid
    mnt = tmp_path / "state-mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(cdir / "state.img"), str(mnt)], check=True)
    try:
        subprocess.run(["cp", "-a", "--", str(mnt), str(cdir / "state")], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    shutil.rmtree(cdir / "state" / "lost+found")
    size = json.loads((cdir / "config.json").read_text())["storage"]
    (cdir / "resize.json").write_text(json.dumps({"old": size, "new": None}))


def test_a_copy_into_a_stopped_container_finishes_an_interrupted_storage_change(kiwi, busybox, tmp_path):
    """Else the copy went into state.img, which the next start's finishing step removed."""
    cid = kiwi.create("busybox", "--network", "host")
    kiwi.sh(cid, "echo before > /root/before")
    kiwi("stop", cid, "--time", "1")
    interrupted_switch_to_host(kiwi, cid, tmp_path)
    (tmp_path / "new").write_text("copied\n")
    kiwi("cp", tmp_path / "new", f"{cid}:/root/new")
    assert kiwi.out("attach", cid, "--", "cat", "/root/before", "/root/new") == "before\ncopied"
    assert not (kiwi.root / "containers" / cid / "resize.json").exists()
    assert kiwi.json("list", "containers")[0]["storage_limit"] is None


def test_a_container_a_killed_start_left_running_is_refused(kiwi, busybox, tmp_path):
    """A start SIGKILLed as it renames its record into place leaves the container's init
    running, its overlay mounted ("stale"): cp and mount must not mount a second overlay
    on the same upper folder (the kernel: undefined behaviour). One line, until cleanup."""
    cid = kiwi.create("busybox", "--network", "host")
    trace = tmp_path / "trace"
    kill_at_rename = [
        "strace",
        "-qq",
        "-o",
        str(trace),
        "-e",
        "trace=rename",
        "-e",
        "inject=rename:signal=KILL:when=1",
    ]
    subprocess.run([*kill_at_rename, *kiwi.cmd, "start", cid], env=kiwi.env, capture_output=True, timeout=120)
    assert "runtime.json" in trace.read_text().splitlines()[-2]  # the kill hit the record's rename
    assert kiwi.json("list", "containers")[0]["status"] == "stale"
    (tmp_path / "f").write_text("x\n")
    (tmp_path / "mnt").mkdir()
    refusal = (
        f"kiwi: container {cid} has processes left by a killed start; run kiwi cleanup first (or start it)\n"
    )
    for command in (["cp", tmp_path / "f", f"{cid}:/root/f"], ["cp", f"{cid}:/etc/passwd", tmp_path / "p"]):
        done = kiwi(*command, check=False)
        assert (done.returncode, done.stderr) == (1, refusal)
    done = kiwi("mount", cid, tmp_path / "mnt", check=False)
    assert (done.returncode, done.stderr) == (1, refusal)
    assert not os.listdir(tmp_path / "mnt") and kiwi.json("list", "containers")[0]["mount"] is None
    kiwi("cleanup")
    kiwi("cp", tmp_path / "f", f"{cid}:/root/f")
    assert kiwi.out("attach", cid, "--", "cat", "/root/f") == "x"


def read_fifo(path, into: list) -> threading.Thread:
    def read():
        with open(path, "rb") as f:
            into.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_an_existing_fifo_or_stdout_is_written_into_a_symlink_replaced(kiwi, box, tmp_path):
    """As GNU cp: a file copied out onto a FIFO is written into it, never renamed over it,
    and /dev/stdout (a symlink to /proc/self/fd/1) is kiwi's stdout. Any other host
    symlink is replaced, never followed: a folder copied out brings the container's
    links, and a later copy into it must not write through them on the host."""
    os.mkfifo(tmp_path / "fifo")
    got: list[bytes] = []
    reader = read_fifo(tmp_path / "fifo", got)
    done = kiwi("cp", f"{box}:/data/a.txt", tmp_path / "fifo")
    reader.join(30)
    assert got == [b"hello\n"]
    assert done.stdout == "" and done.stderr == f"copied 1 file(s), 6B, to {tmp_path / 'fifo'}\n"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)

    done = kiwi("cp", f"{box}:/data/a.txt", "/dev/stdout")
    assert done.stdout == "hello\n" and done.stderr == "copied 1 file(s), 6B, to /dev/stdout\n"
    assert os.readlink("/dev/stdout") == "/proc/self/fd/1"

    # The container's links, copied out with a folder: a later copy into it replaces them.
    victim = tmp_path / "host-file"
    victim.write_text("HOST")
    in_box(kiwi, box, f"ln -s {victim} /data/sub/to-host && ln -s {tmp_path / 'fifo'} /data/sub/to-fifo")
    kiwi("cp", f"{box}:/data/sub", tmp_path / "copied")
    for name in ("to-host", "to-fifo"):
        kiwi("cp", f"{box}:/data/a.txt", tmp_path / "copied" / name)
        assert (tmp_path / "copied" / name).read_text() == "hello\n"
        assert not (tmp_path / "copied" / name).is_symlink()
    assert victim.read_text() == "HOST"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    # A folder onto a FIFO is refused, the FIFO left as it was.
    done = kiwi("cp", f"{box}:/data/sub", tmp_path / "fifo", check=False)
    assert done.returncode == 1 and "as a file where a folder goes" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["copied", "fifo", "host-file"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_a_terminal_is_refused(kiwi, box, terminals):
    """/dev/stdout a terminal: a container's file is not written to it (its escape
    sequences would act on the admin's terminal)."""
    child = terminals(kiwi.cmd[0], [*kiwi.cmd[1:], "cp", f"{box}:/data/a.txt", "/dev/stdout"], kiwi.env)
    child.expect("kiwi: /dev/stdout is a terminal; kiwi cp does not write a container's file to it")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 1 and "hello" not in child.before
    assert os.readlink("/dev/stdout") == "/proc/self/fd/1"


def pexpect_eof():
    import pexpect

    return pexpect.EOF


def test_cleanup_removes_what_a_killed_copy_left_and_only_that(kiwi, box, tmp_path):
    """A cp killed at its rename leaves its .kiwi-cp-* staging entry in the host folder:
    `kiwi cleanup` removes it, as the copy recorded it, and leaves entries merely named
    so: the container's own (brought out by a folder it copied) and the admin's."""
    in_box(kiwi, box, "mkdir /data/.kiwi-cp-0badc0de && echo theirs > /data/.kiwi-cp-0badc0de/f")
    dest = tmp_path / "dest"
    dest.mkdir()
    kiwi("cp", f"{box}:/data", dest)
    (dest / ".kiwi-cp-cafef00d").write_text("mine")
    trace = tmp_path / "trace"
    renames = "rename,renameat,renameat2"
    kill_at_rename = ["strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={renames}"]
    kill_at_rename += ["-e", f"inject={renames}:signal=KILL:when=1"]
    subprocess.run(
        [*kill_at_rename, *kiwi.cmd, "cp", f"{box}:/data/sub", dest / "sub"],
        env=kiwi.env,
        capture_output=True,
        timeout=120,
    )
    assert ".kiwi-cp-" in trace.read_text()  # killed at the copy's own rename
    [left] = [n for n in os.listdir(dest) if n not in ("data", ".kiwi-cp-cafef00d")]
    assert left.startswith(".kiwi-cp-") and (dest / left / "deep" / "f").read_text() == "deep\n"
    assert f"removed half-copied {dest / left}" in kiwi.out("cleanup").splitlines()
    assert sorted(os.listdir(dest)) == [".kiwi-cp-cafef00d", "data"]
    assert (dest / "data" / ".kiwi-cp-0badc0de" / "f").read_text() == "theirs\n"
    assert not [n for n in os.listdir(kiwi.root / ".tmp") if n.startswith("cpstage-")]
    kiwi("cp", f"{box}:/data/sub", dest / "sub")  # an ordinary copy leaves no record
    assert not [n for n in os.listdir(kiwi.root / ".tmp") if n.startswith("cpstage-")]


def test_a_container_link_saying_stdout_is_replaced_not_written_through(kiwi, box, tmp_path):
    """Red team: a link root inside made saying /proc/self/fd/1 (or /dev/fd/2), copied out
    with a folder, is not the caller's stdout: a later copy onto it replaces it. The old
    build wrote the file into kiwi's stdout or stderr (an admin's log, a pipe), a place the
    admin never named; only the host's own /dev/stdout, /dev/stderr and /dev/fd/N are."""
    in_box(
        kiwi,
        box,
        "mkdir /planted && ln -s /proc/self/fd/1 /planted/out && ln -s /dev/fd/2 /planted/err"
        " && ln -s /proc/self/fd/1 /planted/1",
    )
    kiwi("cp", f"{box}:/planted", tmp_path / "copied")
    for name in ("out", "err", "1"):
        done = kiwi("cp", f"{box}:/data/a.txt", tmp_path / "copied" / name)
        assert "hello" not in done.stdout + done.stderr, name
        assert (tmp_path / "copied" / name).read_text() == "hello\n", name
        assert not (tmp_path / "copied" / name).is_symlink(), name
