"""Distribution (SPEC section 8): build.sh, man pages, and the frozen binary.

A lazy import whose module is missing from the one-file bundle only fails when
that command runs, so the frozen binary runs one command of each kind here, on
this host and from a Debian chroot that has no Python at all."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, kiwi_command

BUILD = REPO / "build.sh"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# --- build.sh -------------------------------------------------------------------


def path_without_docker() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d and not (Path(d) / "docker").exists()]
    return ":".join(dirs or ["/usr/bin", "/bin"])


def test_dry_run_without_buildx_prints_the_debian_root_recipe():
    done = run([str(BUILD), "--dry-run", "linux-arm64"], env={**os.environ, "PATH": path_without_docker()})
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("debootstrap --arch=arm64 --variant=minbase "), done.stdout
    assert " --foreign bullseye /var/cache/kiwi-build/roots/bullseye-arm64 " in first, first
    assert "apt-get source python3.11" in done.stdout and "pyinstaller kiwi.spec" in done.stdout
    # CPython is cross-compiled on the host, not configured and built under emulation
    sysroot = "aarch64-linux-gnu-gcc --sysroot=/var/cache/kiwi-build/roots/bullseye-arm64"
    assert f"host: configure --host=aarch64-linux-gnu CC='{sysroot}'" in done.stdout, done.stdout


def test_dry_run_of_the_host_architecture_needs_no_emulation():
    target = {"x86_64": "linux-amd64", "aarch64": "linux-arm64"}[platform.machine()]
    done = run([str(BUILD), "--dry-run", target], env={**os.environ, "PATH": path_without_docker()})
    assert done.returncode == 0, done.stderr
    assert "debootstrap --arch=" in done.stdout and "--foreign" not in done.stdout
    assert "--sysroot" not in done.stdout, done.stdout


def test_dry_run_with_buildx_prints_the_buildx_command_line(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "buildx version" ] && exit 0\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{path_without_docker()}"}
    done = run([str(BUILD), "--dry-run", "linux-arm64"], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "docker buildx build --platform linux/arm64 --file scripts/Dockerfile.build "
        "--build-arg TARGET=linux-arm64 --output type=local,dest=dist ."
    )


def test_unknown_target_is_refused():
    done = run([str(BUILD), "sparc"])
    assert done.returncode != 0 and "unknown target 'sparc'" in done.stderr


# --- man pages ------------------------------------------------------------------


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
    from kiwi.argtools import subcommands
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
    from kiwi.argtools import subcommands
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


def test_version_names_commit_build_time_and_architecture(kiwi):
    text = kiwi.out("--version").strip()
    found = re.fullmatch(
        r"kiwi \d+\.\d+\.\d+ \(commit ([0-9a-f]{12})(-dirty)?, built (\S+), linux-(\w+)\)", text
    )
    assert found, text
    commit, built, arch = found.group(1), found.group(3), found.group(4)
    assert run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"]).returncode == 0, text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", built), text
    assert arch == {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armv7"}[platform.machine()]


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


def make_minbase(root: Path, tarball: Path) -> None:
    root.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root), "--numeric-owner"], check=True)


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


def run_without_python(binary: Path, tarball: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """--version, import, list, create and attach from the Debian tree TARBALL (no Python)."""
    root = tmp_path / "minbase"
    env = chroot_env()
    chroot = Chroot(root, env)
    cid = None
    try:
        make_minbase(root, tarball)
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


def test_frozen_binary_runs_without_python(busybox_tar, debian_tar, tmp_path):
    run_without_python(Path(kiwi_command()[0]), debian_tar, busybox_tar, tmp_path)


# --- release builds: glibc 2.31 ---------------------------------------------------

RELEASE = REPO / "dist" / "release"
GLIBC_FLOOR = (2, 31)
HOST_TARGET = {"x86_64": "linux-amd64", "aarch64": "linux-arm64", "armv7l": "linux-armv7"}[platform.machine()]


def newest_source_change() -> float:
    tracked = run(
        ["git", "-C", str(REPO), "ls-files", "kiwi", "cffi_build", "kiwi.spec", "pyproject.toml", "build.sh"]
    )
    return max((REPO / name).stat().st_mtime for name in tracked.stdout.split() if (REPO / name).exists())


@pytest.fixture(scope="module")
def host_release() -> Path:
    """dist/release for this host's architecture, built in the bullseye root (cached
    there; minutes only for the first build on a machine) unless it is up to date."""
    sums = RELEASE / "SHA256SUMS"
    fresh = (
        sums.exists() and sums.stat().st_mtime > newest_source_change() and HOST_TARGET in sums.read_text()
    )
    if not fresh:
        env = {**os.environ, "KIWI_RELEASE_TARGETS": HOST_TARGET}
        done = run([str(BUILD), "release"], env=env, timeout=3 * 3600)
        assert done.returncode == 0, done.stdout + done.stderr
    return RELEASE


def glibc_versions(path: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y symbol versions one object needs, as objdump -T lists them."""
    done = run(["objdump", "-T", str(path)])
    if "not a dynamic object" in done.stderr or "file format not recognized" in done.stderr:
        return set()
    assert done.returncode == 0, done.stderr
    return {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", done.stdout)}


def unpacked_bundle(binary: Path, data: Path) -> Path:
    """Runs the binary once so its launcher unpacks the bundle; returns that folder."""
    done = run([str(binary), "--version"], env={**os.environ, "KIWI_ROOT": str(data)})
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in (data / ".runtime").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def documented_floor(binary: str) -> str:
    text = (REPO / "docs" / "DISTRIBUTION.md").read_text()
    found = re.search(rf"^\| `{re.escape(binary)}` \|[^|\n]*\| ([0-9.]+) \|", text, re.MULTILINE)
    assert found, f"docs/DISTRIBUTION.md has no glibc floor row for {binary}"
    return found.group(1)


@pytest.mark.release
def test_release_sha256sums_verify(host_release, tmp_path):
    sums = (host_release / "SHA256SUMS").read_text()
    names = [line.split()[1] for line in sums.splitlines()]
    assert f"kiwi-{HOST_TARGET}" in names and any(n.endswith(f"-{HOST_TARGET}.tar.gz") for n in names), sums
    assert run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=host_release).returncode == 0
    # The check must see a changed byte.
    copy = tmp_path / "release"
    shutil.copytree(host_release, copy)
    with open(copy / f"kiwi-{HOST_TARGET}", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=copy).returncode != 0


