"""Command line: one argparse parser feeds --help, the man pages and completion.

Only this module and commands.py print. Layers are imported inside the command
that needs them, so `kiwi --version` or `kiwi list` stay fast.
"""

from __future__ import annotations

import os
import sys

from . import version_text
from .argtools import HIDDEN_ALIASES, did_you_mean, subcommands
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KiwiError,
    debug_enabled,
    describe,
    one_line,
    os_error_message,
    traceback_if_debug,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse

PROG = "kiwi"

# Commands that work without root where the files allow it ('terminal'
# re-runs itself through sudo).
READ_ONLY_COMMANDS = {"list", "ip", "sessions", "help", "terminal", "completion"}
# What the completion scripts run on Tab: not a command users type, not in --help.
COMPLETE_WORD = "__complete"


# What `kiwi list` lists; its default comes first.
LIST_WHAT = ("containers", "images", "exports", "all")

# `kiwi stop`'s grace period in seconds when --time is not given.
STOP_GRACE = 10

# docker exec's -i/-t: Kiwi gives a command a terminal when it has one anyway.
EXEC_IGNORED = {"-i", "-t", "-it", "-ti", "--interactive", "--tty"}


class UsageError(KiwiError):
    exit_code = EXIT_USAGE


def untranslated_argparse(argparse) -> None:
    """argparse passes each of its ~60 strings per parser build through gettext,
    which searches for a message catalogue every time (locale.normalize and
    stats): ~90% of building kiwi's parser, paid by every command. Kiwi's
    messages are English only, and neither Python nor the bundle ships argparse
    catalogues."""
    argparse._ = str
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural


