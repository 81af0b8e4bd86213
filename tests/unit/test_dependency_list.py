"""pyproject.toml is the only list of Python dependencies (issue 14 item 6)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def python_deps(*extras):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "python-deps"), *extras], capture_output=True, text=True
    )
    return done.returncode, done.stdout.split(), done.stderr


def test_python_deps_prints_pyproject_lists():
    optional = PROJECT["optional-dependencies"]
    assert python_deps() == (0, PROJECT["dependencies"], "")
    assert python_deps("build", "lint") == (
        0,
        PROJECT["dependencies"] + optional["build"] + optional["lint"],
        "",
    )


def test_python_deps_refuses_an_unknown_extra():
    rc, out, err = python_deps("build", "nope")
    assert rc == 1 and out == []
    assert err.startswith("python-deps: no extra nope in ") and err.count("\n") == 1


def test_no_other_file_lists_a_dependency():
    names = {re.match(r"[A-Za-z0-9_.-]+", req)[0] for req in PROJECT["dependencies"]}
    for extra in PROJECT["optional-dependencies"].values():
        names |= {re.match(r"[A-Za-z0-9_.-]+", req)[0] for req in extra}
    requirement = re.compile(rf"""["']?({"|".join(map(re.escape, names))})\s*[<>=~!]=""")
    for path in [REPO / "build.sh", *sorted((REPO / "scripts").iterdir())]:
        if path.is_file():
            assert not requirement.search(path.read_text(errors="replace")), f"{path} lists a dependency"
