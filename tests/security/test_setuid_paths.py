"""Issue 12 item 4: a setuid-root file made inside a container must never run as root for an
unprivileged host user, whatever path reaches it: image rootfs folders, a `--storage host`
container's upper dir, a committed image, a `kiwi mount` target (running and stopped).

The payload is a root-owned setuid copy of the host's `id`, whose `id -u` prints the
effective uid. Every attempt runs as uid 65534 and must fail (EACCES) or print 65534.
The data folder lives under a world-traversable folder, so only Kiwi's own modes and
mount flags stand between the attacker and the file; a control copy shows the payload
does give euid 0 where nothing protects it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import Kiwi, make_env, teardown_env

PAYLOAD = Path(shutil.which("id"))


@pytest.fixture
def open_kiwi(tmp_path_factory):
    """A Kiwi whose data folder's parents are 0755: nothing but Kiwi protects it."""
    env, _ = make_env(tmp_path_factory)
    base = Path(tempfile.mkdtemp(prefix="kiwi-setuid-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    env["KIWI_ROOT"] = str(base / "kiwi-data")
    k = Kiwi(env, base / "kiwi-data")
    yield k
    teardown_env(k)


def as_nobody(*argv, env=None) -> subprocess.CompletedProcess:
    """Groups, gid, then uid dropped before exec, so the exec's own path lookup has no
    capabilities. (setpriv(1) execs with CAP_DAC_OVERRIDE still effective: unfit here.)"""
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        user=65534,
        group=65534,
        extra_groups=[],
    )


def assert_no_root(path: Path) -> None:
    """uid 65534 running path must not become euid 0: refused, or its own uid."""
    try:
        done = as_nobody(path, "-u")
    except PermissionError:
        return  # EACCES on the way to the file
    assert done.returncode == 0 and done.stdout.strip() == "65534", f"{path}: {done}"


def setuid_image_tar(busybox_tar: Path, out: Path) -> Path:
    """The busybox rootfs plus /probe: root-owned, mode 4755."""
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo("probe")
        info.size, info.mode, info.uid, info.gid = PAYLOAD.stat().st_size, 0o4755, 0, 0
        with open(PAYLOAD, "rb") as data:
            dst.addfile(info, data)
    return out


def test_control_payload_gives_root_where_nothing_protects_it(open_kiwi):
    probe = open_kiwi.root.parent / "control-probe"
    shutil.copy(PAYLOAD, probe)
    os.chown(probe, 0, 0)
    os.chmod(probe, 0o4755)
    done = as_nobody(probe, "-u")
    assert done.stdout.strip() == "0", done  # so a "65534" elsewhere means Kiwi stopped it


def test_setuid_files_are_out_of_reach(open_kiwi, busybox_tar, tmp_path):
    kiwi = open_kiwi
    kiwi("import", "--name", "suid", setuid_image_tar(busybox_tar, tmp_path / "suid.tar.gz"))
    assert_no_root(kiwi.root / "images/suid/rootfs/probe")

    cid = kiwi.create("suid", "--storage", "host")
    kiwi.sh(cid, "cp /probe /x && chmod 4755 /x")
    upper = kiwi.root / f"containers/{cid}/state/upper/x"
    assert os.stat(upper).st_mode & 0o4000 and os.stat(upper).st_uid == 0
    assert_no_root(upper)

    targets = kiwi.root.parent / "targets"
    for name in ("running", "stopped"):
        (targets / name).mkdir(parents=True, mode=0o755)
    os.chmod(targets, 0o755)
    kiwi("mount", cid, targets / "running")
    try:
        assert (targets / "running/x").read_bytes() == PAYLOAD.read_bytes()  # root still reads it
        assert_no_root(targets / "running/x")
        assert_no_root(targets / "running/probe")
    finally:
        kiwi("unmount", cid)

    kiwi("commit", cid, "committed")
    assert_no_root(kiwi.root / "images/committed/rootfs/x")

    kiwi("stop", cid, "--time", "2")
    kiwi("mount", cid, targets / "stopped")
    try:
        assert os.stat(targets / "stopped/x").st_mode & 0o4000
        assert (targets / "stopped/x").read_bytes() == PAYLOAD.read_bytes()
        assert_no_root(targets / "stopped/x")
        options = subprocess.run(
            ["findmnt", "-no", "OPTIONS", str(targets / "stopped")], capture_output=True, text=True
        ).stdout.split(",")
        assert "nosuid" in options and "nodev" in options, options
    finally:
        kiwi("unmount", cid)


def test_data_folder_is_closed_and_old_modes_are_tightened(open_kiwi, busybox_tar):
    kiwi = open_kiwi
    kiwi("import", "--name", "busybox", busybox_tar)
    kiwi.create("busybox")
    folders = [kiwi.root / d for d in ("images", "containers", "mounts", "exports", ".tmp", ".locks")]
    for folder in [kiwi.root] + folders:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for folder in [kiwi.root] + folders:  # as an older Kiwi left them
        os.chmod(folder, 0o755)
    assert kiwi.json("list", "images")[0]["name"] == "busybox"
    for folder in folders:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    # KIWI_ROOT may be a shared folder (/srv, /tmp): an existing one keeps its mode.
    assert kiwi.root.stat().st_mode & 0o777 == 0o755
    assert_no_root_reads(kiwi.root / "images/busybox/rootfs/etc/passwd")
    done = as_nobody(*kiwi.cmd, "list", env=kiwi.env)
    assert done.returncode == 1 and "readable by root only" in done.stderr, done


def assert_no_root_reads(path: Path) -> None:
    try:
        done = as_nobody("cat", path)
    except PermissionError:
        return
    assert done.returncode != 0 and "Permission denied" in done.stderr, done


@pytest.mark.parametrize("command", [["list"], ["list", "images", "--json"], ["ip", "abc"]])
def test_reading_without_root_is_one_clear_line(open_kiwi, busybox_tar, command):
    open_kiwi("import", "--name", "busybox", busybox_tar)
    open_kiwi.create("busybox", "--name", "abc")
    done = as_nobody(*open_kiwi.cmd, *command, env=open_kiwi.env)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiwi: ") and "root" in lines[0], done.stderr