@pytest.mark.release
def test_release_tarball_holds_binary_man_pages_and_completion(host_release, tmp_path):
    (tarball,) = host_release.glob(f"kiwi-*-{HOST_TARGET}.tar.gz")
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(tmp_path)], check=True)
    top = tmp_path / tarball.name.removesuffix(".tar.gz")
    assert (top / "kiwi").read_bytes() == (host_release / f"kiwi-{HOST_TARGET}").read_bytes()
    assert os.access(top / "kiwi", os.X_OK)
    assert "kiwi attach" in rendered(top / "man" / "kiwi.1")
    assert (top / "man" / "kiwi-attach.1").is_file()
    completion = top / "completions" / "kiwi.bash"
    assert run(["bash", "-n", str(completion)]).returncode == 0
    script = f'source {completion}; COMP_WORDS=(kiwi cre); COMP_CWORD=1; _kiwi; echo "${{COMPREPLY[@]}}"'
    assert run(["bash", "-c", script]).stdout.split() == ["create"]


@pytest.mark.release
def test_release_bundle_needs_glibc_2_31_at_most(host_release, tmp_path):
    binary = host_release / f"kiwi-{HOST_TARGET}"
    bundle = unpacked_bundle(binary, tmp_path / "data")
    objects = [binary] + [p for p in bundle.rglob("*") if p.is_file() and is_elf(p)]
    assert any(p.name.startswith("libpython3") for p in objects), objects
    needs = {p.relative_to(bundle) if p != binary else p.name: glibc_versions(p) for p in objects}
    too_new = {str(p): max(v) for p, v in needs.items() if v and max(v) > GLIBC_FLOOR}
    assert not too_new, f"objects that need a glibc above 2.31: {too_new}"
    floor = max(v for versions in needs.values() for v in versions)
    assert ".".join(map(str, floor)) == documented_floor(f"dist/kiwi-{HOST_TARGET}")
    assert (
        HOST_TARGET
        in run([str(binary), "--version"], env={**os.environ, "KIWI_ROOT": str(tmp_path / "data")}).stdout
    )


@pytest.fixture(scope="module")
def bullseye_tar(test_images) -> Path:
    """The Debian 11 minbase (built only for the release tier: make-test-images --oldest)."""
    subprocess.run(
        [str(REPO / "scripts" / "make-test-images"), "--oldest"], check=True, stdout=subprocess.DEVNULL
    )
    return test_images / "bullseye-minbase.tar.zst"


@pytest.mark.release
def test_release_binary_runs_on_debian_11_without_python(host_release, bullseye_tar, busybox_tar, tmp_path):
    run_without_python(host_release / f"kiwi-{HOST_TARGET}", bullseye_tar, busybox_tar, tmp_path)
