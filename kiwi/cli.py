"""Command line: one argparse parser feeds --help, the man pages and completion.

Only this module and commands.py print. Layers are imported inside the command
that needs them, so `kiwi --version` or `kiwi list` stay fast.
"""

from __future__ import annotations

import os
import sys

from . import __version__
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KiwiError,
    describe,
    one_line,
    os_error_message,
    traceback_if_debug,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse

PROG = "kiwi"
VERSION_TEXT = f"{PROG} {__version__}"

# Commands that work without root where the files allow it ('terminal'
# re-runs itself through sudo).
READ_ONLY_COMMANDS = {"list", "ip", "sessions", "help", "terminal"}


class UsageError(KiwiError):
    exit_code = EXIT_USAGE


def parser_class():
    """argparse, but a usage mistake is one `kiwi: ...` line and exit 2.

    Built on first use: importing argparse is a visible part of `kiwi --version`."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            hint = self.prog if self.prog != PROG else PROG
            raise UsageError(f"{message}; see '{hint} --help'")

    return Parser


def build_parser() -> argparse.ArgumentParser:
    Parser = parser_class()
    parser = Parser(
        prog=PROG,
        description="Kiwi: small Linux containers you learn in two minutes. "
        "Data lives in kiwi-data/ beside the kiwi executable (KIWI_ROOT overrides).",
        epilog="A container is named by its id, any unique prefix of its id, or its name. "
        "'kiwi help <command>' shows a command's help.",
    )
    parser.add_argument("--version", action="version", version=VERSION_TEXT)
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)

    p = sub.add_parser("list", help="list containers and images")
    p.add_argument(
        "what",
        nargs="?",
        choices=["containers", "images", "all"],
        default="containers",
        help="what to list (default: containers)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("pull", help="download a distribution image and verify it")
    p.add_argument("distro", choices=["alpine", "debian"], help="distribution")
    p.add_argument("--release", help="release, e.g. 3.20 or bookworm (default: newest/stable)")
    p.add_argument("--arch", help="architecture: amd64, arm64, armhf (default: this host)")
    p.add_argument("--variant", default="default", help="image variant (default: default)")

    p = sub.add_parser("import", help="turn a rootfs tarball into an image")
    p.add_argument("--name", required=True, help="image name")
    p.add_argument("archive", help="rootfs archive: .tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2")

    p = sub.add_parser("create", help="create a container from an image or a .kiwi file")
    p.add_argument("image", help="image name or path to a .kiwi archive")
    p.add_argument("--name", help="container name")
    p.add_argument("--storage", help="storage limit, e.g. 1G (default 1G), or 'host' for no limit")
    p.add_argument("--memory", help="memory limit, e.g. 256M, or 'host' (replaces a .kiwi file's)")
    p.add_argument("--cpu", help="number of CPUs, or 'host' (replaces a .kiwi file's)")
    p.add_argument(
        "--network",
        choices=["host", "separate"],
        help="share the host's network or not (default separate; never taken from a .kiwi file)",
    )
    p.add_argument(
        "--sparse",
        action="store_true",
        help="do not reserve the storage limit on the host's disk (may run out when the host fills)",
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        default=None,
        help="root inside is root of the host (no user namespace); only for what needs real root",
    )

    p = sub.add_parser("set", help="change a container's settings")
    p.add_argument("container")
    p.add_argument("--memory", help="memory limit, e.g. 256M (bare number = MiB), or 'host'")
    p.add_argument("--cpu", help="number of CPUs, or 'host'")
    p.add_argument("--storage", help="storage limit (at least 1G), or 'host'")
    reserve = p.add_mutually_exclusive_group()
    reserve.add_argument(
        "--sparse",
        dest="sparse",
        action="store_true",
        default=None,
        help="stop reserving the storage limit on the host's disk",
    )
    reserve.add_argument(
        "--reserve",
        dest="sparse",
        action="store_false",
        default=None,
        help="reserve the whole storage limit on the host's disk (the default)",
    )
    p.add_argument("--network", choices=["host", "separate"], help="share the host's network or not")
    p.add_argument("--shell", help="shell for sessions, an absolute path inside the container")
    p.add_argument(
        "--privileged",
        choices=["yes", "no"],
        help="yes: root inside is root of the host; no: its own user namespace (stopped only)",
    )

    p = sub.add_parser(
        "attach",
        help="start if needed and open a session or run a command",
        description="Start the container if needed. Without a command: a new managed "
        "session with a shell (detach with Ctrl-\\, reattach with --old). "
        "With '-- cmd args': run it and pass its exit status through.",
    )
    p.add_argument("container", nargs="?")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--direct", action="store_true", help="shell or command straight on this terminal, no session daemon"
    )
    mode.add_argument(
        "--session", action="store_true", help="a new managed session (the default without a command)"
    )
    mode.add_argument("--old", metavar="SESSION", help="reattach to a session that is still alive")
    p.add_argument(
        "--detach-key",
        default="ctrl-\\",
        metavar="KEY",
        help="key that detaches from a session, e.g. ctrl-\\ (default) or ctrl-]",
    )
    p.add_argument(
        "--takeover", action="store_true", help="with --old: take over a session attached elsewhere"
    )
    p.add_argument("cmd", nargs="*", metavar="-- cmd", help="command and arguments to run")

    p = sub.add_parser("sessions", help="list, kill or delete a container's sessions")
    p.add_argument("container")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kill", metavar="SESSION", help="end the session's processes")
    g.add_argument("--delete", metavar="SESSION", help="end and remove the session")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("stop", help="stop a container: SIGTERM, grace period, then kill")
    p.add_argument("container")
    p.add_argument("--time", type=int, default=10, metavar="SECONDS", help="grace period (default 10)")

    p = sub.add_parser("delete", help="delete a container and its data")
    p.add_argument("container")
    p.add_argument("--yes", action="store_true", help="do not ask (required without a terminal)")

    p = sub.add_parser("ip", help="print a container's IPv4 address")
    p.add_argument("container")

    sub.add_parser("cleanup", help="remove what a crash left behind (Kiwi's own only)")

    p = sub.add_parser("mount", help="mount a container's whole filesystem on the host")
    p.add_argument("container")
    p.add_argument("target", help="an empty folder")

    p = sub.add_parser("unmount", help="remove the host mount made by 'kiwi mount'")
    p.add_argument("container")

    p = sub.add_parser("snap", help="write a portable .kiwi archive of a container")
    p.add_argument("container")
    p.add_argument("snapshot", help="snapshot name; the file is kiwi-data/<id>-<snapshot>.kiwi")

    p = sub.add_parser("commit", help="turn a container into a new base image")
    p.add_argument("container")
    p.add_argument("image", help="new image name")

    sub.add_parser("terminal", help="interactive Kiwi console")

    sub.add_parser("migrate", help="adopt the containers and images of the original Go Kiwi")

    p = sub.add_parser("help", help="show help for a command")
    p.add_argument("topic", nargs="?", help="command")
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the first '--' is the command to run in the container."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def join_negative_values(argv: list[str]) -> list[str]:
    """`--memory -5M` -> `--memory=-5M`: argparse would take -5M for an option and
    say "expected one argument"; joined, the value's own check says what is wrong."""
    joined: list[str] = []
    for arg in argv:
        prev = joined[-1] if joined else ""
        if arg[:1] == "-" and arg[1:2].isdigit() and prev.startswith("--") and "=" not in prev:
            joined[-1] = f"{prev}={arg}"
        else:
            joined.append(arg)
    return joined


