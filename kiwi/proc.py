"""Forked children and how they report back; the small process helpers around them.

One protocol for every Python child kiwi forks (the two start stages, the
session daemon, privatens helpers): the child writes reports to a pipe, one
JSON object per line, and the parent reads them with a bounded reader.

    {"kind": "<name>", "value": ...}     progress or the result ("ok")
    {"kind": "error", "class": "kiwi.errors.CommandNotFound", "message": ..., "exit_code": 127}
    {"kind": "bug", "type": "AttributeError", "message": ..., "traceback": ...}

A KiwiError raised in the child is raised again in the parent as the same
class with the same message; an OSError becomes its one-line KiwiError; any
other exception arrives as errors.ChildBug carrying the child's traceback
(the CLI shows it with KIWI_DEBUG=1). Payloads are plain JSON, never pickle:
a child may have run through code paths a container influences, and the
parent must not deserialize objects from it.
"""

from __future__ import annotations

import os

from .errors import EXIT_SIGNAL_BASE, ChildBug, KiwiError, describe, exit_code_for_signal
from .peek import process_start_time, stat_fields  # noqa: F401 - their callers import them from here

# signal where it is used: its enums (enum, functools) were ~2 ms of a stop before its SIGTERM (issue 20).

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

REPORT_LIMIT = 4 << 20  # bytes a child may send in all; results are small JSON documents
TRACEBACK_LIMIT = 64 << 10  # the tail of a long traceback is the useful part
HELPER_DIED = "a helper process {how}; run 'kiwi cleanup' and try again"


# --- small helpers ------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """A zombie (killed a moment ago, not yet reaped) is dead too."""
    return process_start_time(pid) is not None


def exit_code_of(wstatus: int) -> int:
    """The shell's convention: the exit status, or 128+n when killed by signal n."""
    if os.WIFSIGNALED(wstatus):
        return exit_code_for_signal(os.WTERMSIG(wstatus))
    return os.waitstatus_to_exitcode(wstatus)


def wait_exit_code(pid: int) -> int:
    while True:
        try:
            return exit_code_of(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def read_to_end(fd: int, limit: int = REPORT_LIMIT) -> bytes:
    """Everything up to EOF, at most limit bytes (the rest is left unread)."""
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(1 << 16, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, also to a non-blocking fd (waits until it takes more)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        view = view[written:]


def stdio_to_devnull() -> None:
    """fds 0-2 become /dev/null: a child that outlives the command lets go of its terminal."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)


def stop_helper(pid: int, grace: float = 2.0) -> None:
    """SIGTERM first: a helper that inherited our signal handlers unwinds and removes its
    work files; SIGKILL when it has not ended after grace seconds."""
    import signal
    import time

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Background:
    """fn(*args) in a thread of its own, for work that mostly waits in the kernel; wait()
    joins it and raises what fn raised, in the caller's thread. On _thread: importing
    threading is a visible part of `kiwi stop` (1-15 ms, more the busier the machine)."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        import _thread

        self.error: BaseException | None = None
        self.running = _thread.allocate_lock()
        self.running.acquire()
        _thread.start_new_thread(self._run, (fn, args))

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - wait() raises it in the caller's thread
            self.error = e
        finally:
            self.running.release()

    def wait(self) -> None:
        self.running.acquire()
        self.running.release()  # a second wait() returns at once
        if self.error is not None:
            raise self.error


# --- the child's side -------------------------------------------------------------------


class Report:
    """The child's end of the pipe. Forked grandchildren may share it (the start stages)."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, kind: str, value: Any = None) -> None:
        import json

        line = json.dumps({"kind": kind, "value": value}, separators=(",", ":"))
        write_all(self.fd, line.encode() + b"\n")

    def failure(self, e: BaseException) -> None:
        """Send what went wrong; never raises (the child is about to exit)."""
        import json

        try:
            write_all(self.fd, json.dumps(failure_report(e)).encode() + b"\n")
        except Exception:  # noqa: BLE001 - the pipe is gone: the parent sees the exit status
            pass


def failure_report(e: BaseException) -> dict:
    if isinstance(e, KiwiError):
        cls = type(e)
        return {
            "kind": "error",
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "message": e.message,
            "exit_code": e.exit_code,
        }
    if isinstance(e, OSError | RecursionError):
        # The environment, not a bug: the one line errors.describe words for it.
        return {"kind": "error", "class": "kiwi.errors.KiwiError", "message": describe(e), "exit_code": 1}
    text = traceback_text(e)
    return {"kind": "bug", "type": type(e).__name__, "message": str(e), "traceback": text[-TRACEBACK_LIMIT:]}


def traceback_text(e: BaseException) -> str:
    """e's traceback as text, importing nothing: a child may be past its pivot_root (start
    stage 2), where an import would search the container's files. The traceback module
    when kiwi has it loaded, else the frames alone (file, line, function): importing it
    before every fork cost the start ~2 ms (issue 20) for a report that is a bug's only."""
    import sys  # built in: always loaded

    loaded = sys.modules.get("traceback")
    if loaded is not None:
        return "".join(loaded.format_exception(e))
    lines = ["Traceback (most recent call last):\n"]
    frame = e.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}\n')
        frame = frame.tb_next
    lines.append(f"{type(e).__name__}: {e}\n")
    return "".join(lines)


