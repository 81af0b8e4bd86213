"""sessions.TERMINAL_QUERIES: what a replay (`attach --old`) and `kiwi logs` drop from a
container's output, since the reader's terminal would type its answers into the shell."""

from __future__ import annotations

import pytest

from kiwi.sessions.tty import TERMINAL_QUERIES

QUERIES = [
    b"\x1b[6n",  # cursor position
    b"\x1b[c",  # device attributes
    b"\x1b[>0c",
    b"\x1b[?6n",
    b"\x1b[21t",  # window title report: types back a title the container set
    b"\x1b[18t",  # text area size
    b"\x1b[?2004$p",  # DECRQM
    b"\x1b[4$p",
    b"\x1bP$qm\x1b\\",  # DECRQSS
    b"\x1bP+q544e\x1b\\",  # XTGETTCAP
    b"\x1b]10;?\x07",  # foreground colour
    b"\x1b]11;?\x1b\\",
    b"\x1b]4;1;?\x07",  # a palette colour
    b"\x1b]52;c;?\x07",  # the clipboard
]
KEPT = [
    b"plain text\r\n",
    b"\x1b[1;31mred\x1b[0m",
    b"\x1b[2J\x1b[H",
    b"\x1b]0;a title\x07",  # setting a title answers nothing
    b"\x1b]52;c;aGVsbG8=\x07",  # setting the clipboard
    b"\x1b[?2004h",
]


@pytest.mark.parametrize("query", QUERIES)
def test_queries_are_dropped(query):
    assert TERMINAL_QUERIES.sub(b"", b"before" + query + b"after") == b"beforeafter"


def test_the_rest_is_kept():
    data = b"".join(KEPT)
    assert TERMINAL_QUERIES.sub(b"", data) == data