def parser_class():
    """argparse, but a usage mistake is one `kiwi: ...` line and exit 2.

    Built on first use: importing argparse is a visible part of `kiwi --version`."""
    import argparse

    untranslated_argparse(argparse)

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
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--debug", action="store_true", help="show tracebacks (as KIWI_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)

    p = sub.add_parser("list", help="list containers and images")
    p.add_argument(
        "what",
        nargs="?",
        choices=LIST_WHAT,
        default=LIST_WHAT[0],
        help="what to list (default: containers); exports: the .kiwi files in the data folder",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "pull",
        help="download a distribution or an OCI image and verify it",
        description="A bare name (alpine, debian, ...) comes from the LXC image server; "
        "a reference with a tag, digest or registry (alpine:3.20, ghcr.io/o/i@sha256:..., "
        "localhost:5000/x) from that OCI registry.",
    )
    p.add_argument("distro", metavar="image", help="distribution name, or OCI image reference")
    p.add_argument("--release", help="release, e.g. 3.20 or bookworm (default: newest/stable)")
    p.add_argument("--arch", help="architecture: amd64, arm64, armhf (default: this host)")
    p.add_argument("--variant", default="default", help="image variant (default: default)")
    add_registry_options(p)
    p.add_argument("--name", help="OCI: image name (default: from the reference, e.g. alpine-3.20)")

    p = sub.add_parser(
        "import", help="turn a rootfs tarball, an OCI layout or a docker save tar into an image"
    )
    p.add_argument("--name", required=True, help="image name")
    p.add_argument(
        "archive",
        help="rootfs archive (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2), OCI layout (folder or tar)"
        " or docker save tar",
    )

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

    p = sub.add_parser(
        "set",
        help="change a container's settings",
        description="Change a container's settings; it need not run. On a running container "
        "--memory and --cpu apply at once, --storage grows it online (shrinking needs it "
        "stopped), --sparse/--reserve apply at once, --shell applies to the next session, "
        "and --network applies at the next start.",
    )
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
        "--autostart",
        choices=["yes", "no"],
        help="start the container at boot with 'kiwi autostart' (see 'kiwi autostart --install')",
    )
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
        "With '-- cmd args': run it and pass its exit status through (126: it cannot be "
        "executed, 127: it is not found), or with --session run it in a detachable session "
        "that ends when it ends. "
        "With '--' and nothing after it: the image's own command (OCI Entrypoint + Cmd).",
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
    p.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="NAME=VALUE",
        help="set an environment variable for the command (repeatable)",
    )
    p.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory, an absolute path inside the container"
    )
    p.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="run as this user (and group): names from the container's /etc/passwd and /etc/group, "
        "or numeric ids; default root",
    )
    p.add_argument("cmd", nargs="*", metavar="-- cmd", help="command and arguments to run")

    p = sub.add_parser("sessions", help="list, kill or delete a container's sessions")
    p.add_argument("container")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kill", metavar="SESSION", help="end the session's processes")
    g.add_argument("--delete", metavar="SESSION", help="end and remove the session and its log")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("start", help="start a container without attaching to it")
    p.add_argument("container")

    p = sub.add_parser("restart", help="stop a container (as 'kiwi stop' does), then start it")
    p.add_argument("container")
    p.add_argument("--time", type=int, default=10, metavar="SECONDS", help="grace period (default 10)")

    p = sub.add_parser(
        "rename",
        help="give a container a new name",
        description="Give a container a new name; it may be running. Its hostname "
        "inside follows at the next start.",
    )
    p.add_argument("container")
    p.add_argument("new_name", metavar="new-name")

    p = sub.add_parser(
        "autostart",
        help="start every container marked 'set --autostart yes' (run at boot)",
        description="Start every container of this data folder whose autostart is on "
        "(kiwi set <c> --autostart yes). With --install: write the systemd unit "
        "kiwi-autostart.service that runs this kiwi binary with this data folder at boot; "
        "enable it with 'systemctl enable kiwi-autostart.service'.",
    )
    p.add_argument("--install", action="store_true", help="write the systemd unit instead of starting")
    p.add_argument(
        "--systemd-dir",
        metavar="DIR",
        help="with --install: unit folder (default /etc/systemd/system, or $KIWI_SYSTEMD_DIR)",
    )

    p = sub.add_parser(
        "logs",
        help="show what a session printed, also detached or ended",
        description="Show the output of a session (by id or unique prefix), or of a container's "
        "newest session. Logs are kept until 'kiwi sessions <c> --delete <s>' or 'kiwi delete'; "
        "each holds up to the last 1-2 MiB of output.",
    )
    p.add_argument("target", metavar="session|container")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output until the session ends"
    )
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument(
        "--all", action="store_true", help="with a container: every session's log, each under a header"
    )

    p = sub.add_parser("stop", help="stop a container: SIGTERM, grace period, then kill")
    p.add_argument("container")
    p.add_argument(
        "--time", type=int, default=STOP_GRACE, metavar="SECONDS", help="grace period (default 10)"
    )

    p = sub.add_parser(
        "delete",
        help="delete a container, an image or a .kiwi file",
        description="kiwi delete <container>: delete a container and all its data. "
        "kiwi delete image <name>: delete an image no container uses. "
        "kiwi delete export <file>: delete a .kiwi file shown by 'kiwi list exports'.",
    )
    p.add_argument(
        "container", metavar="container | image | export", help="a container, or the word image or export"
    )
    p.add_argument("name", nargs="?", help="after image or export: the image or .kiwi file to delete")
    p.add_argument("--yes", action="store_true", help="do not ask (required without a terminal)")
    p.add_argument(
        "--force", action="store_true", help="a container that runs or is mounted: stop or unmount it first"
    )

    p = sub.add_parser("inspect", help="every setting and the state of a container, as JSON")
    p.add_argument("container")

    p = sub.add_parser("stats", help="memory, cpu time, processes and storage of running containers")
    p.add_argument("container", nargs="?", help="one container (default: every running one)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("ip", help="print a container's IPv4 address")
    p.add_argument("container")

    sub.add_parser("cleanup", help="remove what a crash left behind (Kiwi's own only)")

    p = sub.add_parser("mount", help="mount a container's whole filesystem on the host")
    p.add_argument("container")
    p.add_argument("target", help="an empty folder")

    p = sub.add_parser("unmount", help="remove the host mount made by 'kiwi mount'")
    p.add_argument("container")

    p = sub.add_parser(
        "cp",
        help="copy files or folders between a container and the host",
        description="kiwi cp <container>:/path host-path copies out of the container, "
        "kiwi cp host-path <container>:/path into it, running or stopped. Paths inside the "
        "container resolve as in the container (its symlinks never lead out). Folders are copied whole, symlinks in them as symlinks; times are kept. Out, "
        "the copy is owned by the user running kiwi, its modes masked by the umask (as cp "
        "without -p); in, it is owned by the container's root, modes kept. With -a the numeric "
        "owners (as the container sees them) and the modes are kept. Setuid/setgid bits never "
        "come out, and go in only with -a. Device nodes, FIFOs and sockets in the source are "
        "refused. Into an existing folder the copy takes the source's name; an existing file is "
        "replaced, and so is a symlink (never followed, but /dev/stdout and /dev/stderr); a "
        "file copied out onto an existing FIFO or character device, or onto /dev/stdout (not "
        "a terminal), is written into it. A host path with a colon is written ./a:b.",
    )
    p.add_argument("source", help="<container>:/path or a host path")
    p.add_argument("dest", help="a host path or <container>:/path")
    p.add_argument(
        "-a",
        "--archive",
        action="store_true",
        help="keep numeric owners and modes (setuid/setgid only into the container)",
    )

    p = sub.add_parser("snap", help="write a portable .kiwi archive of a container")
    p.add_argument("container")
    p.add_argument("snapshot", help="snapshot name; the file is kiwi-data/<id>-<snapshot>.kiwi")

    p = sub.add_parser("commit", help="turn a container into a new base image")
    p.add_argument("container")
    p.add_argument("image", help="new image name")

    p = sub.add_parser("export", help="write a container or image as an OCI image archive")
    p.add_argument("what", metavar="container|image")
    p.add_argument("file", help="the archive to write (oci-archive tar, for skopeo, podman load, ...)")
    p.add_argument("--format", choices=["oci"], default="oci", help="archive format (default: oci)")
    p.add_argument("--tag", default="latest", help="the tag recorded in the archive (default: latest)")

    p = sub.add_parser("push", help="push a container or image to an OCI registry")
    p.add_argument("what", metavar="container|image")
    p.add_argument("reference", help="where to, e.g. registry.example.com/team/app:1.0")
    add_registry_options(p)

    sub.add_parser("terminal", help="interactive Kiwi console")

    p = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Print a completion script; it completes commands, options, and the names of "
        'containers, images and sessions. bash: eval "$(kiwi completion bash)" in ~/.bashrc, '
        "or save it as /etc/bash_completion.d/kiwi.",
    )
    p.add_argument("shell", choices=["bash", "zsh", "fish"])

    sub.add_parser("migrate", help="adopt the containers and images of the original Go Kiwi")

    p = sub.add_parser("help", help="show help for a command")
    p.add_argument("topic", nargs="?", help="command")
    return parser


