"""Issue 17 items 2 and 3: attach -e/-w/-u like docker exec, exit 126/127, a detachable
session running a command, and session terminals of the container's own devpts."""

from __future__ import annotations

import re

import pexpect
import pytest

SESSION_LINE = r"kiwi: session ([0-9a-f]{8}) "
DETACH_KEY = "\x1c"  # Ctrl-\


@pytest.fixture(scope="module")
def debian_module(kiwi_module, debian_tar) -> str:
    kiwi_module("import", "--name", "debian", debian_tar, timeout=600)
    cid = kiwi_module.create("debian", "--name", "ex", "--network", "host")
    kiwi_module("start", cid)
    return cid


@pytest.fixture
def kiwi(kiwi_module):
    return kiwi_module  # one container for this module's tests


@pytest.fixture
def debian(debian_module) -> str:
    return debian_module


def test_env_and_workdir(kiwi, debian):
    out = kiwi.out(
        "attach",
        debian,
        "-e",
        "FOO=bar",
        "--env",
        "EQ=a=b",
        "-e",
        "EMPTY=",
        "-w",
        "/etc",
        "--",
        "sh",
        "-c",
        'echo "$FOO|$EQ|${EMPTY-unset}|$PWD"; pwd -P',
    )
    assert out.splitlines() == ["bar|a=b||/etc", "/etc"]
    # -e overrides what Kiwi sets, PATH too.
    assert kiwi.out("attach", debian, "-e", "HOME=/srv", "--", "sh", "-c", "echo $HOME") == "/srv"
    # A symlink in the container resolves inside it.
    kiwi.sh(debian, "ln -s /usr/share /opt/linked")
    assert kiwi.out("attach", debian, "-w", "/opt/linked", "--", "pwd", "-P") == "/usr/share"
    for bad, text in (
        (["-e", "NOVALUE"], "give NAME=VALUE"),
        (["-e", "=x"], "give NAME=VALUE"),
        (["-w", "relative"], "absolute path"),
        (["-u", "a:b:c"], "invalid --user"),
        (["-u", "root:"], "invalid --user"),
    ):
        done = kiwi("attach", debian, *bad, "--", "true", check=False)
        assert done.returncode == 1 and text in done.stderr and done.stderr.count("\n") == 1, done.stderr
    missing = kiwi("attach", debian, "-w", "/no/such", "--", "true", check=False)
    assert (
        missing.returncode == 1
        and missing.stderr == "kiwi: cannot enter /no/such in the container: No such file or directory\n"
    )


def test_user_names_ids_and_groups(kiwi, debian):
    kiwi.sh(debian, "echo 'extra:x:4321:daemon,nobody' >> /etc/group")
    assert kiwi.out("attach", debian, "-u", "nobody", "--", "id") == (
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup),4321(extra)"
    )
    assert (
        kiwi.out("attach", debian, "-u", "daemon:tty", "--", "id") == "uid=1(daemon) gid=5(tty) groups=5(tty)"
    )
    assert kiwi.out("attach", debian, "-u", "1", "--", "id", "-G") == "1 4321"  # uid 1 is daemon
    assert kiwi.out("attach", debian, "-u", "1234:5", "--", "id") == "uid=1234 gid=5(tty) groups=5(tty)"
    env = kiwi.out("attach", debian, "-u", "nobody", "--", "sh", "-c", "echo $HOME $USER $LOGNAME")
    assert env == "/nonexistent nobody nobody"
    caps = kiwi.out("attach", debian, "-u", "nobody", "--", "grep", "^Cap[EPI]", "/proc/self/status")
    assert [line.split()[1] for line in caps.splitlines()] == ["0000000000000000"] * 3
    # The user cannot get root back: no capability to switch ids, no file to write.
    assert (
        kiwi("attach", debian, "-u", "nobody", "--", "sh", "-c", "echo x > /etc/x", check=False).returncode
        != 0
    )
    for spec, text in (("nosuch", "no user 'nosuch'"), ("nobody:nosuch", "no group 'nosuch'")):
        done = kiwi("attach", debian, "-u", spec, "--", "id", check=False)
        assert done.returncode == 1 and text in done.stderr and done.stderr.count("\n") == 1


