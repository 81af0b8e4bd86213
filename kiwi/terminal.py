"""`kiwi terminal`: an interactive Kiwi console.

Each line runs the same command code as the CLI, in this process (no new
process per line). readline gives line editing, persistent history and Tab
completion of command names, options, containers and images; the command
names and options come from cli.build_parser(), like --help and the man pages.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import termios
import traceback
from pathlib import Path

from .argtools import subcommands
from .errors import KiwiError

PROMPT = "kiwi> "
HISTORY_FILE = ".terminal_history"
HISTORY_LINES = 1000
LEAVE_WORDS = ("exit", "quit")
# Environment the console (and the commands it runs) needs to survive sudo.
PRESERVED_ENV = ("KIWI_ROOT", "KIWI_SUBNET", "KIWI_BRIDGE", "KIWI_CGROUP_PARENT", "KIWI_IMAGE_SERVER", "TERM")
BANNER = (
    "Kiwi terminal: type a command without 'kiwi', 'help' for help; Tab completes; exit or Ctrl-D leaves."
)
CONSOLE_HELP = (
    "\nIn this console: commands are typed without 'kiwi' and quoted like in a shell;\n"
    "Tab completes commands, options, containers and images; Up/Down walk the history;\n"
    "Ctrl-C cancels the line; exit, quit or Ctrl-D leaves."
)


def run_console(build_parser, run) -> int:
    """build_parser and run are cli.py's (the console completes and runs its commands)."""
    require_terminal()
    if os.geteuid() != 0:
        reexec_with_sudo()
    from .store import Store

    console = Console(Store.open(), build_parser(), run)
    return console.loop()


# --- start-up -------------------------------------------------------------------


def require_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise KiwiError("kiwi terminal needs an interactive terminal")


def kiwi_argv() -> list[str]:
    """How to start this same kiwi again: the frozen executable, or the source package."""
    if getattr(sys, "frozen", False):
        from .store import executable_path

        return [str(executable_path())]
    return [sys.executable, "-m", "kiwi"]


def sudo_argv(sudo: str, frozen: bool) -> list[str]:
    names = PRESERVED_ENV if frozen else PRESERVED_ENV + ("PYTHONPATH",)
    return [sudo, "--preserve-env=" + ",".join(names)] + kiwi_argv() + ["terminal"]


def reexec_with_sudo() -> None:
    """Most commands need root: become root once, for the whole console."""
    sudo = shutil.which("sudo")
    if not sudo:
        again = " ".join(kiwi_argv() + ["terminal"])
        raise KiwiError(
            "kiwi terminal needs root and sudo is not installed; "
            f"install sudo or start it as root: su -c '{again}'"
        )
    frozen = getattr(sys, "frozen", False)
    if not frozen:
        # sudo starts elsewhere with a clean path; the package must still be importable.
        package_parent = str(Path(__file__).resolve().parent.parent)
        os.environ["PYTHONPATH"] = package_parent
    argv = sudo_argv(sudo, frozen)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise KiwiError(f"could not run sudo: {e.strerror}") from None


# --- the parser as data for completion ------------------------------------------------


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def option_actions(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in sub._actions for opt in a.option_strings}


def positional_actions(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sub._actions if not a.option_strings]


# --- completion -------------------------------------------------------------------------