def parse(argv: list[str]) -> argparse.Namespace:
    head, command = split_command(argv)
    parser = build_parser()
    args = parser.parse_args(join_negative_values(head))
    if command is not None:
        if args.command != "attach":
            raise UsageError("'--' and a command only go with 'kiwi attach'")
        args.cmd = (args.cmd or []) + command
    args.parser = parser
    return args


def require_root(command: str) -> None:
    if command not in READ_ONLY_COMMANDS and os.geteuid() != 0:
        raise KiwiError(f"'{command}' needs root; run it as: sudo {PROG} {command} ...")


def run(argv: list[str]) -> int:
    if argv == ["--version"]:
        # Same output as argparse's version action, without building the parser.
        print(VERSION_TEXT)
        return EXIT_OK
    args = parse(argv)
    if not args.command:
        args.parser.print_help()
        return EXIT_OK
    require_root(args.command)
    from . import commands

    return getattr(commands, "cmd_" + args.command)(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except KiwiError as e:
        return fail(e.message, e.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `kiwi list | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        return fail(os_error_message(e))
    except Exception as e:  # noqa: BLE001 - the last resort: never a traceback by default
        return fail(describe(e))


def fail(message: str, code: int = EXIT_ERROR) -> int:
    """The one line a failed command prints; the traceback too with KIWI_DEBUG=1."""
    traceback_if_debug()
    try:
        print(f"{PROG}: {one_line(message)}", file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr itself is gone: the exit code still tells
    return code