def test_exit_126_and_127_like_docker_exec(kiwi, debian):
    for argv, code, text in (
        (["/no/such"], 127, "command not found"),
        (["nosuchcommand"], 127, "command not found"),
        (["/etc/passwd"], 126, "permission denied"),
        (["/tmp"], 126, "permission denied"),
    ):
        done = kiwi("attach", debian, "--", *argv, check=False)
        assert done.returncode == code, (argv, done.stderr)
        assert text in done.stderr and done.stderr.count("\n") == 1
    assert kiwi("attach", debian, "--", "sh", "-c", "exit 126", check=False).returncode == 126


def test_user_database_is_read_inside_the_container_only(kiwi, debian, tmp_path):
    host = tmp_path / "passwd"
    host.write_text("hostuser:x:4242:4242::/host:/bin/sh\n")
    kiwi.sh(debian, "cp /etc/passwd /etc/passwd.real")
    for link in (str(host), f"../../../../../../..{host}", f"/proc/self/root{host}", f"/proc/1/root{host}"):
        kiwi.sh(debian, f"ln -sfn '{link}' /etc/passwd")
        done = kiwi("attach", debian, "-u", "hostuser", "--", "id", check=False)
        assert done.returncode == 1, link
        assert "no user 'hostuser'" in done.stderr or "cannot read the container's /etc/passwd" in done.stderr
    # A FIFO or a device never blocks nor is read.
    kiwi.sh(debian, "rm /etc/passwd; mkfifo /etc/passwd")
    done = kiwi("attach", debian, "-u", "nobody", "--", "id", check=False, timeout=30)
    assert done.returncode == 1 and "not a regular file" in done.stderr
    kiwi.sh(debian, "rm /etc/passwd; ln -s /dev/zero /etc/passwd")
    done = kiwi("attach", debian, "-u", "nobody", "--", "id", check=False, timeout=30)
    assert done.returncode == 1 and "not a regular file" in done.stderr
    kiwi.sh(debian, "rm /etc/passwd; mv /etc/passwd.real /etc/passwd")
    assert kiwi.out("attach", debian, "-u", "nobody", "--", "id", "-u") == "65534"


def kiwi_terminal(terminals, kiwi, *args):
    return terminals(kiwi.cmd[0], kiwi.cmd[1:] + list(args), kiwi.env)


def test_session_running_a_command_detaches_and_ends_with_it(kiwi, terminals, debian):
    child = kiwi_terminal(
        terminals,
        kiwi,
        "attach",
        debian,
        "--session",
        "-u",
        "nobody",
        "-e",
        "JOB=long",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        'echo "START $JOB $(id -u) $(pwd)"; read x; echo "GOT $x"; exit 3',
    )
    child.expect(SESSION_LINE)
    sid = child.match.group(1)
    child.expect("START long 65534 /tmp")
    child.send(DETACH_KEY)
    child.expect(f"detached from session {sid}")
    child.expect(pexpect.EOF)
    rows = kiwi.json("sessions", debian)
    assert [r["id"] for r in rows] == [sid] and "sh -c" in rows[0]["command"]

    again = kiwi_terminal(terminals, kiwi, "attach", "--old", sid)
    again.expect("START long 65534 /tmp")  # the replay
    again.sendline("hello")
    again.expect("GOT hello")
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 3
    assert kiwi.json("sessions", debian) == []


def test_session_terminal_belongs_to_the_container(kiwi, terminals, debian):
    child = kiwi_terminal(terminals, kiwi, "attach", debian)
    child.expect(SESSION_LINE)
    child.sendline("echo TTY=$(tty)END$((1+1))")
    child.expect(r"TTY=(\S+)END2")
    tty = child.match.group(1)
    assert re.fullmatch(r"/dev/pts/\d+", tty), tty
    child.sendline(f"test -c {tty} && test -O {tty} && echo OWNED-$((6*7))")
    child.expect("OWNED-42")
    # The same path in the container names this terminal: writing to it reaches the session.
    kiwi("attach", debian, "--", "sh", "-c", f"echo FROM-OUTSIDE-$((2+3)) > {tty}")
    child.expect("FROM-OUTSIDE-5")
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