class Completer:
    """readline completer: what the word under the cursor can become."""

    def __init__(self, store, parser: argparse.ArgumentParser):
        self.store = store
        self.commands = subcommands(parser)
        self.matches: list[str] = []

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            before = readline.get_line_buffer()[: readline.get_begidx()]
            try:
                self.matches = self.candidates(words_of(before), text)
            except Exception:  # noqa: BLE001 - a failing Tab must never break the prompt
                self.matches = []
        return self.matches[state] if state < len(self.matches) else None

    def candidates(self, words: list[str], text: str) -> list[str]:
        if words[:1] == ["kiwi"]:
            words = words[1:]
        if not words:
            options = list(self.commands) + list(LEAVE_WORDS)
        else:
            options = self.for_command(words[0], words[1:], text)
        found = sorted({o for o in options if o.startswith(text)})
        # Python's readline appends nothing itself; a finished word gets its space here.
        return [found[0] + " "] if len(found) == 1 else found

    def for_command(self, command: str, args: list[str], text: str) -> list[str]:
        sub = self.commands.get(command)
        if sub is None or "--" in args:
            return []  # after '--' the words belong to the command run in the container
        options = option_actions(sub)
        if args and args[-1] in options and takes_value(options[args[-1]]):
            option = options[args[-1]]
            return list(option.choices or []) or (self.session_ids() if option.metavar == "SESSION" else [])
        if text.startswith("-"):
            return [o for o in options if o.startswith("--")] + (["--"] if command == "attach" else [])
        action = next_positional(sub, args, options)
        return self.values_for(command, action) if action else []

    def values_for(self, command: str, action: argparse.Action) -> list[str]:
        if action.choices:
            return list(action.choices)
        if action.dest == "container":
            return self.container_refs()
        if action.dest == "topic":
            return list(self.commands)
        if action.dest == "image" and command == "create":
            return self.image_names()
        if action.dest == "target" and command == "logs":
            return self.container_refs() + self.session_ids()
        return []

    def container_refs(self) -> list[str]:
        if self.store is None:  # `kiwi __complete` for a user who cannot read the data folder
            return []
        with contextlib.suppress(OSError, KiwiError):
            return self.store.container_ids() + list(self.store.container_names())
        return []

    def image_names(self) -> list[str]:
        try:
            return [p.name for p in self.store.images_dir.iterdir() if p.is_dir()]
        except (OSError, AttributeError):
            return []

    def session_ids(self) -> list[str]:
        from .sessions import records

        with contextlib.suppress(OSError, KiwiError, AttributeError):
            return [
                sid
                for cid in records.containers_with_runtime(self.store)
                for sid in records.session_ids(self.store, cid)
            ]
        return []


def next_positional(sub, args: list[str], options: dict) -> argparse.Action | None:
    """The positional argument the next word fills, skipping options and their values."""
    filled = 0
    skip_value = False
    for word in args:
        if skip_value:
            skip_value = False
        elif word.startswith("-"):
            skip_value = word in options and takes_value(options[word])
        else:
            filled += 1
    positionals = positional_actions(sub)
    if filled < len(positionals):
        return positionals[filled]
    if positionals and positionals[-1].nargs in ("*", "+"):
        return positionals[-1]
    return None


def words_of(text: str) -> list[str]:
    """Words before the cursor; an open quote still splits on white space."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


# --- history ----------------------------------------------------------------------------


class History:
    """readline history kept in <kiwi-data>/.terminal_history (0600, bounded)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> None:
        import readline

        readline.set_history_length(HISTORY_LINES)
        with contextlib.suppress(OSError):
            readline.read_history_file(self.path)

    def add(self, line: str) -> None:
        """Remember the line and save at once, so a crash does not lose it."""
        import readline

        count = readline.get_current_history_length()
        if count and readline.get_history_item(count) == line:
            return
        readline.add_history(line)
        self.save()

    def save(self) -> None:
        import readline

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create it private first: commands typed here may name secrets.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            readline.write_history_file(self.path)
            os.chmod(self.path, 0o600)
        except OSError as e:
            print(f"kiwi: cannot save the history to {self.path}: {e.strerror}", file=sys.stderr)


# --- the console ------------------------------------------------------------------------


