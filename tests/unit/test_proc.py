"""kiwi/proc.py: a forked child's result, its KiwiError, its bug (with traceback), its death
by a signal and its garbage each reach the parent as one clear outcome. Real forks, real pipes."""

import errno
import os
import signal
import sys

import pytest

from kiwi import cli, proc
from kiwi.errors import ChildBug, CommandNotFound, KiwiError


def give(value):
    return value


def raise_(error):
    raise error


def buggy_setup(config):
    return config["name"].encode()  # an int name: AttributeError, as a real bug would


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def test_ok_value_comes_back_as_plain_data():
    value = {"sizes": {"rootfs": 12}, "names": ["a", "b"], "n": None, "text": "é\n"}
    assert proc.run_child(give, value) == value
    assert proc.run_child(give, (1, 2)) == [1, 2]  # JSON: tuples are lists


def test_kiwi_error_keeps_class_message_and_exit_code():
    with pytest.raises(CommandNotFound) as caught:
        proc.run_child(raise_, CommandNotFound("no such command: frob"))
    assert caught.value.message == "no such command: frob"
    assert caught.value.exit_code == 127

    error = KiwiError("cannot run it")
    error.exit_code = 126
    with pytest.raises(KiwiError) as caught:
        proc.run_child(raise_, error)
    assert type(caught.value) is KiwiError
    assert (caught.value.message, caught.value.exit_code) == ("cannot run it", 126)


def test_os_error_is_one_line_not_a_bug():
    with pytest.raises(KiwiError) as caught:
        proc.run_child(raise_, FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"))
    assert not isinstance(caught.value, ChildBug)
    assert caught.value.message == "cannot use /nope: No such file or directory"


def test_bug_carries_the_childs_traceback(monkeypatch, capsys):
    with pytest.raises(ChildBug) as caught:
        proc.run_child(buggy_setup, {"name": 7})
    bug = caught.value
    assert bug.message.startswith("internal error: AttributeError: 'int' object has no attribute 'encode'")
    assert "buggy_setup" in bug.child_traceback
    assert 'return config["name"].encode()' in bug.child_traceback
    assert "child_main" in bug.child_traceback  # the frames are the child's own

    # What the CLI makes of it: one line, or the child's traceback with KIWI_DEBUG=1.
    monkeypatch.setattr(cli, "run", lambda argv: raise_(bug))
    monkeypatch.delenv("KIWI_DEBUG", raising=False)
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"kiwi: {bug.message}"]
    assert err.startswith("kiwi: internal error: AttributeError:")
    monkeypatch.setenv("KIWI_DEBUG", "1")
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert "buggy_setup" in err and "Traceback" in err
    assert err.splitlines()[-1] == f"kiwi: {bug.message}"


class NoImports:
    """A meta path finder that refuses every import, as stage 2 past its pivot_root must make none."""

    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"imported {name} where no import may happen")


def buggy_without_imports(config):
    import sys

    sys.meta_path.insert(0, NoImports())
    return buggy_setup(config)


def test_bug_traceback_imports_nothing_in_the_child(monkeypatch):
    """Without the traceback module loaded (kiwi no longer imports it before a fork), the bug
    still arrives with the child's frames, and the child imports nothing to send them."""
    monkeypatch.delitem(sys.modules, "traceback")
    with pytest.raises(ChildBug) as caught:
        proc.run_child(buggy_without_imports, {"name": 7})
    assert "traceback" not in sys.modules  # nor did the parent's fork path import it
    text = caught.value.child_traceback
    assert "buggy_setup" in text and "child_main" in text and "Traceback" in text
    assert text.splitlines()[-1] == "AttributeError: 'int' object has no attribute 'encode'"


def test_debug_flag_is_kiwi_debug(monkeypatch, capsys):
    monkeypatch.setenv("KIWI_DEBUG", "0")  # restored after the test
    with pytest.raises(ChildBug) as caught:
        proc.run_child(buggy_setup, {"name": 7})
    monkeypatch.setattr(cli, "run", lambda argv: raise_(caught.value))
    assert cli.main(["--debug", "list"]) == 1
    assert "buggy_setup" in capsys.readouterr().err
    assert "--debug" in cli.build_parser().format_help()


