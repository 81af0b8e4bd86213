"""Issue 12 item 9: nothing reaches the user as a traceback or raw exception text.

Each case runs the frozen binary and asserts: the exit code, exactly one stderr
line starting with `kiwi: `, no traceback or exception class name, and nothing
half-written left behind (no container, image, staging or partial archive).
"""

from __future__ import annotations

import io
import os
import re
import resource
import secrets
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import Kiwi, make_env, teardown_env

EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Interrupt|Exit)\b|Traceback|\[Errno")
DEEP = 1200


def assert_one_line(done, fragment: str, code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("kiwi: ") and not line.startswith("kiwi: error"), line
    assert not EXCEPTION_NAME.search(line), line
    assert fragment in line, line
    return line


def state_of(kiwi: Kiwi) -> dict:
    """What a refused command must not change: records, images, staging, archives."""

    def names(folder):
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    return {
        "containers": names(kiwi.root / "containers"),
        "images": names(kiwi.root / "images"),
        "tmp": names(kiwi.root / ".tmp"),
        "top": [n for n in names(kiwi.root) if n.endswith(".kiwi") or n.startswith(".kiwi-partial")],
    }


def run_with_soft_nofile(kiwi: Kiwi, *args, soft: int = 1024) -> subprocess.CompletedProcess:
    """The usual desktop soft limit, whatever this test runner has."""

    def lower():
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))

    return subprocess.run(
        kiwi.cmd + [str(a) for a in args],
        env=kiwi.env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lower,
    )


def variant_tar(base_tar: Path, out: Path, replace: dict) -> Path:
    """The busybox rootfs with the top entries in `replace` swapped: path -> ("symlink", target)
    | ("file", b"data") | ("dir",) | ("fifo",) | ("chr",)."""

    def norm(name):
        return name[2:] if name.startswith("./") else name

    with tarfile.open(base_tar) as src, tarfile.open(out, "w") as dst:
        for m in src:
            if any(norm(m.name) == k or norm(m.name).startswith(k + "/") for k in replace):
                continue
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        for path, (kind, *rest) in replace.items():
            info = tarfile.TarInfo(path)
            data = None
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "file":
                info.size, data = len(rest[0]), io.BytesIO(rest[0])
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "fifo":
                info.type, info.mode, info.uid, info.gid = tarfile.FIFOTYPE, 0o640, 12, 34
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 1  # /dev/mem
            dst.addfile(info, data)
    return out


# ------------------------------------------------------------- sizes and names


def test_sizes_have_bounds_and_negative_sizes_a_message(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "c")
    before = state_of(kiwi)
    assert_one_line(kiwi("set", "c", "--storage", "999999999T", check=False), "too large; the most is 16T")
    assert_one_line(kiwi("set", "c", "--storage", "9" * 400 + "T", check=False), "too large")
    assert_one_line(kiwi("create", busybox, "--storage", "100T", check=False), "the most is 16T")
    assert_one_line(kiwi("create", busybox, "--storage", "0G", check=False), "more than zero")
    assert_one_line(kiwi("set", "c", "--memory", "-5M", check=False), "cannot be negative")
    assert_one_line(kiwi("set", "c", "--memory=-5M", check=False), "cannot be negative")
    assert_one_line(kiwi("set", "c", "--storage", "-1G", check=False), "cannot be negative")
    assert_one_line(kiwi("set", "c", "--memory", "99999999999999T", check=False), "too large")
    assert state_of(kiwi) == before
    assert kiwi.json("list", "containers")[0]["storage_limit"] == 1 << 30
    assert kiwi.json("list", "containers")[0]["memory"] is None
    assert kiwi.json("list", "containers")[0]["id"] == cid


def test_a_name_that_looks_like_an_id_is_refused(kiwi, busybox, tmp_path):
    before = state_of(kiwi)
    assert_one_line(
        kiwi("create", busybox, "--name", "0123456789ab", check=False), "look like a container id"
    )
    assert state_of(kiwi) == before
    # An archive whose settings carry such a name, and --name on a restore.
    from kiwi import archive

    upper = tmp_path / "upper"
    upper.mkdir()
    path = tmp_path / "hostile.kiwi"
    archive.write_archive(
        path,
        "container",
        {"name": "abcdef012345"},
        {"name": "busybox"},
        kiwi.root / "images" / busybox / "rootfs",
        upper_dir=upper,
    )
    assert_one_line(kiwi("create", path, check=False), "look like a container id")
    assert_one_line(kiwi("create", path, "--name", "0123456789ab", check=False), "look like a container id")
    assert state_of(kiwi) == before


# ------------------------------------------------------------- the data folder