def add_registry_options(p) -> None:
    p.add_argument(
        "--user", metavar="NAME[:PASSWORD]", help="OCI registry login (asked for when no password)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="OCI: plain http to a registry that is not localhost"
    )


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


def expand_alias(argv: list[str]) -> list[str]:
    """ps/rm/rmi/exec -> list/delete/delete image/attach; `exec c cmd args` -> `attach c -- cmd args`."""
    i = next((n for n, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or argv[i] not in HIDDEN_ALIASES:
        return argv
    word = argv[i]
    argv = argv[:i] + HIDDEN_ALIASES[word].split() + argv[i + 1 :]
    if word != "exec" or "--" in argv:
        return argv
    rest = argv[i + 1 :]
    # Options (with a value when they take one) come before the container; then the command.
    n = 0
    while n < len(rest) and rest[n].startswith("-"):
        if rest[n] in EXEC_IGNORED:
            del rest[n]
        else:
            n += 1 if "=" in rest[n] or rest[n] in ("--direct", "--session", "--takeover", "--debug") else 2
    if n + 1 >= len(rest):
        raise UsageError(
            "exec runs a command: kiwi exec <container> <command> [args]; for a shell: kiwi attach <container>"
        )
    return argv[: i + 1] + rest[: n + 1] + ["--"] + rest[n + 1 :]


def check_command(parser, argv: list[str]) -> None:
    word = next((a for a in argv if not a.startswith("-")), None)
    names = list(subcommands(parser))
    if word is not None and word not in names:
        raise UsageError(did_you_mean(word, names))


def take_debug_flag(argv: list[str]) -> list[str]:
    """--debug anywhere before '--' (as KIWI_DEBUG=1); after it, it is the container's."""
    head, command = split_command(argv)
    if "--debug" not in head:
        return argv
    os.environ["KIWI_DEBUG"] = "1"  # helpers forked from here see it too
    head = [arg for arg in head if arg != "--debug"]
    return head if command is None else [*head, "--", *command]


def parse(argv: list[str]) -> argparse.Namespace:
    head, command = split_command(expand_alias(argv))
    parser = build_parser()
    check_command(parser, head)
    args = parser.parse_args(join_negative_values(head))
    if command is not None:
        if args.command != "attach":
            raise UsageError("'--' and a command only go with 'kiwi attach'")
        args.cmd = (args.cmd or []) + command
    args.dashdash = command is not None  # `attach c --`: the image's own command
    args.parser = parser
    return args


def quick_list_args(argv: list[str]):
    """`kiwi list [what] [--json]`, the command run most, parsed without importing argparse
    and building every command's parser (start-up time); any other spelling goes through argparse."""
    rest = argv[1:]
    words = [a for a in rest if a != "--json"]
    if argv[:1] != ["list"] or len(rest) - len(words) > 1 or len(words) > 1:
        return None  # argparse says what is wrong (or accepts a spelling this does not know)
    if words and words[0] not in LIST_WHAT:
        return None
    return ListArgs(words[0] if words else LIST_WHAT[0], "--json" in argv)


class ListArgs:
    """What argparse makes of `list [what] [--json]` (types.SimpleNamespace costs an import)."""

    command = "list"

    def __init__(self, what: str, json: bool):
        self.what = what
        self.json = json


def quick_list(args) -> bool:
    """`kiwi list [containers]`, the command run most, from kiwi/listing.py alone: without
    commands.py and the layers it imports (start-up time). False where listing leaves the
    answer to cmd_list, before anything was printed."""
    if args.json or args.what != "containers":
        return False
    import gc

    # A list makes no cycles: a collection would only walk its objects, and the one at the
    # exit all of the interpreter's (~2.5 M instructions of a 100-container list's 42 M).
    gc.disable()
    from . import listing

    try:
        table, warning = listing.containers_listing()
    except (listing.Unusual, OSError):
        gc.enable()
        return False
    if warning:  # where cmd_list prints it: before the table
        print(f"{PROG}: {warning}", file=sys.stderr, flush=True)
    print(table, flush=True)
    return True


def quick_attach(args) -> int | None:
    """`kiwi attach c -- cmd` from kiwi/quickattach.py, without commands.py, the Store and
    the runtime (issue 20); None where it leaves the answer to cmd_attach, before anything
    started."""
    import gc

    gc.disable()  # no cycles to find before the command runs; quickattach.run enables it
    try:
        from . import listing, quickattach

        try:
            attach = quickattach.prepare(args)
        except (listing.Unusual, OSError):
            # Still without the collector: the cold attach that cmd_attach makes of a stopped
            # container runs its start so, and enables it again (commands.cmd_attach).
            return None
    except BaseException:
        gc.enable()
        raise
    try:
        return attach()
    finally:
        gc.enable()


def tell(text: str) -> None:
    """One line on stderr while the command goes on (commands.warn, without commands.py)."""
    print(f"{PROG}: {one_line(text)}", file=sys.stderr, flush=True)


def quick_stop(args) -> int | None:
    """`kiwi stop c` of a running container from kiwi/quickstop.py, without commands.py and
    the checks only unusual containers need (issue 20). None where it leaves the answer
    to cmd_stop, before anything was done."""
    from . import listing, quickstop

    try:
        stop = quickstop.prepare(args, notice=tell)
    except (listing.Unusual, OSError):
        return None
    print(f"stopped {stop.run(args.time)}", flush=True)  # as cmd_stop
    return EXIT_OK


# attach's options that take a value, as `-e V`, `--env V` or `--env=V`: argparse's dest of each.
ATTACH_VALUE_OPTIONS = {
    "-e": "env",
    "--env": "env",
    "-w": "workdir",
    "--workdir": "workdir",
    "-u": "user",
    "--user": "user",
}


def quick_attach_args(argv: list[str]):
    """`kiwi attach <c> [-e/-w/-u V]... [--direct] -- cmd [args]` (a command in a running
    container, the hot path of scripts) parsed without argparse: the same namespace
    parse() gives. Any other spelling (no command, other options, a value that looks
    like an option, a second container) returns None and goes through argparse,
    which accepts it or says what is wrong."""
    if argv[:1] != ["attach"] or "--" not in argv:
        return None
    i = argv.index("--")
    head, command = argv[1:i], argv[i + 1 :]
    if not command:
        return None  # `attach c --`: the image's own command
    values: dict[str, list[str]] = {"env": [], "workdir": [], "user": []}
    containers: list[str] = []
    direct, n = False, 0
    while n < len(head):
        word = head[n]
        name, eq, value = word.partition("=")
        if word == "--direct":
            direct = True
        elif eq and name.startswith("--") and name in ATTACH_VALUE_OPTIONS:
            values[ATTACH_VALUE_OPTIONS[name]].append(value)
        elif word in ATTACH_VALUE_OPTIONS and n + 1 < len(head) and not head[n + 1].startswith("-"):
            n += 1
            values[ATTACH_VALUE_OPTIONS[word]].append(head[n])
        elif word.startswith("-") or containers:
            return None
        else:
            containers.append(word)
        n += 1
    if not containers:
        return None
    from types import SimpleNamespace

    return SimpleNamespace(
        command="attach",
        container=containers[0],
        direct=direct,
        session=False,
        old=None,
        detach_key="ctrl-\\",
        takeover=False,
        env=values["env"] or None,
        workdir=values["workdir"][-1] if values["workdir"] else None,
        user=values["user"][-1] if values["user"] else None,
        cmd=command,
        dashdash=True,
    )


def quick_stop_args(argv: list[str]):
    """`kiwi stop <c> [--time N]` parsed as quick_list_args does: argparse and the whole
    parser are a fifth of an idle container's stop (issue 20). Any other spelling,
    including every mistake, goes through argparse."""
    if argv[:1] != ["stop"]:
        return None
    rest, time = argv[1:], str(STOP_GRACE)
    if len(rest) == 3 and "--time" in rest[:2]:
        at = rest.index("--time")
        time = rest.pop(at + 1)
        del rest[at]
    if len(rest) != 1 or rest[0].startswith("-") or not (time.isascii() and time.isdigit()):
        return None
    from types import SimpleNamespace

    return SimpleNamespace(command="stop", container=rest[0], time=int(time))


def require_root(command: str) -> None:
    if command not in READ_ONLY_COMMANDS and os.geteuid() != 0:
        raise KiwiError(f"'{command}' needs root; run it as: sudo {PROG} {command} ...")


def run(argv: list[str]) -> int:
    if argv == ["--version"]:
        # Same output as argparse's version action, without building the parser.
        print(version_text())
        return EXIT_OK
    if argv[:2] == [COMPLETE_WORD, "--"]:
        from .completion import candidates

        print("\n".join(candidates(argv[2:], build_parser())))
        return EXIT_OK
    argv = expand_alias(argv)
    args = quick_list_args(argv) or quick_attach_args(argv) or quick_stop_args(argv) or parse(argv)
    if not args.command:
        args.parser.print_help()
        return EXIT_OK
    require_root(args.command)
    if args.command == "list" and quick_list(args):
        return EXIT_OK
    if args.command == "attach" and getattr(args, "dashdash", False):
        status = quick_attach(args)
        if status is not None:
            return status
    if args.command == "stop" and args.time >= 0:
        status = quick_stop(args)
        if status is not None:
            return status
    if args.command == "terminal":  # a front end like this one: it runs what is typed through run()
        from . import terminal

        return terminal.run_console(build_parser, run)
    from . import commands

    return getattr(commands, "cmd_" + args.command)(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Before anything can fail; after the alias, so `exec c cmd --debug` keeps the command's.
        argv = take_debug_flag(expand_alias(argv))
        return run(argv)
    except KiwiError as e:
        return fail(e.message, e.exit_code, getattr(e, "child_traceback", None))
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


def fail(message: str, code: int = EXIT_ERROR, child_traceback: str | None = None) -> int:
    """The one line a failed command prints; the traceback too with KIWI_DEBUG=1 (a
    helper process's own when the bug was in it)."""
    if child_traceback and debug_enabled():
        try:
            print(f"In a helper process kiwi forked:\n{child_traceback.rstrip()}", file=sys.stderr)
        except OSError:
            pass
    else:
        traceback_if_debug()
    try:
        print(f"{PROG}: {one_line(message)}", file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr itself is gone: the exit code still tells
    return code