def test_result_that_is_not_json_is_a_bug():
    with pytest.raises(ChildBug, match="TypeError: Object of type object is not JSON serializable"):
        proc.run_child(give, object())


def test_child_killed_by_a_signal_is_one_clear_error():
    with pytest.raises(KiwiError) as caught:
        proc.run_child(kill_self)
    assert type(caught.value) is KiwiError
    assert caught.value.message == "a helper process was killed by SIGKILL; run 'kiwi cleanup' and try again"


def test_child_that_exits_without_a_word():
    with pytest.raises(KiwiError, match=r"ended \(status 3\) without reporting back"):
        proc.run_child(os._exit, 3)


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json\n",
        b'{"kind": 5}\n',
        b"[1, 2]\n",
        b'{"kind": "ok", "value": 1',  # cut off: no newline before EOF
        b"\xff\xfe\n",
    ],
)
def test_child_that_writes_garbage(garbage):
    def body(report):
        os.write(report.fd, garbage)
        os._exit(0)

    child = proc.Child(body)
    with pytest.raises(KiwiError, match="a helper process sent a malformed report"):
        child.result()


def test_child_that_writes_without_end_is_cut_off():
    def body(report):
        block = b"x" * (1 << 16)
        while True:
            os.write(report.fd, block)

    child = proc.Child(body)
    with pytest.raises(KiwiError, match="sent more than a report"):
        child.result()  # stops reading at the limit, stops the child, reaps it
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_error_naming_a_foreign_class_stays_a_plain_kiwi_error():
    def body(report):
        os.write(report.fd, b'{"kind": "error", "class": "os.system", "message": "id", "exit_code": "x"}\n')

    with pytest.raises(KiwiError) as caught:
        proc.Child(body).result()
    assert type(caught.value) is KiwiError
    assert (caught.value.message, caught.value.exit_code) == ("id", 1)


def test_reports_from_a_grandchild_sharing_the_pipe():
    """The start's shape: stage 1 reports the pid of stage 2, which reports "ready"."""

    def stage2(report):
        report.send("ready")

    def stage1(report):
        pid = os.fork()
        if pid == 0:
            proc.child_main(report, stage2)
        report.send("pid", pid)

    child = proc.Child(stage1)
    reports = dict(child.read())
    child.close()
    assert child.wait() == 0
    assert set(reports) == {"pid", "ready"} and isinstance(reports["pid"], int)


def test_process_start_time_and_exit_codes():
    assert proc.process_start_time(os.getpid()) == proc.process_start_time(os.getpid()) > 0
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert proc.process_start_time(pid) is None
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    assert proc.wait_exit_code(pid) == 128 + signal.SIGTERM


def test_write_all_and_read_to_end_on_a_full_pipe():
    r, w = os.pipe()
    data = os.urandom(1 << 20)  # far more than a pipe holds
    pid = os.fork()
    if pid == 0:
        os.close(r)
        proc.write_all(w, data)
        os._exit(0)
    os.close(w)
    try:
        assert proc.read_to_end(r, limit=1 << 19) == data[: 1 << 19]
        assert proc.read_to_end(r) == data[1 << 19 :]
    finally:
        os.close(r)
        proc.wait_exit_code(pid)


def test_going_on_records_environment_errors_and_passes_bugs():
    from kiwi.errors import GoingOn

    failures: list[str] = []
    with GoingOn(failures, "removing x"):
        os.rmdir("/proc/no-such-dir-for-kiwi")
    with GoingOn(failures, "removing y"):
        raise KiwiError("y is busy")
    with GoingOn(failures, "removing the bridge", catch=(Exception,)):
        raise LookupError("netlink said no")
    assert failures == [
        "removing x: cannot use /proc/no-such-dir-for-kiwi: No such file or directory",
        "removing y: y is busy",
        "removing the bridge: LookupError: netlink said no",
    ]
    with pytest.raises(ZeroDivisionError), GoingOn(failures, "dividing"):
        1 / 0  # noqa: B018 - a bug is not an environment problem: it goes up
    assert len(failures) == 3