def test_a_bad_data_folder_is_one_line(kiwi, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for root, fragment in (
        ("/dev/null", "is not a folder"),
        (str(a_file), "is not a folder"),
        (f"{a_file}/sub", "Not a directory"),
        ("relative/data", "absolute path"),
    ):
        for args in (("list",), ("create", "busybox"), ("cleanup",)):
            assert_one_line(kiwi(*args, check=False, env={"KIWI_ROOT": root}), fragment)
    assert a_file.read_text() == "x" and not Path("relative").exists()


def test_a_read_only_data_folder_is_one_line(kiwi, busybox_tar, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        env = {"KIWI_ROOT": str(ro / "kiwi-data")}
        assert_one_line(kiwi("import", "--name", "b", busybox_tar, check=False, env=env), "read-only")
        assert kiwi("list", check=False, env=env).returncode == 0
        assert os.listdir(ro) == []
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_permission_denied_says_root_only_to_others(kiwi):
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="kiwi-perm-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        (top / "kiwi-data" / "containers").mkdir(parents=True, mode=0o700)
        os.chmod(top / "kiwi-data", 0o755)
        env = {**kiwi.env, "KIWI_ROOT": str(top / "kiwi-data")}
        done = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *kiwi.cmd, "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # The data folder is root's alone (0700 inside): one line that says so.
        line = assert_one_line(done, "readable by root only")
        assert "sudo" in line and str(top / "kiwi-data") in line
        # As root the same folder is readable: no advice to become root.
        assert kiwi("list", env={"KIWI_ROOT": str(top / "kiwi-data")}).stderr == ""
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)


def test_debug_shows_the_traceback(kiwi):
    quiet = kiwi("list", check=False, env={"KIWI_ROOT": "/dev/null"})
    assert_one_line(quiet, "not a folder")
    loud = kiwi("list", check=False, env={"KIWI_ROOT": "/dev/null", "KIWI_DEBUG": "1"})
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.strip()


# ------------------------------------------------------------- attach


def test_attach_errors_are_one_plain_line(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "c")
    # Empty command: refused before anything starts, 127 as sh and env say for "not found".
    assert_one_line(kiwi("attach", "c", "--", "", check=False), "command to run is empty", code=127)
    assert kiwi.json("list", "containers")[0]["status"] == "stopped"
    # Not found: 127, as Docker, Podman and sh say it.
    line = assert_one_line(kiwi("attach", "c", "--", "/no/such/tool", check=False), "/no/such/tool", code=127)
    assert "not found" in line
    assert kiwi.json("list", "containers")[0]["status"] == "running"
    kiwi("stop", cid, "--time", "2")


# ------------------------------------------------------------- hostile images

# Each image combines several hostile mountpoints (each is handled on its own).
HOSTILE_ROOTS = {
    "out-and-dangling": {
        "dev": ("symlink", "/nonexistent"),
        "proc": ("symlink", "/etc"),
        "tmp": ("symlink", "/"),
        "run": ("file", b"x"),
    },
    "up-and-out": {
        "dev": ("symlink", "../../.."),
        "sys": ("symlink", "../../../../../sys"),
        "etc": ("symlink", "/"),
    },
    "dev-file": {"dev": ("file", b"not a folder\n")},
    "dev-inside": {"dev": ("dir",), "dev/pts": ("file", b"x"), "dev/shm": ("symlink", "/etc")},
}

CHECK_MOUNTS = """set -e
for d in /dev /proc /sys /run /tmp /dev/pts /dev/shm; do test -d $d && test ! -L $d; done
grep -q '^overlay / overlay' /proc/mounts
for m in '/dev tmpfs' '/proc proc' '/sys sysfs' '/run tmpfs' '/tmp tmpfs' '/dev/pts devpts' '/dev/shm tmpfs'; do
  grep -q " $m " /proc/mounts
done
test -c /dev/null && test -e /proc/self/status && test -x /bin/sh
echo fine
"""


def test_hostile_mountpoints_are_replaced_never_followed(kiwi, busybox_tar, tmp_path):
    host_before = sorted(os.listdir("/"))
    for label, replace in HOSTILE_ROOTS.items():
        image = label.replace("-", "")[:30]
        kiwi("import", "--name", image, variant_tar(busybox_tar, tmp_path / f"{label}.tar", replace))
        cid = kiwi.create(image)
        done = kiwi("attach", cid, "--", "sh", "-c", CHECK_MOUNTS, check=False)
        assert done.returncode == 0 and done.stdout.strip() == "fine", (label, done.stdout, done.stderr)
        kiwi("stop", cid, "--time", "2")
        # A second start finds the replaced folders in the container's own layer.
        assert kiwi.out("attach", cid, "--", "sh", "-c", CHECK_MOUNTS) == "fine", label
        kiwi("stop", cid, "--time", "2")
    assert sorted(os.listdir("/")) == host_before and not os.path.lexists("/nonexistent")


# ------------------------------------------------------------- FIFOs and deep trees

FIFO_STAT = "stat -c '%F %a %u %g' /srv/pipe"


def test_fifos_survive_snap_restore_commit_and_import(kiwi, busybox, busybox_tar, tmp_path):
    cid = kiwi.create(busybox, "--name", "f")
    kiwi.sh(cid, "set -e; mkdir -p /srv; mkfifo -m 640 /srv/pipe; chown 12:34 /srv/pipe")
    expected = "fifo 640 12 34"
    assert kiwi.out("attach", cid, "--", "sh", "-c", FIFO_STAT) == expected
    snap = kiwi.out("snap", cid, "one").splitlines()[-1]
    restored = kiwi.create(snap, "--name", "r")
    assert kiwi.out("attach", restored, "--", "sh", "-c", FIFO_STAT) == expected
    kiwi("commit", restored, "withfifo")
    fifo = kiwi.root / "images" / "withfifo" / "rootfs" / "srv" / "pipe"
    st = os.lstat(fifo)
    assert (
        stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (12, 34)
    )
    # Import: the fifo comes in, a device node stays out.
    tar = variant_tar(
        busybox_tar, tmp_path / "fifo.tar", {"srv": ("dir",), "srv/pipe": ("fifo",), "srv/mem": ("chr",)}
    )
    kiwi("import", "--name", "imported", tar)
    rootfs = kiwi.root / "images" / "imported" / "rootfs" / "srv"
    assert sorted(os.listdir(rootfs)) == ["pipe"]
    st = os.lstat(rootfs / "pipe")
    assert (
        stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (12, 34)
    )
    for c in (cid, restored):
        kiwi("stop", c, "--time", "2")


DEEP_TREE = f"""set -e
cd /root
i=0
while [ $i -lt {DEEP} ]; do mkdir d; cd d; i=$((i+1)); done
echo bottom > leaf
mkfifo pipe
"""
DEEP_CHECK = f"""cd /root
i=0
while [ $i -lt {DEEP} ]; do cd d || exit 1; i=$((i+1)); done
cat leaf
stat -c %F pipe
"""


def test_a_1200_level_tree_round_trips(kiwi, busybox):
    cid = kiwi.create(busybox, "--name", "deep")
    kiwi.sh(cid, DEEP_TREE)
    expected = "bottom\nfifo"
    # Running (frozen while read) and with the usual soft limit of 1024 open files.
    done = run_with_soft_nofile(kiwi, "snap", cid, "deep")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    restored = kiwi.create(done.stdout.splitlines()[-1])
    assert kiwi.out("attach", restored, "--", "sh", "-c", DEEP_CHECK) == expected
    kiwi("stop", restored, "--time", "2")
    done = run_with_soft_nofile(kiwi, "commit", restored, "deepimage")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    again = kiwi.create("deepimage")
    assert kiwi.out("attach", again, "--", "sh", "-c", DEEP_CHECK) == expected
    # Removing the deep image-backed containers leaves nothing behind.
    for c in (cid, again):
        kiwi("stop", c, "--time", "2")
    for c in (cid, restored, again):
        kiwi("delete", c, "--yes")
    assert state_of(kiwi)["containers"] == [] and state_of(kiwi)["tmp"] == []


def test_a_deep_host_storage_folder_is_listed_and_deleted(kiwi, busybox):
    cid = kiwi.create(busybox, "--storage", "host")
    kiwi.sh(cid, DEEP_TREE)
    kiwi("stop", cid, "--time", "2")
    row = kiwi.json("list", "containers")[0]
    assert row["storage_used"] > DEEP * 1024
    done = run_with_soft_nofile(kiwi, "delete", cid, "--yes")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert state_of(kiwi)["containers"] == [] and state_of(kiwi)["tmp"] == []


# ------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path_factory):
    """A Kiwi whose data folder is a 96M tmpfs this test mounts (unmounted even on failure)."""
    env, _ = make_env(tmp_path_factory)
    mnt = tmp_path_factory.mktemp(f"kiwi-full-{secrets.token_hex(3)}")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0755", "tmpfs", str(mnt)], check=True)
    root = mnt / "kiwi-data"
    env["KIWI_ROOT"] = str(root)
    k = Kiwi(env, root)
    try:
        yield k
    finally:
        try:
            teardown_env(k)  # stops what runs, then unmounts everything below mnt (mnt too)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem is full, to the last page."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096):
            chunk = bytes(size)
            try:
                while os.write(fd, chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk, busybox_tar):
    kiwi = small_disk
    kiwi("import", "--name", "busybox", busybox_tar)
    cid = kiwi.create("busybox", "--storage", "host", "--name", "c")
    kiwi.sh(cid, "echo started")
    kiwi("stop", cid, "--time", "2")
    assert_one_line(kiwi("create", "busybox", check=False), "more than the whole filesystem")
    fill(kiwi.root.parent)
    before = state_of(kiwi)
    for args in (
        ("create", "busybox", "--storage", "host"),
        ("set", "c", "--memory", "256M"),
        ("attach", "c", "--", "true"),
        ("snap", "c", "s"),
        ("commit", "c", "copy"),
        ("import", "--name", "again", busybox_tar),
    ):
        line = assert_one_line(kiwi(*args, check=False), "")
        assert any(w in line for w in ("No space left", "disk is full", "free some space")), (args, line)
        if args[0] == "attach":
            assert kiwi.json("list", "containers")[0]["status"] == "stopped"
    assert state_of(kiwi) == before
    assert kiwi.json("list", "containers")[0]["memory"] is None
