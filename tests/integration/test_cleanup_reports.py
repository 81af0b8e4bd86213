"""Issue 14 item 4: `kiwi cleanup` tries every step and says in one line what it could
not remove, instead of "nothing to clean up". Frozen binary; the failure is real (an
immutable file, which even root cannot remove)."""

from __future__ import annotations

import os
import subprocess


def test_cleanup_says_what_it_could_not_remove(kiwi):
    kiwi("list")  # makes the data folder
    tmp = kiwi.root / ".tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    stuck = tmp / "snap-4194305-stuck"  # above any pid_max: its writer is gone
    gone = tmp / "snap-4194305-gone"
    stuck.write_text("half")
    gone.write_text("half")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        done = kiwi("cleanup", check=False)
        assert done.returncode == 1, done
        assert done.stderr.splitlines() == [
            f"kiwi: cleanup could not finish: removing half-written files: "
            f"cannot use {stuck}: Operation not permitted"
        ]
        # Everything else went on: the other leftover is gone and said so.
        assert f"removed half-written {gone}" in done.stdout.splitlines()
        assert "nothing to clean up" not in done.stdout
        assert not os.path.lexists(gone)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert kiwi.out("cleanup") == f"removed half-written {stuck}"
    assert kiwi.out("cleanup") == "nothing to clean up"
