"""Fixtures for the attack tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def static_program(tmp_path):
    """Compiles tests/security/<name>.c into a static binary; it runs in any image."""

    def build(name: str) -> Path:
        out = tmp_path / name
        subprocess.run(
            ["gcc", "-static", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(HERE / f"{name}.c")],
            check=True,
        )
        return out

    return build
