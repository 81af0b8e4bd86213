"""Terminal helpers of sessions: the detach key, the initial window size, and
what must not be replayed to a new terminal."""

from __future__ import annotations

import re

from ..errors import KiwiError
from ..stdio import terminal_size

DEFAULT_SIZE = (24, 80)
# Queries a shell sent to its terminal (cursor position, device attributes, colours).
# Replayed, they would make the new terminal type its answers into the shell; a window
# title report types back a title the container set.
TERMINAL_QUERIES = re.compile(
    rb"\x1b\[[>=?]?[0-9;]*[cn]"  # device attributes, status and cursor position reports
    rb"|\x1b\[[0-9;]*t"  # window reports (title, size) and operations
    rb"|\x1b\[\??[0-9;]*\$p"  # DECRQM: a mode's state
    rb"|\x1bP[$+]q[^\x07\x1b]{0,255}(?:\x07|\x1b\\)"  # DECRQSS, XTGETTCAP
    rb"|\x1b\][0-9]{1,3}(?:;[^\x07\x1b]{0,255})?;\?(?:\x07|\x1b\\)"  # colours, the clipboard (OSC 52)
)


def parse_detach_key(text: str) -> tuple[int, str]:
    """'ctrl-\\' -> (0x1c, 'Ctrl-\\'); any ctrl-<char> with a control code (@, a-z, [, \\, ], ^, _)."""
    value = (text or "").strip()
    if value.lower().startswith("ctrl-") and len(value) == 6:
        char = value[5].upper()
        if "@" <= char <= "_":
            return ord(char) ^ 0x40, f"Ctrl-{char}"
    raise KiwiError(f"invalid detach key {text!r}: use ctrl-<char>, e.g. ctrl-\\ or ctrl-]")


def window_size() -> tuple[int, int]:
    """This terminal's size (stdin's, else stdout's), 24x80 without one."""
    return terminal_size(0) or terminal_size(1) or DEFAULT_SIZE
