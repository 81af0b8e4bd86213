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


# Docker's words for the same things, accepted but not listed in --help.
HIDDEN_ALIASES = {"ps": "list", "rm": "delete", "rmi": "delete image", "exec": "attach"}


def did_you_mean(word: str, names: list[str]) -> str:
    """`kiwi lst` -> one line naming the closest commands, not argparse's list of all."""
    import difflib

    scored = sorted(
        ((difflib.SequenceMatcher(None, word, name).ratio(), name) for name in names + list(HIDDEN_ALIASES)),
        reverse=True,
    )
    # The best match, and any nearly as good (a tie is shown, a weaker one is noise).
    close = [name for score, name in scored if score >= 0.6 and score >= scored[0][0] - 0.05]
    close = list(dict.fromkeys(HIDDEN_ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown command {word!r}{hint} (see 'kiwi --help')"
