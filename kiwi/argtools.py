"""Reading the argparse parser back (help, the console, man pages, completion).

Its own module so that commands.py and terminal.py can use it without importing cli.py,
which imports them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse


def subcommands_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's `<command>` action (argparse keeps it among the private _actions)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the parser has no subcommands")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{command name: its parser}."""
    return dict(subcommands_action(parser).choices)
