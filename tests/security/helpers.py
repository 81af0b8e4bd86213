"""Helpers for the attack tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def put_file(kiwi, cid: str, source: Path, target: str, shell: str = "/bin/sh") -> None:
    """Copy a host file into the running container (through kiwi's stdin relay), executable."""
    with open(source, "rb") as f:
        done = subprocess.run(
            kiwi.cmd + ["attach", cid, "--", shell, "-c", f"cat > {target} && chmod 755 {target}"],
            stdin=f,
            capture_output=True,
            env=kiwi.env,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
