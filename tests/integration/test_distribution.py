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
import tarfile
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


ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armv7"}[platform.machine()]


def assert_names_the_build(version: str, arch: str) -> None:
    """VERSION is `kiwi X.Y.Z (commit <12 hex>[-dirty], built <UTC minute>, linux-<arch>)`,
    the commit one of this repository's."""
    found = re.fullmatch(
        r"kiwi \d+\.\d+\.\d+ \(commit ([0-9a-f]{12})(-dirty)?, built (\S+), linux-(\w+)\)", version
    )
    assert found, version
    commit, built = found.group(1), found.group(3)
    assert run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"]).returncode == 0, version
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", built), version
    assert found.group(4) == arch, version


def test_version_names_commit_build_time_and_architecture(kiwi):
    assert_names_the_build(kiwi.out("--version").strip(), ARCH)


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
HOST_TARGET = f"linux-{ARCH}"
# Each target's ELF class and machine (x86-64, AArch64, ARM), and the objdump that
# reads its objects (Debian's cross binutils come with the cross compilers).
ELF_MACHINE = {"linux-amd64": (2, 62), "linux-arm64": (2, 183), "linux-armv7": (1, 40)}
OBJDUMP = {
    "linux-amd64": "x86_64-linux-gnu-objdump",
    "linux-arm64": "aarch64-linux-gnu-objdump",
    "linux-armv7": "arm-linux-gnueabihf-objdump",
}


def newest_source_change() -> float:
    tracked = run(
        ["git", "-C", str(REPO), "ls-files", "kiwi", "cffi_build", "kiwi.spec", "pyproject.toml", "build.sh"]
    )
    return max((REPO / name).stat().st_mtime for name in tracked.stdout.split() if (REPO / name).exists())


@pytest.fixture(scope="module")
def host_release() -> Path:
    """dist/release for this host's architecture, built in the bullseye root (cached
    there; minutes only for the first build on a machine) unless it is up to date.
    A full `./build.sh release` left there is checked for every architecture."""
    sums = RELEASE / "SHA256SUMS"
    fresh = (
        sums.exists() and sums.stat().st_mtime > newest_source_change() and HOST_TARGET in sums.read_text()
    )
    if not fresh:
        env = {**os.environ, "KIWI_RELEASE_TARGETS": HOST_TARGET}
        done = run([str(BUILD), "release"], env=env, timeout=3 * 3600)
        assert done.returncode == 0, done.stdout + done.stderr
    return RELEASE


def listed_in_sums(release: Path) -> list[str]:
    return [
        line.split(maxsplit=1)[1].lstrip("*") for line in (release / "SHA256SUMS").read_text().splitlines()
    ]


def release_targets(release: Path) -> list[str]:
    """The targets whose binary dist/release holds; the host's is always among them."""
    targets = sorted(n.removeprefix("kiwi-") for n in listed_in_sums(release) if n.startswith("kiwi-linux-"))
    assert HOST_TARGET in targets, targets
    return targets


def sha256_check(folder: Path) -> subprocess.CompletedProcess:
    return run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=folder)