class Console:
    def __init__(self, store, parser, run):
        self.store, self.run = store, run
        self.history = History(store.root / HISTORY_FILE)
        self.completer = Completer(store, parser)
        self.window = WindowSize()

    def loop(self) -> int:
        self.setup_readline()
        self.window.install()
        print(BANNER, flush=True)
        while True:
            line = self.read_line()
            if line is None:
                print()
                return 0
            argv = self.parse_line(line)
            if not argv:
                continue
            if argv[0] in LEAVE_WORDS:
                return 0
            self.run_line(argv)

    def setup_readline(self) -> None:
        import readline

        # Quotes and spaces end a word; '-', '.', '_' belong to options, ids and names.
        readline.set_completer_delims(" \t\n\"'")
        readline.set_completer(self.completer)
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        # Answers to prompts (delete asks y/N) must not land in the history.
        readline.set_auto_history(False)
        self.history.load()

    def read_line(self) -> str | None:
        """One line from the user; None on Ctrl-D. Ctrl-C gives a fresh prompt."""
        while True:
            try:
                with self.window.reading():
                    return input(PROMPT)
            except EOFError:
                return None
            except KeyboardInterrupt:
                print(flush=True)  # the cancelled line stays visible; start a fresh one

    def parse_line(self, line: str) -> list[str]:
        if not line.strip():
            return []
        self.history.add(line)
        try:
            argv = shlex.split(line)
        except ValueError as e:
            report(lower_first(str(e)))
            return []
        if argv[:1] == ["kiwi"]:
            argv = argv[1:]  # habit from the shell: 'kiwi list' works too
        return argv

    def run_line(self, argv: list[str]) -> None:
        if argv[0] == "terminal":
            report("you are already in the Kiwi terminal")
            return
        if argv[0] not in self.completer.commands and not argv[0].startswith("-"):
            from .argtools import HIDDEN_ALIASES, did_you_mean

            if argv[0] not in HIDDEN_ALIASES:
                report(did_you_mean(argv[0], list(self.completer.commands)))
                return
        saved = TerminalState.save()
        try:
            self.run_command(argv)
        finally:
            saved.restore()

    def run_command(self, argv: list[str]) -> None:
        try:
            status = self.run(argv)
            if argv[0] == "help" and len(argv) == 1:
                print(CONSOLE_HELP, flush=True)
            if status:
                report(f"exit status {status}")
        except KiwiError as e:
            report(f"{e.message} (exit status {e.exit_code})")
        except SystemExit:
            pass  # --help and --version end with SystemExit; the console goes on
        except KeyboardInterrupt:
            print(file=sys.stderr)
            report("interrupted")
        except Exception:  # noqa: BLE001 - a bug in one command must not end the console
            traceback.print_exc()
            report("internal error (traceback above); the console goes on")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def report(message: str) -> None:
    from .errors import one_line

    print(f"kiwi: {one_line(message)}", file=sys.stderr, flush=True)


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class TerminalState:
    """The terminal's modes and foreground group, put back after each command.

    A command that leaves the terminal raw, or a shell in the container that
    took the foreground, must not leave readline with a broken prompt.
    """

    def __init__(self, fd: int, attrs, pgrp: int):
        self.fd, self.attrs, self.pgrp = fd, attrs, pgrp

    @classmethod
    def save(cls) -> TerminalState:
        fd = sys.stdin.fileno()
        try:
            return cls(fd, termios.tcgetattr(fd), os.tcgetpgrp(fd))
        except OSError:
            return cls(fd, None, -1)

    def restore(self) -> None:
        if self.attrs is None:
            return
        # Changing the terminal from the background would stop us with SIGTTOU.
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            with contextlib.suppress(OSError):
                if os.tcgetpgrp(self.fd) != self.pgrp:
                    os.tcsetpgrp(self.fd, self.pgrp)
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.attrs)
        finally:
            signal.signal(signal.SIGTTOU, old)


class WindowSize:
    """Keeps readline's idea of the window size right across commands.

    readline learns about resizes from a C-level SIGWINCH handler. A command
    that saves and restores SIGWINCH from Python (the session client does)
    can only put back SIG_DFL, and readline would go on wrapping long lines
    at the old width. A Python-level handler survives such a save/restore;
    it reaches GNU readline's own resize functions through ctypes.
    """

    def __init__(self):
        self.lib = loaded_readline_library()
        self.in_readline = False

    def install(self) -> None:
        if self.lib is not None:
            signal.signal(signal.SIGWINCH, self.on_resize)

    def on_resize(self, signum, frame) -> None:
        if self.in_readline:
            self.lib.rl_resize_terminal()  # new size and redraw of the line being edited
        else:
            self.lib.rl_reset_screen_size()  # a command owns the screen: no redraw

    @contextlib.contextmanager
    def reading(self):
        if self.lib is not None:
            self.lib.rl_reset_screen_size()  # the window may have changed during a command
        self.in_readline = True
        try:
            yield
        finally:
            self.in_readline = False


def loaded_readline_library():
    """GNU readline as loaded by the readline module (bundled in the frozen kiwi), or None."""
    import ctypes
    import readline  # noqa: F401 - loads the library looked up below

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libreadline.so" in line}
        for path in paths:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "rl_resize_terminal") and hasattr(lib, "rl_reset_screen_size"):
                return lib
    except OSError:
        pass
    return None
