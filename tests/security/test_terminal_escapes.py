"""What a container controls never reaches the admin's terminal raw: `kiwi sessions`
shows the session's command line (its shell's /proc/<pid>/cmdline), which root inside
chooses (a script's `#!` line names any file, escape sequences included), and an
error line may name the container's files. Control characters are shown as \\xNN.
"""

from __future__ import annotations

import json

from .helpers import put_file

# Sets the terminal's title, rings its bell and clears the screen when printed raw.
ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\x9b1m"


def has_controls(text: str) -> bool:
    return any((ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) < 0xA0 for c in text)


def test_session_command_line_is_shown_escaped(kiwi, busybox, terminals, tmp_path):
    cid = kiwi.create(busybox)
    kiwi("attach", cid, "--", "true")
    # /evil's #! line passes a file named with escapes to sh: it becomes the shell's argv[1].
    script = tmp_path / "evil"
    script.write_text(f"#!/bin/sh /tmp/{ESCAPES}\n")
    put_file(kiwi, cid, script, "/evil")
    kiwi.sh(cid, f"printf 'sleep 300\\n' > '/tmp/{ESCAPES}'")
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", "--session", cid, "--", "/evil"], kiwi.env)
    child.expect(r"kiwi: session ([0-9a-f]{8}) ")
    sid = child.match.group(1)

    [row] = kiwi.json("sessions", cid)
    assert row["id"] == sid and ESCAPES in row["command"]  # the attack is in place (JSON escapes it)
    shown = kiwi.out("sessions", cid)
    assert sid in shown and "/tmp/\\x1b]0;PWNED\\x07\\x1b[2J\\x9b1m" in shown
    assert not has_controls(shown), repr(shown)
    assert json.loads(kiwi.out("sessions", cid, "--json"))[0]["command"] == row["command"]


def test_error_line_naming_a_container_file_is_escaped(kiwi, busybox, tmp_path):
    """`kiwi cp` out of a folder holding a FIFO refuses it by name."""
    cid = kiwi.create(busybox)
    kiwi.sh(cid, f"mkdir -p /d && mkfifo '/d/{ESCAPES}' && echo x > /d/plain")
    done = kiwi("cp", f"{cid}:/d", str(tmp_path / "out"), check=False)
    assert done.returncode == 1
    name = "\\x1b]0;PWNED\\x07\\x1b[2J\\x9b1m"
    assert (
        done.stderr == f"kiwi: {cid}:/d/{name} is a FIFO; kiwi cp copies only files, folders and symlinks\n"
    )
    assert not (tmp_path / "out").exists()
