"""build.sh: a host build and a release build write different files, so neither replaces
the other's binary (`./build.sh --dry-run` prints the command lines; nothing is built)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TARGET = {"x86_64": "linux-amd64", "aarch64": "linux-arm64", "armv7l": "linux-armv7"}[platform.machine()]


def dry_run(target: str, docker: Path | None = None) -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d and not (Path(d) / "docker").exists()]
    if docker is not None:
        dirs.insert(0, str(docker))
    env = {**os.environ, "PATH": ":".join(dirs or ["/usr/bin", "/bin"])}
    done = subprocess.run(
        [str(REPO / "build.sh"), "--dry-run", target], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_host_build_writes_dist_kiwi_only():
    out = dry_run("host")
    pack = [line for line in out.splitlines() if "cffi_build/pack.py" in line]
    assert len(pack) == 1 and pack[0].split()[-1] == "dist/kiwi", out
    assert not re.search(r"(^|[\s=])dist/kiwi-linux-", out), out  # the release builds' name


def test_a_release_build_of_this_architecture_writes_kiwi_linux_arch(tmp_path):
    # In the Debian root (no docker): copied to dist/kiwi-linux-<arch>.
    out = dry_run(TARGET)
    assert out.splitlines()[-1] == f"copy to dist/kiwi-{TARGET}", out
    assert not re.search(r"\sdist/kiwi(\s|$)", out), out
    # With docker buildx: scripts/Dockerfile.build's kiwi-<target> into dist/.
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "buildx version" ] && exit 0\nexit 1\n')
    fake.chmod(0o755)
    out = dry_run(TARGET, docker=tmp_path)
    assert f"--build-arg TARGET={TARGET} --output type=local,dest=dist" in out, out
    dockerfile = (REPO / "scripts" / "Dockerfile.build").read_text()
    assert "COPY --from=build /out/kiwi-${TARGET} /kiwi-${TARGET}" in dockerfile
