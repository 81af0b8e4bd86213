"""cli.main's last lines of defence: whatever escapes a command is one `kiwi: ` line
with the right exit code; KIWI_DEBUG=1 adds the traceback. (The frozen-binary cases
are in tests/integration/test_errors.py.)"""

import errno
import os

import pytest

from kiwi import cli
from kiwi.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandNotFound,
    Doing,
    KiwiError,
    describe,
    os_error_message,
)


def main_raising(monkeypatch, capsys, error, debug=False):
    def run(argv):
        raise error

    monkeypatch.setattr(cli, "run", run)
    if debug:
        monkeypatch.setenv("KIWI_DEBUG", "1")
    else:
        monkeypatch.delenv("KIWI_DEBUG", raising=False)
    code = cli.main([])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "error, code, line",
    [
        (KiwiError("no container x"), EXIT_ERROR, "kiwi: no container x"),
        (cli.UsageError("bad option"), EXIT_USAGE, "kiwi: bad option"),
        (CommandNotFound("empty command"), 127, "kiwi: empty command"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "kiwi: interrupted"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"),
            EXIT_ERROR,
            "kiwi: cannot use /x/y: No such file or directory",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/f"),
            EXIT_ERROR,
            "kiwi: cannot use /d/f: No space left on device; free some space and try again",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
            EXIT_ERROR,
            "kiwi: cannot use /a -> /b: Invalid cross-device link",
        ),
        (
            OSError(errno.ENOTDIR, "Not a directory: openat2 dev"),
            EXIT_ERROR,
            "kiwi: Not a directory: openat2 dev",
        ),
        (
            ValueError("bad\nvalue"),
            EXIT_ERROR,
            "kiwi: internal error: ValueError: bad value (run with KIWI_DEBUG=1 for the traceback)",
        ),
        (
            RecursionError("maximum recursion depth exceeded"),
            EXIT_ERROR,
            "kiwi: the files are nested too deeply",
        ),
        (  # a container's file name: its escapes shown, never sent to the terminal
            OSError(errno.ENOENT, "No such file or directory", "/d/\x1b]0;X\x07\x9b2J\x7f"),
            EXIT_ERROR,
            "kiwi: cannot use /d/\\x1b]0;X\\x07\\x9b2J\\x7f: No such file or directory",
        ),
    ],
)
def test_anything_escaping_is_one_line(monkeypatch, capsys, error, code, line):
    got, err = main_raising(monkeypatch, capsys, error)
    assert got == code and err == line + "\n"


def test_a_huge_name_in_an_error_keeps_the_line_short(monkeypatch, capsys):
    """An archive member's 60 KiB long name (what a tar may hold) named in full by the error."""
    name = "a" * (60 << 10)
    code, err = main_raising(monkeypatch, capsys, KiwiError(f"cannot extract {name!r}; get it again"))
    assert code == EXIT_ERROR and len(err) < 4200 and err.count("\n") == 1
    assert err.startswith("kiwi: cannot extract 'aaa") and err.endswith("aaa'; get it again\n")
    assert " characters left out...] " in err


def test_debug_adds_the_traceback(monkeypatch, capsys):
    code, err = main_raising(monkeypatch, capsys, ZeroDivisionError("boom"), debug=True)
    assert code == EXIT_ERROR and err.startswith("Traceback") and "ZeroDivisionError: boom" in err
    assert err.splitlines()[-1].startswith("kiwi: internal error: ZeroDivisionError: boom")


def test_permission_hint_only_for_others(monkeypatch):
    e = PermissionError(errno.EACCES, "Permission denied", "/k/containers")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert os_error_message(e).endswith("Permission denied; run it as root: sudo kiwi ...")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert os_error_message(e) == "cannot use /k/containers: Permission denied"


def test_doing_names_the_operation_and_path():
    with pytest.raises(KiwiError) as caught:
        with Doing("write", "/d/config.json"):
            raise OSError(errno.EROFS, "Read-only file system")
    assert caught.value.message == (
        "cannot write /d/config.json: Read-only file system; that filesystem is read-only"
    )
    with Doing("write", "/x"):
        pass  # nothing raised, nothing changed


def test_describe_is_what_helper_processes_send_back():
    assert describe(KiwiError("a\nb")) == "a b"
    assert describe(FileExistsError(errno.EEXIST, "File exists", "dev")) == "cannot use dev: File exists"


@pytest.mark.parametrize(
    "argv, joined",
    [
        (["set", "c", "--memory", "-5M"], ["set", "c", "--memory=-5M"]),
        (["set", "c", "--storage", "-1.5G", "--cpu", "2"], ["set", "c", "--storage=-1.5G", "--cpu", "2"]),
        (["stop", "c", "--time=-1"], ["stop", "c", "--time=-1"]),
        (["attach", "-x"], ["attach", "-x"]),
    ],
)
def test_negative_values_reach_their_own_check(argv, joined):
    assert cli.join_negative_values(argv) == joined
