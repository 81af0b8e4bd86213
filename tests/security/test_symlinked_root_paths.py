"""A hostile image whose /proc, /sys, /dev and identity files (/etc/hostname, hosts,
resolv.conf) are absolute symlinks to host paths. Stage 2 now mounts, masks and writes
those beneath the container's root before it pivots (issue 20): every one must land in
the container, none on the host, in both modes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

REPLACED = {"proc", "sys", "dev", "etc/hostname", "etc/hosts", "etc/resolv.conf"}
SENTINEL = "host file, never written by kiwi\n"


def hostile_image_tar(busybox_tar: Path, out: Path, host: Path) -> Path:
    """The busybox rootfs with REPLACED as symlinks to the same names under host."""
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            if member.name.lstrip("./") in REPLACED or member.name.lstrip("./").startswith("dev/"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        for name in sorted(REPLACED):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, str(host / name)
            dst.addfile(link, io.BytesIO())
    return out


def host_mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


@pytest.mark.parametrize("mode", ["unprivileged", "privileged"])
def test_symlinks_to_host_paths_never_take_the_containers_mounts_or_files(kiwi, busybox_tar, tmp_path, mode):
    host = tmp_path / "host"
    for folder in ("proc", "sys", "dev", "etc"):
        (host / folder).mkdir(parents=True)
    for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
        (host / name).write_text(SENTINEL)
    kiwi("import", "--name", "links", hostile_image_tar(busybox_tar, tmp_path / "links.tar.gz", host))
    cid = kiwi.create("links", "--name", "linked", *(["--privileged"] if mode == "privileged" else []))
    try:
        assert kiwi.sh(cid, "cat /etc/hostname").stdout == "linked\n"
        inside = kiwi.sh(cid, "cat /etc/hosts; grep -c nameserver /etc/resolv.conf").stdout
        assert "linked" in inside
        # Inside: the container's own proc, sys and dev, masked as always.
        assert kiwi.sh(cid, "cat /proc/1/comm").stdout == "kiwi-init\n"
        assert kiwi.sh(cid, "test -c /dev/null && test ! -s /proc/kcore && echo ok").stdout == "ok\n"
        assert kiwi.sh(cid, "grep -c ' /proc/sys ro,' /proc/self/mountinfo").stdout.strip() != "0"
        # The host: its files as they were, its folders empty and unmounted.
        for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
            assert (host / name).read_text() == SENTINEL, name
        for folder in ("proc", "sys", "dev"):
            assert list((host / folder).iterdir()) == [], folder
        assert host_mounts_under(host) == []
    finally:
        kiwi("stop", cid, check=False)
    assert host_mounts_under(host) == []
