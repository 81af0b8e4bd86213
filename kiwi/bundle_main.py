"""Entry point of the one-file kiwi: cffi_build/embed.c runs `run()` in the
bundled interpreter (kiwi/__main__.py is the entry in source mode)."""

from __future__ import annotations

import os
import sys


def run() -> None:
    sys.frozen = True  # what store.executable_path and terminal.kiwi_argv look at
    sys._MEIPASS = sys.prefix + "/_internal"  # security.helper_binary_path
    from .cli import main

    try:
        code = main()
    except SystemExit as e:  # argparse's --help and usage errors
        code = e.code
    exit_now(exit_status(code))


def exit_status(code) -> int:
    """sys.exit's rules: None is 0, an int is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def exit_now(status: int) -> None:
    """Exit without the interpreter's finalization: freeing every module and
    object one by one took 0.2-1 s after a command that loaded pyroute2.
    What finalization would do that matters runs first: other threads are
    waited for, atexit handlers run, stdout and stderr are flushed."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # `kiwi --help | head`: the reader left, no error worth a message
        except (OSError, ValueError):
            pass  # stderr itself gone or closed: the exit status still tells
    os._exit(status)
