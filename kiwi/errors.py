"""The one exception type that reaches the user as `kiwi: <message>`, the exit
codes, and the one-line wording of everything else that can go wrong."""

from __future__ import annotations

import errno
import os

# Exit codes, all in one place.
EXIT_OK = 0
EXIT_ERROR = 1  # a user mistake or an environment problem, told in one line
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_NOT_EXECUTABLE = 126  # the command to run in the container is there but cannot run (as sh)
EXIT_NOT_FOUND = 127  # the command to run in the container cannot be found (as sh and env)
EXIT_SIGNAL_BASE = 128  # killed by signal n: 128 + n (as sh)
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def exit_code_for_signal(signum: int) -> int:
    return EXIT_SIGNAL_BASE + signum


DEBUG_HINT = "run with KIWI_DEBUG=1 for the traceback"


class KiwiError(Exception):
    """A problem the user can act on. The message is one line and says what to do."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def within(self, context: str) -> KiwiError:
        """The same error (class, exit code), its line saying what failed: `<context>: <message>`."""
        self.message = f"{context}: {self.message}"
        self.args = (self.message,)
        return self


class CommandNotFound(KiwiError):
    exit_code = EXIT_NOT_FOUND


class ChildBug(KiwiError):
    """A programming error in a forked helper (kiwi/proc.py): one line for the user, the
    helper's own traceback for KIWI_DEBUG=1. A KiwiError so that callers that go on after
    a failed helper go on after this one too."""

    def __init__(self, kind: str, text: str, child_traceback: str):
        super().__init__(one_line(f"internal error: {kind}: {text} ({DEBUG_HINT})"))
        self.child_traceback = child_traceback


def one_line(text: str) -> str:
    return printable(shortened(" ".join(str(text).split())))


# An error line names what an archive or a container chose (a member's name, a file's path)
# and a tar long name may be 64 KiB: the line keeps its start and its end (what to do).
LINE_HEAD, LINE_TAIL = 3000, 1000


def shortened(line: str) -> str:
    if len(line) <= LINE_HEAD + LINE_TAIL + 100:
        return line
    left_out = len(line) - LINE_HEAD - LINE_TAIL
    return f"{line[:LINE_HEAD]} [...{left_out} characters left out...] {line[-LINE_TAIL:]}"


# C0 controls (those split() leaves), DEL and C1: what a terminal acts on.
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """text with each control character shown as \\xNN: what a container chose (its file
    names, its processes' command lines) never reaches the admin's terminal raw."""
    return str(text).translate(CONTROLS)


def os_error_message(e: OSError, op: str | None = None, path=None) -> str:
    """`cannot <op> <path>: <strerror>` plus what to do, for the errors users can fix."""
    path = path if path is not None else e.filename
    where = f" {os.fsdecode(path)}" if path is not None else ""
    if e.filename2 is not None:
        where += f" -> {os.fsdecode(e.filename2)}"
    reason = e.strerror or one_line(str(e)) or type(e).__name__
    hint = ""
    if e.errno == errno.ENOSPC:
        hint = "; free some space and try again"
    elif e.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        hint = "; run it as root: sudo kiwi ..."
    elif e.errno == errno.EROFS:
        hint = "; that filesystem is read-only"
    if op is None and not where:
        return one_line(f"{reason}{hint}")  # a syscall wrapper's own text names the call
    return one_line(f"cannot {op or 'use'}{where}: {reason}{hint}")


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def describe(e: BaseException) -> str:
    """One line for any exception (what a helper process sends back to kiwi)."""
    if isinstance(e, KiwiError):
        return one_line(e.message)
    if isinstance(e, OSError):
        return os_error_message(e)
    if isinstance(e, RecursionError):
        return "the files are nested too deeply"
    return one_line(f"internal error: {type(e).__name__}: {e} ({DEBUG_HINT})")


def debug_enabled() -> bool:
    return os.environ.get("KIWI_DEBUG") == "1"


def traceback_if_debug() -> None:
    """With KIWI_DEBUG=1, the traceback of the exception being handled goes to stderr."""
    if debug_enabled():
        import traceback

        try:
            traceback.print_exc()
        except Exception:  # noqa: BLE001 - stderr may be gone
            pass


class Doing:
    """`with Doing("write", path):` turns an OSError into one KiwiError line naming both."""

    def __init__(self, op: str, path=None):
        self.op, self.path = op, path

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if isinstance(value, OSError):
            raise KiwiError(os_error_message(value, self.op, self.path)) from value
        return False


class GoingOn:
    """`with GoingOn(failures, "removing X"):` a step of a teardown or cleanup that may fail
    while the rest goes on: its error becomes one line in failures, for the caller to report."""

    def __init__(self, failures: list[str], what: str, catch: tuple[type[BaseException], ...] = ()):
        self.failures, self.what = failures, what
        self.catch = catch or (KiwiError, OSError)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if isinstance(value, self.catch):
            # A library's own exception (pyroute2) says enough by its name and text.
            known = isinstance(value, KiwiError | OSError)
            reason = describe(value) if known else one_line(f"{type(value).__name__}: {value}")
            self.failures.append(f"{self.what}: {reason}")
            return True
        return False
