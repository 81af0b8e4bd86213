"""cli.quick_attach_args: `attach <c> [-e/-w/-u V] -- cmd` without argparse gives what
argparse gives; every other spelling is left to argparse (None)."""

import pytest

from kiwi import cli

# The attributes cmd_attach reads.
ATTACH_FIELDS = ("command", "container", "direct", "session", "old", "detach_key", "takeover")
ATTACH_FIELDS += ("env", "workdir", "user", "cmd", "dashdash")


def fields(args) -> dict:
    return {name: getattr(args, name) for name in ATTACH_FIELDS}


@pytest.mark.parametrize(
    "argv",
    [
        ["attach", "c", "--", "true"],
        ["attach", "c", "--", "sh", "-c", "echo $X", "--", "-e", "x"],
        ["attach", "c", "--", ""],
        ["attach", "c", "-e", "A=1", "--env", "B=2", "--env=C=3=4", "--", "env"],
        ["attach", "-e", "A=1", "c", "--", "env"],
        ["attach", "c", "-w", "/tmp", "--workdir", "/srv", "--", "pwd"],
        ["attach", "c", "--workdir=/x y", "-u", "nobody:nogroup", "--", "id"],
        ["attach", "c", "--user=1000", "--user", "root", "--", "id"],
        ["attach", "--direct", "c", "--", "true"],
        ["attach", "c", "-e", "", "--", "true"],
        ["attach", "a=b", "--", "true"],
        ["attach", "c", "--env=", "--", "true"],
    ],
)
def test_same_as_argparse(argv):
    quick = cli.quick_attach_args(argv)
    assert quick is not None
    assert fields(quick) == fields(cli.parse(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["attach", "c"],  # a session: argparse
        ["attach", "c", "--"],  # the image's own command
        ["attach", "--", "true"],  # which container?
        ["attach", "c", "d", "--", "true"],  # argparse: d is the command, true its argument
        ["attach", "c", "-e", "--", "true"],  # -e without a value
        ["attach", "c", "-e", "-x", "--", "true"],  # a value that looks like an option
        ["attach", "c", "--session", "--", "true"],
        ["attach", "c", "--old", "1234abcd", "--", "true"],
        ["attach", "c", "--env", "A=1", "--wor", "/", "--", "true"],  # an abbreviation
        ["attach", "c", "-eA=1", "--", "true"],
        ["attach", "c", "--detach-key", "ctrl-]", "--", "true"],
        ["attach", "c", "--help", "--", "true"],
        ["list", "--", "true"],
        ["start", "c"],
    ],
)
def test_unusual_spellings_go_to_argparse(argv):
    assert cli.quick_attach_args(argv) is None


def test_exec_alias_takes_the_quick_path():
    argv = cli.expand_alias(["exec", "-e", "A=1", "c", "env", "-0"])
    assert fields(cli.quick_attach_args(argv)) == fields(cli.parse(argv))
