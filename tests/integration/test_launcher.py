"""The one-file launcher (cffi_build/launcher.c) in the frozen dist/kiwi: the pid
the shell sees is the worker, a kill -9 leaves no folder behind, the cache of
unpacked files is private, verified and re-made when damaged, and the binary
runs from a read-only folder and for a user who is not root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import kiwi_command

NOBODY = 65534


def cache_dir(kiwi) -> Path:
    return kiwi.root / ".runtime"


def cache_entries(kiwi) -> list[str]:
    return sorted(n for n in os.listdir(cache_dir(kiwi)) if n != ".lock")


def only_build(kiwi) -> Path:
    """The one complete cache folder; fails if there is anything else."""
    names = cache_entries(kiwi)
    assert len(names) == 1 and not names[0].startswith("."), names
    folder = cache_dir(kiwi) / names[0]
    assert (folder / ".complete").is_file()
    return folder


def process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time): tells a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below pid (children of its threads too)."""
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                start = process_start(child)
                if start and child not in found:
                    found[child] = start
                    todo.append(child)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    return [pid for pid, start in processes.items() if process_start(pid) == start]


def kill_visible_pid(kiwi, args: list, after: float, env: dict) -> dict[int, str]:
    """Start kiwi, kill -9 the pid we got back after `after` s; returns what was still
    alive of it (the pid itself and everything it had started)."""
    proc = subprocess.Popen(
        kiwi.cmd + [str(a) for a in args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(after)
        below = descendants(proc.pid)
        proc.kill()
    finally:
        proc.wait()
    time.sleep(0.3)  # a survivor would go on working meanwhile
    return {pid: start for pid, start in below.items() if pid in alive(below)}


def test_kill_of_the_visible_pid_stops_the_import(kiwi, debian_tar, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**kiwi.env, "TMPDIR": str(tmpdir)}
    kiwi("--version", env=env)  # unpacked once
    proc = subprocess.Popen(
        kiwi.cmd + ["import", "--name", "deb", str(debian_tar)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        staging = kiwi.root / ".tmp"
        deadline = time.monotonic() + 60
        while not (staging.is_dir() and os.listdir(staging)) and proc.poll() is None:
            assert time.monotonic() < deadline, "the import never started"
            time.sleep(0.05)
        assert proc.poll() is None, "the import ended before it could be killed"
        # The pid we started is the Python worker itself, running from the cache.
        assert os.readlink(f"/proc/{proc.pid}/exe").startswith(str(cache_dir(kiwi)) + "/")
        below = descendants(proc.pid)
        proc.kill()
    finally:
        proc.wait()
    time.sleep(2)  # a surviving worker would finish the import meanwhile
    assert not alive(below), f"still running after kill -9 of {proc.pid}: {alive(below)}"
    assert "deb" not in [row["name"] for row in kiwi.json("list", "images")]
    assert not (kiwi.root / "images" / "deb").exists()
    assert os.listdir(tmpdir) == [], "something was unpacked into TMPDIR"
    only_build(kiwi)
    kiwi("cleanup")
    assert os.listdir(kiwi.root / ".tmp") == []


def test_twenty_kills_leave_exactly_one_cache_folder(kiwi, busybox_tar, tmp_path):
    """Killed while unpacking (every other round starts with no cache) and while importing."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**kiwi.env, "TMPDIR": str(tmpdir)}
    survivors = {}
    for round_ in range(20):
        if round_ % 2 == 0:
            shutil.rmtree(cache_dir(kiwi), ignore_errors=True)
        after = 0.02 + 0.06 * round_  # 0.02 .. 1.16 s: inside the unpack, then inside Python
        survivors.update(kill_visible_pid(kiwi, ["import", "--name", f"bb{round_}", busybox_tar], after, env))
        assert not survivors, f"round {round_}: processes survived kill -9: {survivors}"
    assert os.listdir(tmpdir) == [], "something was unpacked into TMPDIR"
    kiwi("--version", env=env)  # sweeps what a killed unpack left, if the last one was
    only_build(kiwi)


def test_cache_is_root_only_and_complete(kiwi):
    kiwi("--version")
    build = only_build(kiwi)
    for path in [cache_dir(kiwi), build, *build.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0, f"{path}: uid {st.st_uid} mode {st.st_mode:o}"
    assert (build / "kiwi").is_file() and (build / "_internal").is_dir()


def test_damaged_cache_is_unpacked_again(kiwi):
    kiwi("--version")
    build = only_build(kiwi)
    libpython = next((build / "_internal").glob("libpython*"))

    def assert_fresh(why: str):
        assert kiwi.out("--version").startswith("kiwi "), why
        assert only_build(kiwi) == build
        assert not (build / "sentinel").exists(), f"{why}: not unpacked again"
        (build / "sentinel").touch()  # a fresh unpack has no such file

    (build / "sentinel").touch()
    (build / ".complete").unlink()
    assert_fresh("marker missing")

    with open(libpython, "r+b") as f:
        f.truncate(4096)
    assert_fresh("file truncated")

    os.chmod(build / "kiwi", 0o777)
    assert_fresh("file writable by others")

    os.chown(build, NOBODY, NOBODY)
    assert_fresh("folder owned by another user")

    with open(libpython, "r+b") as f:  # same size, new content: the mtime tells
        f.write(b"\0" * 16)
    assert_fresh("file rewritten in place")


def test_killed_unpack_leftovers_are_removed(kiwi):
    kiwi("--version")
    build = only_build(kiwi)
    leftover = cache_dir(kiwi) / f".tmp-{build.name}-999999"
    shutil.copytree(build, leftover)
    (build / ".complete").unlink()  # the next run unpacks and sweeps
    kiwi("--version")
    assert only_build(kiwi) == build
    shutil.copytree(build, leftover)  # a kill during a removal: cleanup sweeps it
    done = kiwi("cleanup")
    assert f"half-unpacked {leftover}" in done.stdout
    only_build(kiwi)


def test_older_build_is_removed_newer_kept(kiwi):
    kiwi("--version")
    build = only_build(kiwi)
    older, newer = cache_dir(kiwi) / "0000000000000000", cache_dir(kiwi) / "ffffffffffffffff"
    for other, mtime in ((older, 1), (newer, build.joinpath(".complete").stat().st_mtime + 3600)):
        shutil.copytree(build, other)
        os.utime(other / ".complete", (mtime, mtime))
    held = os.open(older / ".complete", os.O_RDONLY)  # a running kiwi of the older build
    try:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_SH)
        (build / ".complete").unlink()
        kiwi("--version")
        assert older.is_dir(), "removed the folder of a build that is still running"
    finally:
        os.close(held)
    (build / ".complete").unlink()
    kiwi("--version")
    assert cache_entries(kiwi) == sorted([build.name, newer.name])


def test_untrusted_data_folder_is_not_run_from(kiwi, tmp_path):
    """A data folder another user can write: root unpacks into /var/cache/kiwi instead."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    root = shared / "kiwi-data"
    own = Path("/var/cache/kiwi")
    existed = own.exists()
    kiwi("--version")
    build_name = only_build(kiwi).name
    had_build = (own / build_name).exists()
    try:
        assert kiwi.out("--version", env={"KIWI_ROOT": str(root)}).startswith("kiwi ")
        assert not (root / ".runtime" / build_name).exists()
        assert (own / build_name / ".complete").is_file()
        st = own.lstat()
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0

        # A .runtime another user owns, in a trusted data folder, is refused too.
        trusted = tmp_path / "trusted" / "kiwi-data"
        (trusted / ".runtime").mkdir(parents=True, mode=0o700)
        os.chown(trusted / ".runtime", NOBODY, NOBODY)
        assert kiwi.out("--version", env={"KIWI_ROOT": str(trusted)}).startswith("kiwi ")
        assert os.listdir(trusted / ".runtime") == []
    finally:
        if not existed:
            shutil.rmtree(own, ignore_errors=True)
        elif not had_build:
            shutil.rmtree(own / build_name, ignore_errors=True)


def test_runs_from_a_read_only_folder(kiwi, tmp_path):
    """A read-only bind mount (in a private mount namespace): nothing can be written
    beside the binary; the cache goes to the data folder KIWI_ROOT names."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy2(kiwi_command()[0], folder / "kiwi")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$1/kiwi" --version'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(folder)],
        env=kiwi.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout.startswith("kiwi "), done.stderr
    assert os.listdir(folder) == ["kiwi"]
    only_build(kiwi)


def test_non_root_user_gets_a_private_cache(kiwi):
    shared = Path(tempfile.mkdtemp(prefix="kiwi-launcher-", dir="/tmp"))  # pytest's own tmp is 0700
    try:
        shared.chmod(0o755)
        home = shared / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        data = shared / "empty" / "kiwi-data"
        env = {**kiwi.env, "HOME": str(home), "KIWI_ROOT": str(data)}
        env.pop("XDG_CACHE_HOME", None)
        nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

        def run(*args) -> str:
            done = subprocess.run(nobody + kiwi.cmd + list(args), env=env, capture_output=True, text=True)
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
            return done.stdout

        assert run("--version").startswith("kiwi ")
        assert run("--help").startswith("usage: kiwi")
        listing = run("list").splitlines()
        assert len(listing) == 1 and listing[0].split()[:2] == ["ID", "NAME"], listing
        assert listing == kiwi.out("list", env={"KIWI_ROOT": str(data)}).splitlines()
        cache = home / ".cache" / "kiwi"
        builds = [n for n in os.listdir(cache) if n != ".lock"]
        assert len(builds) == 1, builds
        for path in [cache, cache / builds[0], *(cache / builds[0]).rglob("*")]:
            st = path.lstat()
            assert st.st_uid == NOBODY and st.st_mode & 0o077 == 0, path
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_frozen_executable_names_the_one_file(tmp_path, monkeypatch):
    """sys.executable is the cache's copy; the data folder and `kiwi terminal`'s
    sudo use the file the user ran, which the launcher names in KIWI_EXECUTABLE."""
    from kiwi import store, terminal

    monkeypatch.setattr(store.sys, "frozen", True, raising=False)
    monkeypatch.setattr(store.sys, "executable", "/var/lib/kiwi/.runtime/0123456789abcdef/kiwi")
    monkeypatch.setenv("KIWI_EXECUTABLE", str(tmp_path / "kiwi"))
    assert store.executable_dir() == tmp_path.resolve()
    assert terminal.kiwi_argv() == [str(tmp_path / "kiwi")]


def test_containers_get_neither_the_lock_nor_the_path(kiwi, busybox):
    """Every kiwi process holds its build's marker open across exec; nothing in a
    container may inherit that fd or see KIWI_EXECUTABLE."""
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")  # running now: PID 1 exists
    script = "ls -l /proc/[0-9]*/fd/ 2>/dev/null; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"
    seen = kiwi.sh(cid, script).stdout
    assert "/proc/1/fd" in seen or "->" in seen, seen  # the listing did run
    assert ".complete" not in seen and ".runtime" not in seen, seen
    assert "KIWI_EXECUTABLE" not in seen and "_PYI_" not in seen, seen


def test_damaged_download_is_one_clear_line(kiwi, tmp_path):
    """A flipped bit in the bundle (zstd's checksum) or a file cut short: one line, exit 1,
    nothing half-unpacked left behind."""
    import struct

    good = Path(kiwi_command()[0]).read_bytes()
    _, _, _, data_offset, data_size, _, _ = struct.unpack("<8s5Q24s", good[-72:])
    flipped = bytearray(good)
    flipped[data_offset + data_size // 2] ^= 0x10
    for name, blob in (("flipped", bytes(flipped)), ("cut", good[: len(good) // 2])):
        binary = tmp_path / name
        binary.write_bytes(blob)
        binary.chmod(0o755)
        done = subprocess.run([str(binary), "--version"], env=kiwi.env, capture_output=True, text=True)
        assert done.returncode == 1 and done.stdout == "", (name, done)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("kiwi: "), (name, done.stderr)
        assert "download it again" in done.stderr, done.stderr
        runtime = cache_dir(kiwi)
        assert not runtime.exists() or cache_entries(kiwi) == [], cache_entries(kiwi)