def flip_a_bit(path: Path) -> None:
    """Changes one bit in the middle of the file (twice restores it)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))


def elf_machine(path: Path) -> tuple[int, int]:
    """(ELF class, e_machine) of an ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", path
    return head[4], int.from_bytes(head[18:20], "little")


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def glibc_versions(path: Path, target: str) -> set[tuple[int, ...]] | None:
    """The GLIBC_x.y symbol versions one object needs, as the target's objdump -T
    lists them; None for a static program (readelf finds no dynamic section)."""
    done = run([OBJDUMP[target], "-T", str(path)])
    if done.returncode != 0 and "not a dynamic object" in done.stderr:
        assert "no dynamic section" in run(["readelf", "-d", str(path)]).stdout, done.stderr
        return None
    assert done.returncode == 0, done.stderr
    return {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", done.stdout)}


def unpack_from_format(binary: Path, dest: Path) -> list[Path]:
    """What a one-file binary carries, read by its file format (cffi_build/pack.py)
    rather than by running its launcher, which may be another architecture's:
    DEST/launcher and every file of the bundle below DEST/bundle."""
    import importlib.util

    import zstandard

    spec = importlib.util.spec_from_file_location("kiwi_pack", REPO / "cffi_build" / "pack.py")
    assert spec and spec.loader
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    blob = binary.read_bytes()
    magic, index_at, index_size, data_at, data_size, _built, _hash = pack.TRAILER.unpack(
        blob[-pack.TRAILER.size :]
    )
    assert magic == pack.MAGIC, binary
    data = zstandard.ZstdDecompressor().decompressobj().decompress(blob[data_at : data_at + data_size])
    index = blob[index_at : index_at + index_size]
    (dest / "bundle").mkdir(parents=True)
    (dest / "launcher").write_bytes(blob[:data_at])
    files, at, taken = [dest / "launcher"], 0, 0
    while at < len(index):
        kind, _, _mode, name_size, size = pack.ENTRY.unpack_from(index, at)
        at += pack.ENTRY.size
        path = dest / "bundle" / index[at : at + name_size].decode()
        at += name_size
        if kind == ord("d"):
            path.mkdir()
        else:
            path.write_bytes(data[taken : taken + size])
            taken += size
            files.append(path)
    assert taken == len(data), f"{binary}: the index does not account for the whole bundle"
    return files


def unpacked_bundle(binary: Path, data: Path) -> Path:
    """Runs the binary once so its launcher unpacks the bundle; returns that folder."""
    done = run([str(binary), "--version"], env={**os.environ, "KIWI_ROOT": str(data)})
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in (data / ".runtime").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def documented_floor(binary: str) -> str:
    text = (REPO / "docs" / "DISTRIBUTION.md").read_text()
    found = re.search(rf"^\| `{re.escape(binary)}` \|[^|\n]*\| ([0-9.]+) \|", text, re.MULTILINE)
    assert found, f"docs/DISTRIBUTION.md has no glibc floor row for {binary}"
    return found.group(1)


@pytest.mark.release
def test_release_sha256sums_verify(host_release, tmp_path):
    listed = listed_in_sums(host_release)
    present = [p.name for p in host_release.iterdir() if p.name != "SHA256SUMS"]
    assert sorted(listed) == sorted(present), "SHA256SUMS must list every file of dist/release, once"
    for target in release_targets(host_release):
        assert any(n.startswith("kiwi-") and n.endswith(f"-{target}.tar.gz") for n in listed), listed
    assert sha256_check(host_release).returncode == 0
    # The check must see one changed bit in any file, and name that file.
    copy = tmp_path / "release"
    shutil.copytree(host_release, copy)
    for name in listed:
        flip_a_bit(copy / name)
        done = sha256_check(copy)
        assert done.returncode != 0 and f"{name}: FAILED\n" in done.stdout, done.stdout
        assert done.stdout.count("FAILED") == 1, done.stdout
        flip_a_bit(copy / name)
    assert sha256_check(copy).returncode == 0


@pytest.mark.release
def test_release_tarballs_hold_binary_man_pages_and_completion(host_release, tmp_path):
    sys.path.insert(0, str(REPO))
    from kiwi.argtools import subcommands
    from kiwi.cli import build_parser

    pages = ["kiwi.1"] + [f"kiwi-{name}.1" for name in subcommands(build_parser())]
    for target in release_targets(host_release):
        (tarball,) = host_release.glob(f"kiwi-*-{target}.tar.gz")
        top = tarball.name.removesuffix(".tar.gz")
        with tarfile.open(tarball) as tar:
            members = tar.getmembers()
        files = {m.name for m in members if m.isfile()}
        assert files == {f"{top}/kiwi", f"{top}/completions/kiwi.bash", *(f"{top}/man/{p}" for p in pages)}
        assert all(m.name == top or m.name.startswith(f"{top}/") for m in members), [m.name for m in members]
        assert all(m.uid == 0 and m.gid == 0 and (m.isfile() or m.isdir()) for m in members)
        assert not [m.name for m in members if m.mode & 0o022], (
            "group- or world-writable (root extracts as is)"
        )
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(tmp_path)], check=True)
        binary = tmp_path / top / "kiwi"
        assert binary.read_bytes() == (host_release / f"kiwi-{target}").read_bytes()
        assert os.access(binary, os.X_OK) and elf_machine(binary) == ELF_MACHINE[target]
        assert "kiwi attach" in rendered(tmp_path / top / "man" / "kiwi.1")
        assert "kiwi attach" in rendered(tmp_path / top / "man" / "kiwi-attach.1")
        completion = tmp_path / top / "completions" / "kiwi.bash"
        assert run(["bash", "-n", str(completion)]).returncode == 0
        script = f'source {completion}; COMP_WORDS=(kiwi cre); COMP_CWORD=1; _kiwi; echo "${{COMPREPLY[@]}}"'
        assert run(["bash", "-c", script]).stdout.split() == ["create"]


@pytest.mark.release
def test_release_bundles_need_glibc_2_31_at_most(host_release, tmp_path):
    """objdump -T of every ELF object of every release binary: its launcher (static)
    and each file of the bundle it carries (libpython, the interpreter `kiwi`, every
    .so), read from the file itself; and the build each one names."""
    for target in release_targets(host_release):
        binary = host_release / f"kiwi-{target}"
        files = unpack_from_format(binary, tmp_path / target)
        objects = [p for p in files if is_elf(p)]
        names = {p.name for p in objects}
        assert {"launcher", "kiwi", "kiwi-init"} <= names, names
        assert any(n.startswith("libpython3") for n in names) and any(n.endswith(".so") for n in names), names
        needs = {}
        for p in objects:
            assert elf_machine(p) == ELF_MACHINE[target], p
            needs[str(p.relative_to(tmp_path / target))] = glibc_versions(p, target)
        assert needs["launcher"] is None, f"the launcher of {binary} is not static"
        assert needs["bundle/kiwi"], f"the bundle's interpreter of {binary} needs no glibc symbol: misread"
        too_new = {p: max(v) for p, v in needs.items() if v and max(v) > GLIBC_FLOOR}
        assert not too_new, f"objects of {binary} that need a glibc above 2.31: {too_new}"
        floor = max(v for versions in needs.values() if versions for v in versions)
        assert ".".join(map(str, floor)) == documented_floor(f"dist/kiwi-{target}"), (target, floor)
        (info,) = [p for p in files if p.name == "build-info"]
        assert_names_the_build(f"kiwi 0.0.0 ({info.read_text().strip()})", target.removeprefix("linux-"))


@pytest.mark.release
def test_release_binary_of_this_host_runs_and_names_its_build(host_release, tmp_path):
    """The launcher unpacks exactly what the file format says, and --version names
    commit, build time and architecture."""
    binary = host_release / f"kiwi-{HOST_TARGET}"
    bundle = unpacked_bundle(binary, tmp_path / "data")
    read = unpack_from_format(binary, tmp_path / "read")
    unpacked = [p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file()]
    unpacked.remove(Path(".complete"))  # the launcher's marker of a whole unpack
    assert sorted(unpacked) == sorted(p.relative_to(tmp_path / "read" / "bundle") for p in read[1:])
    version = run([str(binary), "--version"], env={**os.environ, "KIWI_ROOT": str(tmp_path / "data")})
    assert version.returncode == 0, version.stderr
    assert_names_the_build(version.stdout.strip(), ARCH)


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
