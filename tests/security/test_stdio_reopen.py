"""Issue 12 item 3: host files given as stdio cannot be reopened from the container.

Root in the container reopens /proc/self/fd/N: had the container been handed the
host file itself, it could rewrite a read-only file given as `< file`, read what
a `>> file` already held, truncate it, or chmod it (the host's /dev/null and a
host FIFO included). Kiwi relays such fds through fresh pipes; the data must
still flow both ways and the exit status pass through.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading

import pytest

REOPEN_STDIN = "cat; echo pwned > /proc/self/fd/0; chmod 777 /proc/self/fd/0; true"


@pytest.fixture(scope="module")
def box(kiwi_module, busybox_tar):
    kiwi = kiwi_module
    kiwi("import", "--name", "busybox", busybox_tar)
    cid = kiwi.create("busybox")
    kiwi("attach", cid, "--", "true")
    return kiwi, cid


def attach(box, script: str, **kw) -> subprocess.CompletedProcess:
    kiwi, cid = box
    kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
    return subprocess.run(
        kiwi.cmd + ["attach", cid, "--", "sh", "-c", script], env=kiwi.env, timeout=120, **kw
    )


def test_read_only_stdin_file_is_not_rewritten(box, tmp_path):
    host = tmp_path / "read-only"
    host.write_text("host data\n")
    host.chmod(0o444)
    with open(host, "rb") as f:
        done = attach(box, REOPEN_STDIN, stdin=f)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"host data\n"
    assert host.read_text() == "host data\n"
    assert stat.S_IMODE(host.stat().st_mode) == 0o444


# Read what the host file held, chmod it, truncate it; then write normally.
REOPEN_OUTPUT = (
    "timeout 1 cat /proc/self/fd/{fd} >&{other}; chmod 777 /proc/self/fd/{fd}; "
    ": > /proc/self/fd/{fd}; echo written >&{fd}"
)


@pytest.mark.parametrize("fd", [1, 2])
def test_output_file_is_neither_read_nor_truncated(box, tmp_path, fd):
    host = tmp_path / "output"
    host.write_text("SECRET\n")
    host.chmod(0o600)
    other = 3 - fd
    with open(host, "ab") as f:
        target = (
            {"stdout": f, "stderr": subprocess.PIPE} if fd == 1 else {"stderr": f, "stdout": subprocess.PIPE}
        )
        done = attach(box, REOPEN_OUTPUT.format(fd=fd, other=other), **target)
    leaked = done.stderr if fd == 1 else done.stdout
    assert done.returncode == 0, leaked
    assert b"SECRET" not in leaked
    text = host.read_text()  # with fd 2, the shell's "Terminated" for timeout lands there too
    assert text.startswith("SECRET\n") and text.endswith("written\n") and text.count("SECRET") == 1, text
    assert stat.S_IMODE(host.stat().st_mode) == 0o600


def test_host_dev_null_is_not_touched(box):
    before = os.stat("/dev/null")
    try:
        with open("/dev/null", "rb") as null:
            done = attach(box, REOPEN_STDIN, stdin=null)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b""
        after = os.stat("/dev/null")
        assert (after.st_mode, after.st_rdev, after.st_uid) == (before.st_mode, before.st_rdev, before.st_uid)
    finally:
        if os.stat("/dev/null").st_mode != before.st_mode:  # only a broken kiwi changes it: repair the host
            os.chmod("/dev/null", stat.S_IMODE(before.st_mode))


def test_host_fifo_is_not_touched(box, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)

    def feed():
        with open(fifo, "wb") as w:
            w.write(b"through the fifo\n")

    writer = threading.Thread(target=feed)
    writer.start()
    with open(fifo, "rb") as r:
        done = attach(box, REOPEN_STDIN, stdin=r)
    writer.join(timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"through the fifo\n"
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_IMODE(fifo.stat().st_mode) == 0o600


def test_megabytes_flow_through_the_relay(box, tmp_path):
    data = os.urandom(6 * 1024 * 1024 + 123)
    source = tmp_path / "big"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with open(source, "rb") as f:  # file in, anonymous pipe out (passed as is)
        done = attach(box, "sha256sum; cat /dev/null", stdin=f)
    assert done.stdout.split()[0].decode() == digest
    copy = tmp_path / "copy"
    with open(source, "rb") as f, open(copy, "wb") as out:  # file in, file out: both relayed
        done = attach(box, "cat; exit 3", stdin=f, stdout=out, stderr=subprocess.PIPE)
    assert done.returncode == 3, done.stderr
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    done = attach(box, "cat", input=data)  # pipe in, pipe out
    assert hashlib.sha256(done.stdout).hexdigest() == digest
