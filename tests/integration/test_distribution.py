"""Distribution (SPEC section 8): build.sh, man pages, and the frozen binary.

A lazy import whose module is missing from the one-file bundle only fails when
that command runs, so the frozen binary runs one command of each kind here, on
this host and from a Debian chroot that has no Python at all."""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import CACHE, REPO, kiwi_command

BUILD = REPO / "build.sh"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FOREIGN = {"x86_64": "linux-arm64", "aarch64": "linux-amd64"}.get(platform.machine(), "linux-arm64")


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# --- build.sh -------------------------------------------------------------------


def path_without_docker() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d and not (Path(d) / "docker").exists()]
    return ":".join(dirs or ["/usr/bin", "/bin"])


def test_foreign_build_without_docker_says_what_to_install():
    done = run(
        [str(BUILD), FOREIGN.removeprefix("linux-")], env={**os.environ, "PATH": path_without_docker()}
    )
    assert done.returncode != 0
    assert "needs docker" in done.stderr and "buildx" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_foreign_build_without_buildx_says_so(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "docker: unknown command: docker $1" >&2\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{path_without_docker()}"}
    done = run([str(BUILD), FOREIGN], env=env)
    assert done.returncode != 0
    assert "docker buildx is missing" in done.stderr, done.stderr


def test_dry_run_prints_the_buildx_command_line():
    done = run([str(BUILD), "--dry-run", "linux-arm64"], env={**os.environ, "PATH": path_without_docker()})
    assert done.returncode == 0, done.stderr
    expected = (
        "docker buildx build --platform linux/arm64 --file scripts/Dockerfile.build "
        "--build-arg TARGET=linux-arm64 --output type=local,dest=dist ."
    )
    if FOREIGN == "linux-arm64":
        assert done.stdout.strip() == expected
    assert (REPO / "scripts" / "Dockerfile.build").is_file()


def test_unknown_target_is_refused():
    done = run([str(BUILD), "sparc"])
    assert done.returncode != 0 and "unknown target 'sparc'" in done.stderr


# --- man pages ------------------------------------------------------------------


def subcommands(parser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError("the parser has no subcommands")


def rendered(page: Path) -> str:
    """The page as `man` shows it, in ASCII and without line wrapping."""
    assert page.is_file(), f"{page} missing: ./build.sh host writes it"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "MANWIDTH": "1000", "MANPAGER": "cat", "PAGER": "cat"}
    done = run(["man", "-l", str(page)], env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_main_man_page_shows_every_command_and_option():
    kiwi_command()  # builds dist/ (binary and man pages) when missing
    sys.path.insert(0, str(REPO))
    from kiwi.cli import build_parser

    text = rendered(REPO / "dist" / "kiwi.1")
    missing = []
    for name, sub in subcommands(build_parser()).items():
        if f"kiwi {name}" not in text:
            missing.append(f"command {name}")
        for action in sub._actions:
            missing += [f"{name} {opt}" for opt in action.option_strings if opt not in text]
    assert "--version" in text
    assert not missing, f"kiwi.1 lacks: {missing}"


def test_each_command_has_its_own_page():
    from kiwi.cli import build_parser

    for name, sub in subcommands(build_parser()).items():
        text = rendered(REPO / "dist" / f"kiwi-{name}.1")
        assert f"kiwi {name}" in text
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text, f"kiwi-{name}.1 lacks {opt}"


# --- the frozen binary on this host -----------------------------------------------


def test_frozen_binary_runs_every_kind_of_command(kiwi, busybox):
    assert kiwi.out("--version").startswith("kiwi ")
    assert "usage: kiwi attach" in kiwi.out("help", "attach")
    assert any(row["name"] == busybox for row in kiwi.json("list", "images"))
    cid = kiwi.create(busybox)
    kiwi("set", cid, "--memory", "128M", "--cpu", "1", "--shell", "/bin/sh")
    assert kiwi("attach", cid, "--", "true").returncode == 0
    assert kiwi("attach", cid, "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert kiwi.out("ip", cid).count(".") == 3
    kiwi("set", cid, "--memory", "256M")  # applies at once to the running container
    kiwi("stop", cid, "--time", "2")
    kiwi("cleanup")


def test_frozen_pull_reaches_https(kiwi):
    """pull needs ssl in the bundle: an unreachable https server must give a clean error."""
    done = kiwi("pull", "alpine", check=False, env={"KIWI_IMAGE_SERVER": "https://127.0.0.1:9/"})
    assert done.returncode == 1
    assert done.stderr.startswith("kiwi: ") and "Traceback" not in done.stderr, done.stderr
    assert "unknown url type" not in done.stderr


# --- the frozen binary on a host without Python ----------------------------------


class Chroot:
    """A Debian minbase tree; every kiwi run gets a private mount namespace in which
    /proc, /sys (with the cgroup hierarchies) and /dev are bind-mounted in, so
    nothing is mounted on the host and the mounts go when the namespace ends."""

    # The tree is bound onto itself first: on a real host / is a mount point, and
    # kiwi's start (making / private, pivot_root) relies on that.
    SCRIPT = (
        'mount --bind "$KIWI_CHROOT" "$KIWI_CHROOT" || exit 97; '
        'for d in proc sys dev; do mount --rbind "/$d" "$KIWI_CHROOT/$d" || exit 97; done; '
        'exec chroot "$KIWI_CHROOT" "$@"'
    )

    def __init__(self, root: Path, env: dict):
        self.root = root
        self.env = env

    def __call__(self, *args, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", self.SCRIPT, "sh", *args]
        done = run(argv, env={**self.env, "KIWI_CHROOT": str(self.root)}, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def kiwi(self, *args, **kw) -> subprocess.CompletedProcess:
        return self("/usr/local/bin/kiwi", *args, **kw)


def chroot_env() -> dict:
    tag = secrets.token_hex(3)
    return {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "KIWI_ROOT": "/root/kiwi-data",
        "KIWI_BRIDGE": f"kc{tag}",
        "KIWI_SUBNET": f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24",
        "KIWI_CGROUP_PARENT": f"kiwi-test-{tag}",
    }


def make_minbase(root: Path) -> None:
    tarball = CACHE / "debian-minbase.tar.xz"
    root.mkdir()
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(root), "--numeric-owner"], check=True)


def kill_leftover_inits(root: Path) -> None:
    """Last resort when `kiwi stop` failed: end the containers' PID 1 ourselves."""
    for record in (root / "root" / "kiwi-data" / "mounts").glob("*/runtime.json"):
        try:
            os.kill(json.loads(record.read_text())["init_pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def remove_network(env: dict) -> None:
    code = "from kiwi import network\nnetwork.remove_nat()\nnetwork.remove_bridge()\n"
    host_env = {
        **os.environ,
        **{k: v for k, v in env.items() if k.startswith("KIWI_")},
        "PYTHONPATH": str(REPO),
    }
    run([sys.executable, "-c", code], cwd=REPO, env=host_env, timeout=60)


def host_mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def test_frozen_binary_runs_without_python(busybox_tar, tmp_path):
    binary = Path(kiwi_command()[0])
    root = tmp_path / "minbase"
    env = chroot_env()
    chroot = Chroot(root, env)
    cid = None
    try:
        make_minbase(root)
        assert not list((root / "usr" / "bin").glob("python*")), "the minbase tree has a python"
        assert chroot("sh", "-c", "command -v python3 || command -v python", check=False).returncode != 0
        shutil.copy2(binary, root / "usr" / "local" / "bin" / "kiwi")
        shutil.copy2(busybox_tar, root / "root" / "busybox-rootfs.tar.xz")

        assert chroot.kiwi("--version").stdout.startswith("kiwi ")
        chroot.kiwi("import", "--name", "bb", "/root/busybox-rootfs.tar.xz")
        assert "bb" in chroot.kiwi("list", "images").stdout
        # A chrooted process may not create a user namespace: said in one line, never a fallback.
        refused = chroot.kiwi("create", "bb", check=False)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "chroot" in refused.stderr and "--privileged" in refused.stderr
        cid = chroot.kiwi("create", "bb", "--privileged").stdout.strip().splitlines()[-1]
        done = chroot.kiwi("attach", cid, "--", "sh", "-c", "echo inside; exit 5", check=False)
        assert done.returncode == 5 and "inside" in done.stdout, done.stderr
        assert cid in chroot.kiwi("list").stdout
    finally:
        if cid:
            chroot.kiwi("stop", cid, "--time", "2", check=False)
        if root.exists():
            chroot.kiwi("cleanup", check=False)
            kill_leftover_inits(root)
        remove_network(env)
        leaked = host_mounts_below(tmp_path)
        shutil.rmtree(root, ignore_errors=True)
    assert not leaked, f"mounts leaked to the host: {leaked}"
