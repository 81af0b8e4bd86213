"""kiwi-init as PID 1 of a fresh PID namespace, executed from its sealed memfd.

Layout of every test:
    pytest ── fork ─> holder: unshare(CLONE_NEWPID), forks, waits, reports
                        └─> pid 1: starts workloads, then exec_init(init_memfd())
Killing PID 1 with SIGKILL ends the whole namespace, which is the teardown.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_until
from kiwi import security
from kiwi import syscalls as sc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def kiwi_init_binary():
    path = ROOT / "kiwi" / "kiwi-init"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "cffi_build" / "build_sys.py"), "init"], check=True)
    return path


class Container:
    """A PID namespace whose PID 1 is kiwi-init, with optional workloads."""

    def __init__(self, workloads=(), cwd="/tmp"):
        self.workloads = workloads
        self.cwd = cwd
        self.init_pid = None
        self.holder = None

    def start(self):
        read_end, write_end = os.pipe()
        self.holder = os.fork()
        if self.holder == 0:
            os.close(read_end)
            self._hold(write_end)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            self.init_pid = int(pipe.readline())
        assert wait_until(lambda: "memfd:kiwi-init" in exe_of(self.init_pid)), "no exec of kiwi-init"
        return self

    def _hold(self, report_fd):
        """Runs in the forked holder; never returns."""
        code = 70
        try:
            sc.unshare(sc.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                self._become_init(report_fd)
            os.write(report_fd, f"{pid}\n".encode())
            os.close(report_fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status) % 256
        finally:
            os._exit(code)

    def _become_init(self, report_fd):
        try:
            os.close(report_fd)
            memfd = security.init_memfd()
            for workload in self.workloads:
                subprocess.Popen(["sh", "-c", workload.script, workload.name], start_new_session=True)
            os.open("/dev/null", os.O_RDONLY)  # inherited fd that init must close
            os.chdir(self.cwd)
            security.exec_init(memfd)
        finally:
            os._exit(71)

    def alive(self) -> bool:
        return process_state(self.init_pid) not in (None, "Z")

    def children(self) -> dict:
        """{host pid: (state, name)} of PID 1's children (incl. reparented orphans)."""
        found = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                status = read_status(int(entry.name))
                if status and status.get("PPid") == str(self.init_pid):
                    found[int(entry.name)] = (status["State"][0], cmdline_of(int(entry.name)))
        return found

    def exit_code(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.holder, os.WNOHANG)
            if pid:
                self.holder = None
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        return None

    def destroy(self):
        if self.holder is None:
            return
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)  # ends every process inside
            except ProcessLookupError:
                pass
        os.waitpid(self.holder, 0)
        self.holder = None


class Workload:
    def __init__(self, name, script):
        self.name, self.script = name, script


def read_status(pid: int):
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def process_state(pid: int):
    status = read_status(pid)
    return status["State"][0] if status else None


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@pytest.fixture
def container():
    made = []

    def make(*workloads, **options):
        made.append(Container(workloads, **options).start())
        return made[-1]

    yield make
    for each in made:
        each.destroy()


def test_init_refuses_to_run_outside_a_pid_namespace(kiwi_init_binary):
    done = subprocess.run([str(kiwi_init_binary)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "PID 1" in done.stderr


def test_init_is_small_clean_and_stays_up_without_children(container, tmp_path):
    box = container(cwd=str(tmp_path))
    time.sleep(0.3)
    assert box.alive()
    assert box.children() == {}
    status = read_status(box.init_pid)
    assert int(status["VmRSS"].split()[0]) < 2048, status["VmRSS"]
    assert int(status["VmHWM"].split()[0]) < 2048, status["VmHWM"]
    assert sorted(os.listdir(f"/proc/{box.init_pid}/fd")) == ["0", "1", "2"]
    assert os.readlink(f"/proc/{box.init_pid}/cwd") == "/"
    assert status["NSpid"].split()[-1] == "1"
    os.kill(box.init_pid, signal.SIGTERM)
    assert box.exit_code() == 0


def test_init_reaps_zombies_and_orphans(container):
    orphans = Workload("kiwi-test-orphans", "for i in 1 2 3 4 5 6 7 8; do (sleep 1 &); done; sleep 0.2")
    quick = Workload("kiwi-test-quick", "exit 0")
    box = container(orphans, quick)
    # the orphaned sleeps were reparented to PID 1 ...
    assert wait_until(lambda: sum("sleep 1" in name for _, name in box.children().values()) == 8)
    # ... and once everything has exited, nothing is left as a zombie
    assert wait_until(lambda: box.children() == {}), box.children()
    assert box.alive()


def test_sigterm_is_forwarded_and_init_exits_when_last_process_goes(container, tmp_path):
    marker = tmp_path / "got-term"
    polite = Workload(
        "kiwi-test-polite", f"trap 'echo term > {marker}; exit 0' TERM; while :; do sleep 0.05; done"
    )
    stubborn = Workload("kiwi-test-stubborn", "trap '' TERM; while :; do sleep 0.05; done")
    box = container(polite, stubborn)
    assert wait_until(lambda: len(box.children()) == 2)
    status = read_status(box.init_pid)
    assert int(status["VmRSS"].split()[0]) < 2048, status["VmRSS"]

    os.kill(box.init_pid, signal.SIGTERM)
    assert wait_until(marker.exists)
    assert wait_until(
        lambda: [name for _, name in box.children().values() if "kiwi-test-polite" in name] == []
    )
    time.sleep(0.3)
    assert box.alive()  # the stubborn one still runs, so PID 1 waits

    stubborn_pid = next(pid for pid, (_, name) in box.children().items() if "kiwi-test-stubborn" in name)
    os.kill(stubborn_pid, signal.SIGKILL)
    started = time.monotonic()
    assert box.exit_code() == 0
    assert time.monotonic() - started < 0.5  # prompt, not a long poll


def test_sigint_and_sighup_also_shut_down(container):
    for sig in (signal.SIGINT, signal.SIGHUP):
        box = container(Workload("kiwi-test-sleeper", "sleep 30"))
        assert wait_until(lambda: len(box.children()) == 1)
        os.kill(box.init_pid, sig)
        assert box.exit_code() == 0


def test_init_memfd_is_sealed():
    fd = security.init_memfd()
    try:
        seals = sc.get_seals(fd)
        for seal in (sc.F_SEAL_SEAL, sc.F_SEAL_SHRINK, sc.F_SEAL_GROW, sc.F_SEAL_WRITE):
            assert seals & seal
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0", 0)
        assert os.fstat(fd).st_size == security.init_binary_path().stat().st_size
    finally:
        os.close(fd)


def test_sigterm_right_after_exec_is_not_lost(container):
    """exec_init blocks signals before exec, so there is no window in which
    PID 1 would silently drop a SIGTERM."""
    for _ in range(5):
        box = container()
        os.kill(box.init_pid, signal.SIGTERM)
        assert box.exit_code() == 0
