"""What importing a kiwi module loads, in a fresh interpreter: the quick paths (list,
attach, stop) and every start must not pay for json, re, pathlib or the cffi module."""

from __future__ import annotations

import os
import subprocess
import sys

import kiwi

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(kiwi.__file__)))


def modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    return set(
        subprocess.run(  # -S: no site (a .pth file may import re)
            [sys.executable, "-S", "-c", code], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