def child_main(report: Report, body: Callable[..., Any], *args: Any) -> NoReturn:
    """Run body(report, *args) in a forked child and exit: 0 when it returns, 1 after
    reporting its exception. Never unwinds into the parent's code."""
    code = 1
    try:
        body(report, *args)
        code = 0
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        report.failure(e)
    finally:
        while True:  # a signal handler inherited from kiwi may raise at any moment
            try:
                os._exit(code)
            except BaseException:  # noqa: BLE001 - never unwind into the parent's code
                continue


# --- the parent's side ------------------------------------------------------------------


class Child:
    """fork(); the child runs body(report, *args). The parent has .pid at once and reads
    the reports with read() or result()."""

    def __init__(self, body: Callable[..., Any], *args: Any):
        # What Report.failure needs, imported before the fork: the child may end up where
        # kiwi's own files are out of reach (stage 2 after pivot_root), and a failed import
        # there would lose the report. A bug's traceback needs none (traceback_text).
        import json  # noqa: F401

        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            os.close(read_fd)
            child_main(Report(write_fd), body, *args)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd
        self.pending = b""
        self.received = 0
        self.reported = False  # the child sent its error: it is exiting by itself

    def read(self, until: str | None = None) -> list[tuple[str, Any]]:
        """The (kind, value) reports up to EOF, or up to the first of kind `until` (a
        child that handed the pipe on to a long-lived process). An error or bug report
        is raised as such; a malformed or oversized report is one KiwiError."""
        reports: list[tuple[str, Any]] = []
        while True:
            line = self.next_line()
            if line is None:
                return reports
            kind, value = parse_report(line)
            if isinstance(value, KiwiError) and kind in ("error", "bug"):
                self.reported = True
                raise value
            reports.append((kind, value))
            if kind == until:
                return reports

    def next_line(self) -> bytes | None:
        while b"\n" not in self.pending:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                if self.pending:
                    raise KiwiError(HELPER_DIED.format(how="sent a malformed report"))
                return None
            self.received += len(chunk)
            if self.received > REPORT_LIMIT:
                raise KiwiError(HELPER_DIED.format(how="sent more than a report"))
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def wait(self) -> int:
        """The child's exit status (128+n when killed by signal n)."""
        try:
            return wait_exit_code(self.pid)
        except ChildProcessError:
            return 0  # reaped already (SIGCHLD ignored): its reports tell

    def result(self, stop_on_interrupt: bool = False) -> Any:
        """The value of the "ok" report; raises what the child raised, or one line saying
        how it died. stop_on_interrupt: when reading fails (a signal turned into an
        exception, garbage on the pipe), stop the child before passing it on."""
        try:
            reports = self.read(until="ok")
        except BaseException:
            if stop_on_interrupt and not self.reported:
                self.close()  # a writer that goes on gets EPIPE
                stop_helper(self.pid)
            raise
        finally:
            self.close()
            status = self.wait()
        for kind, value in reports:
            if kind == "ok":
                return value
        raise died(status)


def died(status: int) -> KiwiError:
    if status > EXIT_SIGNAL_BASE:
        import signal

        try:
            name = signal.Signals(status - EXIT_SIGNAL_BASE).name
        except ValueError:
            name = f"signal {status - EXIT_SIGNAL_BASE}"
        return KiwiError(HELPER_DIED.format(how=f"was killed by {name}"))
    return KiwiError(HELPER_DIED.format(how=f"ended (status {status}) without reporting back"))


def parse_report(line: bytes) -> tuple[str, Any]:
    """(kind, value); for "error" and "bug" the value is the exception to raise."""
    import json

    try:
        report = json.loads(line)
        kind = report["kind"]
    except (ValueError, TypeError, KeyError):
        raise KiwiError(HELPER_DIED.format(how="sent a malformed report")) from None
    if not isinstance(kind, str):
        raise KiwiError(HELPER_DIED.format(how="sent a malformed report"))
    if kind == "error":
        return kind, rebuild_error(report)
    if kind == "bug":
        return kind, ChildBug(
            str(report.get("type", "?")), str(report.get("message", "")), str(report.get("traceback", ""))
        )
    return kind, report.get("value")


def rebuild_error(report: dict) -> KiwiError:
    """The child's KiwiError as the same class (looked up among kiwi's loaded modules
    only, never imported or constructed by name beyond that) and message."""
    import sys

    cls: type[KiwiError] = KiwiError
    module, _, name = str(report.get("class", "")).rpartition(".")
    found = getattr(sys.modules.get(module), name, None) if module.startswith("kiwi.") else None
    if isinstance(found, type) and issubclass(found, KiwiError):
        cls = found
    error = cls.__new__(cls)
    KiwiError.__init__(error, str(report.get("message", "")))
    code = report.get("exit_code")
    if isinstance(code, int) and code != cls.exit_code:
        error.exit_code = code
    return error


def run_child(fn: Callable[..., Any], *args: Any, stop_on_interrupt: bool = True) -> Any:
    """fn(*args) in a forked child; returns its result, which must be plain JSON data
    (tuples come back as lists)."""
    return Child(return_value, fn, *args).result(stop_on_interrupt=stop_on_interrupt)


def return_value(report: Report, fn: Callable[..., Any], *args: Any) -> None:
    report.send("ok", fn(*args))
