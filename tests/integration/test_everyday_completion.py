"""Shell completion and man pages (issue 17 item 10): the frozen kiwi's bash script
completes in a real bash; the built pages render with man -l and have real sections."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pexpect

SESSION_LINE = r"kiwi: session ([0-9a-f]{8}) "


def complete(kiwi, *words: str) -> list[str]:
    """COMPREPLY of the generated bash function for `kiwi <words>` (the last one being typed)."""
    script = kiwi.out("completion", "bash")
    binary = kiwi.cmd[0]
    line = " ".join(f"'{w}'" for w in (binary, *words))
    program = f"""{script}
COMP_WORDS=({line}); COMP_CWORD={len(words)}
_kiwi
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-i"],
        input=program,
        capture_output=True,
        text=True,
        env=kiwi.env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_completes_commands_options_and_names(kiwi, busybox, terminals):
    assert complete(kiwi, "li") == ["list"]
    assert set(complete(kiwi, "l")) == {"list", "logs"}
    assert complete(kiwi, "list", "im") == ["images"]
    assert complete(kiwi, "attach", "--ol") == ["--old"]
    assert complete(kiwi, "set", "c", "--network", "") == ["host", "separate"]
    cid = kiwi.create(busybox, "--name", "webapp")
    assert complete(kiwi, "attach", "web") == ["webapp"]
    assert complete(kiwi, "stop", cid[:4]) == [cid]
    assert complete(kiwi, "create", "busy") == ["busybox"]
    child = terminals(kiwi.cmd[0], kiwi.cmd[1:] + ["attach", cid], kiwi.env)
    child.expect(SESSION_LINE)
    sid = child.match.group(1)
    child.send("\x1c")
    child.expect(pexpect.EOF)
    assert complete(kiwi, "attach", "--old", "") == [sid]
    assert complete(kiwi, "sessions", "webapp", "--kill", sid[:2]) == [sid]
    assert sid in complete(kiwi, "logs", "")
    # After '--' the words belong to the container's command: files, not kiwi's words.
    assert "list" not in complete(kiwi, "attach", "webapp", "--", "l")


def test_zsh_and_fish_scripts_and_unknown_shell(kiwi):
    assert kiwi.out("completion", "zsh").startswith("#compdef kiwi")
    assert "complete -c kiwi" in kiwi.out("completion", "fish")
    done = kiwi("completion", "tcsh", check=False)
    assert done.returncode == 2 and done.stderr.startswith("kiwi: argument shell: invalid choice")


def test_completion_needs_no_readable_data_folder(kiwi, busybox):
    """A user who cannot read root's data folder completes commands, and no names, no errors."""
    kiwi.create(busybox, "--name", "secret")
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *kiwi.cmd,
            "__complete",
            "--",
            "attach",
            "",
        ],
        capture_output=True,
        text=True,
        env=kiwi.env,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr == ""


MAN_SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "EXIT STATUS", "ENVIRONMENT", "FILES")


def test_man_pages_render_with_real_sections(kiwi):
    dist = Path(kiwi.cmd[0]).resolve().parent
    pages = sorted(dist.glob("kiwi*.1"))
    commands = [p.stem.removeprefix("kiwi-") for p in pages if p.stem != "kiwi"]
    assert {"logs", "inspect", "stats", "completion", "set", "attach"} <= set(commands)
    for page in pages:
        done = subprocess.run(
            ["man", "-l", str(page)],
            capture_output=True,
            text=True,
            env={**os.environ, "MANWIDTH": "100"},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        headings = [line for line in done.stdout.splitlines() if line and not line[0].isspace()]
        for section in MAN_SECTIONS:
            assert section in headings, (page.name, section)
    set_page = subprocess.run(["man", "-l", str(dist / "kiwi-set.1")], capture_output=True, text=True).stdout
    assert "apply at once" in " ".join(set_page.split())
    assert "applies at the next start" in " ".join(set_page.split())
