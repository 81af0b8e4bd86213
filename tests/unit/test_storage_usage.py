"""storage.superblock_usage on real ext4 images made by mkfs.ext4 in regular files (no mount)."""

import os
import shutil
import subprocess

import pytest

from kiwi import storage

MIB = 1 << 20


def mkfs(img, size, *options, seed=None):
    with open(img, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.ext4", "-q", "-F", "-m", "0", *options]
    if seed is not None:
        argv += ["-d", str(seed)]
    subprocess.run([*argv, str(img)], check=True)
    return img


def dumpe2fs_usage(img):
    """The same figure from e2fsprogs' own reading of the superblock."""
    out = subprocess.run(["dumpe2fs", "-h", str(img)], check=True, capture_output=True, text=True).stdout
    fields = {
        key.strip(): value.strip() for key, _, value in (line.partition(":") for line in out.splitlines())
    }
    overhead = int(fields.get("Overhead clusters", 0))
    return (int(fields["Block count"]) - int(fields["Free blocks"]) - overhead) * int(fields["Block size"])


def test_the_image_kiwi_creates(tmp_path):
    storage.create_state(tmp_path, 256 * MIB)
    img = storage.image_path(tmp_path)
    used = storage.superblock_usage(img)
    assert used == dumpe2fs_usage(img)
    assert 0 < used < 2 * MIB  # two empty folders and the root


@pytest.mark.parametrize(
    "options",
    [
        ("-b", "1024", "-O", "^64bit"),
        ("-b", "1024", "-O", "64bit"),
        ("-b", "4096", "-O", "^64bit"),
        ("-b", "4096", "-O", "64bit"),
    ],
)
def test_data_counts_and_matches_e2fsprogs(tmp_path, options):
    seed = tmp_path / "seed"
    seed.mkdir()
    empty = storage.superblock_usage(mkfs(tmp_path / "empty.img", 64 * MIB, *options, seed=seed))
    (seed / "data").write_bytes(os.urandom(3 * MIB))
    (seed / "dir").mkdir()
    (seed / "dir" / "small").write_bytes(b"x" * 100)
    img = mkfs(tmp_path / "full.img", 64 * MIB, *options, seed=seed)
    used = storage.superblock_usage(img)
    assert used == dumpe2fs_usage(img)
    assert 3 * MIB <= used - empty < 4 * MIB


def test_the_high_halves_count_only_on_64bit(tmp_path):
    """Block and free counts above 2^32 blocks: patch the high halves of a real superblock."""
    for feature, counted in (("64bit", True), ("^64bit", False)):
        img = mkfs(tmp_path / f"{feature}.img", 16 * MIB, "-b", "4096", "-O", feature)
        before = storage.superblock_usage(img)
        with open(img, "r+b") as f:
            f.seek(1024 + 0x150)
            f.write((3).to_bytes(4, "little"))  # s_blocks_count_hi
            f.seek(1024 + 0x158)
            f.write((1).to_bytes(4, "little"))  # s_free_blocks_count_hi
        extra = (2 << 32) * 4096 if counted else 0
        assert storage.superblock_usage(img) == before + extra, feature


def test_not_an_ext4_image(tmp_path):
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(8192))
    short = tmp_path / "short.img"
    short.write_bytes(b"\xff" * 1500)
    assert storage.superblock_usage(zeros) is None
    assert storage.superblock_usage(short) is None
    assert storage.superblock_usage(tmp_path / "missing.img") is None
    assert storage.superblock_usage(tmp_path) is None  # a folder


def test_a_truncated_superblock_is_not_read_past_its_end(tmp_path):
    img = mkfs(tmp_path / "whole.img", 16 * MIB)
    with open(img, "rb") as f:
        head = f.read(1024 + 0x200)  # magic (0x38) present, the overhead field (0x248) cut off
    cut = tmp_path / "cut.img"
    cut.write_bytes(head)
    assert storage.superblock_usage(cut) is None


@pytest.fixture(autouse=True)
def need_e2fsprogs():
    # scripts/install-deps installs e2fsprogs; without it these tests cannot run at all.
    missing = [tool for tool in ("mkfs.ext4", "dumpe2fs") if shutil.which(tool) is None]
    assert not missing, f"install e2fsprogs (scripts/install-deps): {missing} not found"
