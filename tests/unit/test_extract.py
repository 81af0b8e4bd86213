"""kiwi.extract and kiwi.images on tarballs built in memory, hostile ones included."""

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import struct
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import zstandard

from kiwi import extract, images
from kiwi.errors import KiwiError
from kiwi.extract import (
    Extractor,
    UnsafeArchiveError,
    extract_archive,
    iter_members,
    normalise_member_path,
    open_archive,
    open_tar_stream,
)
from kiwi.store import Store

MTIME_NS = 1_700_000_000_123_456_789
# security.capability v2, cap_net_raw permitted + effective (what ping carries)
PING_CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


# ---------------------------------------------------------------- building archives


def member(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, linkname="", xattrs=None, mtime_ns=MTIME_NS):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, linkname
    info.mtime = mtime_ns // 10**9
    info.pax_headers = {"mtime": f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"}
    for key, value in (xattrs or {}).items():
        info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return info


def f(name, data=b"", **kw):
    return member(name, **kw), data


def d(name, mode=0o755, **kw):
    return member(name, tarfile.DIRTYPE, mode=mode, **kw), None


def sym(name, target, **kw):
    return member(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kw), None


def hard(name, target, **kw):
    return member(name, tarfile.LNKTYPE, linkname=target, **kw), None


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


COMPRESSORS = {
    "tar": lambda b: b,
    "tar.gz": gzip.compress,
    "tar.bz2": bz2.compress,
    "tar.xz": lzma.compress,
    "tar.zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def write_archive(tmp_path, entries, ext="tar", fmt=tarfile.PAX_FORMAT):
    path = tmp_path / f"archive-{uuid.uuid4().hex[:8]}.{ext}"
    path.write_bytes(COMPRESSORS[ext](tar_bytes(entries, fmt)))
    return path


def lstat(path):
    return os.stat(path, follow_symlinks=False)


# ---------------------------------------------------------------- what is kept


def sample_tree():
    return [
        d("./"),
        d("etc"),
        f("etc/hostname", b"kiwi\n", uid=0, gid=0),
        d("home/user", mode=0o750, uid=1000, gid=1000),
        f("home/user/notes", b"hello", mode=0o600, uid=1000, gid=1001),
        f("bin/ping", b"\x7fELF ping", mode=0o755, xattrs={"security.capability": PING_CAPS}),
        f("bin/su", b"\x7fELF su", mode=0o4755),
        f("bin/wall", b"\x7fELF wall", mode=0o2755, gid=5),
        d("tmp", mode=0o1777),
        f("data/tagged", b"x", xattrs={"user.kiwi": b"\x00\xffbinary"}),
        sym("bin/sh", "busybox", uid=3, gid=4),
        sym("lib", "usr/lib"),
        hard("bin/su-again", "bin/su"),
        d("ro", mode=0o555),
        f("ro/inside", b"written into a read-only folder"),
    ]


def test_keeps_owners_modes_times_links_and_xattrs(tmp_path):
    dest = tmp_path / "root"
    stats = extract_archive(write_archive(tmp_path, sample_tree()), dest)

    assert (dest / "etc/hostname").read_bytes() == b"kiwi\n"
    notes = lstat(dest / "home/user/notes")
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1001, 0o600)
    home = lstat(dest / "home/user")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o750)
    assert stat.S_IMODE(lstat(dest / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(lstat(dest / "bin/wall").st_mode) == 0o2755
    assert lstat(dest / "bin/wall").st_gid == 5
    assert stat.S_IMODE(lstat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(lstat(dest / "ro").st_mode) == 0o555
    assert (dest / "ro/inside").read_bytes() == b"written into a read-only folder"
    assert os.getxattr(dest / "bin/ping", "security.capability") == PING_CAPS
    assert os.getxattr(dest / "data/tagged", "user.kiwi") == b"\x00\xffbinary"
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert (lstat(dest / "bin/sh").st_uid, lstat(dest / "bin/sh").st_gid) == (3, 4)
    assert os.readlink(dest / "lib") == "usr/lib"
    assert lstat(dest / "bin/su-again").st_ino == lstat(dest / "bin/su").st_ino
    for path in ("etc", "etc/hostname", "bin/sh", "ro", "home/user/notes", "tmp"):
        assert lstat(dest / path).st_mtime_ns == MTIME_NS, path
    assert lstat(dest).st_mtime_ns == MTIME_NS  # './' applies to the top folder
    assert (stats.files, stats.symlinks, stats.hardlinks, stats.skipped) == (7, 2, 1, 0)


def test_sha256_and_size_are_of_the_archive_file(tmp_path):
    archive = write_archive(tmp_path, sample_tree(), "tar.xz")
    stats = extract_archive(archive, tmp_path / "root")
    assert stats.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert stats.archive_size == archive.stat().st_size


@pytest.mark.parametrize("ext", sorted(COMPRESSORS))
def test_every_compression_format(tmp_path, ext):
    big = os.urandom(3 << 20)  # larger than one decoded chunk
    archive = write_archive(tmp_path, [f("a/big", big), f("a/small", b"s")], ext)
    calls = []
    stats = extract_archive(archive, tmp_path / "root", progress=lambda *a: calls.append(a))
    assert (tmp_path / "root/a/big").read_bytes() == big
    assert (tmp_path / "root/a/small").read_bytes() == b"s"
    assert stats.bytes == len(big) + 1
    assert stats.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    size = archive.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert all(done <= total == size for done, total in calls)


def test_concatenated_zstd_frames_and_gzip_members(tmp_path):
    data = tar_bytes([f("one", b"1" * 5000), f("two", b"2" * 7000)])
    half = len(data) // 2
    cctx = zstandard.ZstdCompressor()
    checked = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    skippable = bytes.fromhex("502a4d18") + (5).to_bytes(4, "little") + b"12345"
    for ext, blob in (
        ("tar.zst", cctx.compress(data[:half]) + cctx.compress(data[half:])),
        ("tar.zst", skippable + checked.compress(data) + skippable),
        ("tar.gz", gzip.compress(data[:half]) + gzip.compress(data[half:])),
    ):
        archive = tmp_path / f"multi-{uuid.uuid4().hex[:6]}.{ext}"
        archive.write_bytes(blob)
        dest = tmp_path / (archive.name + ".out")
        extract_archive(archive, dest)
        assert (dest / "two").read_bytes() == b"2" * 7000


def test_long_names_in_gnu_and_pax(tmp_path):
    deep = "/".join(["directory-with-a-long-name"] * 8) + "/" + "f" * 200
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        dest = tmp_path / f"root{fmt}"
        extract_archive(
            write_archive(tmp_path, [f(deep, b"deep"), sym(deep + "-l", "x" * 300)], fmt=fmt), dest
        )
        assert (dest / deep).read_bytes() == b"deep"
        assert os.readlink(dest / (deep + "-l")) == "x" * 300


def test_devices_are_skipped_fifos_are_kept(tmp_path):
    specials = [member("dev/null", tarfile.CHRTYPE), member("dev/sda", tarfile.BLKTYPE)]
    for info in specials:
        info.devmajor, info.devminor = 1, 3
    fifo = member("run/fifo", tarfile.FIFOTYPE, mode=0o640, uid=12, gid=34)
    entries = [(info, None) for info in specials] + [
        hard("dev/null2", "dev/null"),
        f("dev/keep", b"k"),
        (fifo, None),
        hard("run/fifo2", "run/fifo"),
    ]
    stats = extract_archive(write_archive(tmp_path, entries), tmp_path / "root")
    assert stats.skipped == 3 and stats.fifos == 1 and stats.hardlinks == 1
    assert sorted(os.listdir(tmp_path / "root/dev")) == ["keep"]
    st = lstat(tmp_path / "root/run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == ((12, 34) if os.geteuid() == 0 else (os.getuid(), os.getgid()))
    assert st.st_mtime_ns == MTIME_NS
    assert st.st_ino == lstat(tmp_path / "root/run/fifo2").st_ino


def test_later_duplicate_replaces_earlier(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("precious")
    entries = [
        f("a", b"first"),
        f("a", b"second"),
        sym("b", str(outside)),
        f("b", b"replaces the symlink, not its target"),
        f("c", b"file"),
        d("c"),
        f("c/in", b"dir now"),
        d("e"),
        f("e", b"empty dir replaced by a file"),
        f("h", b"old"),
        hard("h2", "h"),
        f("h", b"new"),
    ]
    dest = tmp_path / "root"
    extract_archive(write_archive(tmp_path, entries), dest)
    assert (dest / "a").read_bytes() == b"second"
    assert not (dest / "b").is_symlink()
    assert outside.read_text() == "precious"
    assert (dest / "c/in").read_bytes() == b"dir now"
    assert (dest / "e").read_bytes() == b"empty dir replaced by a file"
    assert (dest / "h").read_bytes() == b"new" and (dest / "h2").read_bytes() == b"old"


def test_non_empty_directory_is_not_replaced(tmp_path):
    archive = write_archive(tmp_path, [f("d/x", b"x"), f("d", b"file")])
    with pytest.raises(KiwiError, match="non-empty directory 'd'"):
        extract_archive(archive, tmp_path / "root")


def test_overlay_xattrs_from_the_archive_are_dropped(tmp_path):
    entries = [
        d("dir", xattrs={"trusted.overlay.opaque": b"y"}),
        f("dir/f", b"", xattrs={"trusted.overlay.redirect": b"/etc", "user.ok": b"1"}),
    ]
    stats = extract_archive(write_archive(tmp_path, entries), tmp_path / "root")
    assert stats.skipped_xattrs == 2
    assert os.listxattr(tmp_path / "root/dir/f") == ["user.ok"]
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "root/dir")


def test_normalise_member_path():
    assert normalise_member_path("./usr//bin/./") == "usr/bin"
    assert normalise_member_path("./") == ""
    for bad in ("../x", "a/../../x", "/etc/passwd", "a/.."):
        with pytest.raises(UnsafeArchiveError):
            normalise_member_path(bad)


# ---------------------------------------------------------------- hostile archives

ESCAPE_NAME = f"kiwi-test-escape-{uuid.uuid4().hex}"

HOSTILE = {
    "dotdot": ([f("../" + ESCAPE_NAME, b"x")], "climbs out with '..'"),
    "absolute": ([f(f"/tmp/{ESCAPE_NAME}", b"x")], "absolute path"),
    "symlink-to-root": ([sym("a", "/"), f(f"a/tmp/{ESCAPE_NAME}", b"x")], "written through the symlink 'a'"),
    "hardlink-out": ([hard("passwd", "../../etc/passwd")], "hard link 'passwd' points outside"),
    "hardlink-absolute": ([hard("passwd", "/etc/passwd")], "hard link 'passwd' points outside"),
    "hardlink-via-symlink": ([sym("s", "/etc"), hard("passwd", "s/passwd")], "through the symlink 's'"),
    "symlink-chain": (
        [sym("b", "../.."), sym("a", "b"), f(f"a/tmp/{ESCAPE_NAME}", b"x")],
        "through the symlink 'a'",
    ),
    "symlink-chain-deep": (
        [d("x"), sym("x/b", "../../.."), sym("x/a", "b"), d(f"x/a/tmp/{ESCAPE_NAME}")],
        "through the symlink 'x/a'",
    ),
    "symlinked-dir-later": (
        [d("dir"), f("dir/ok", b""), sym("link", "/tmp"), f(f"link/{ESCAPE_NAME}", b"x")],
        "through the symlink 'link'",
    ),
}


def assert_nothing_escaped(tmp_path):
    assert not Path("/tmp", ESCAPE_NAME).exists()
    assert not (tmp_path.parent / ESCAPE_NAME).exists()
    assert not (tmp_path / ESCAPE_NAME).exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(tmp_path, case):
    entries, message = HOSTILE[case]
    dest = tmp_path / "deep/er/root"
    with pytest.raises(UnsafeArchiveError, match=message) as caught:
        extract_archive(write_archive(tmp_path, entries), dest)
    assert "\n" not in str(caught.value)
    assert_nothing_escaped(tmp_path)


def test_symlink_to_outside_file_is_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for entries in ([sym("v", str(victim)), f("v/x", b"x")], [sym("v", str(tmp_path)), d("v/sub")]):
        with pytest.raises(UnsafeArchiveError):
            extract_archive(write_archive(tmp_path, entries), tmp_path / uuid.uuid4().hex)
    assert victim.read_text() == "precious"
    assert not (tmp_path / "sub").exists()


# ---------------------------------------------------------------- damaged archives


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"this is not an archive at all" * 40)
    with pytest.raises(KiwiError, match="is not a tar, tar.gz"):
        extract_archive(junk, tmp_path / "root")
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(KiwiError, match="is not a tar"):
        open_archive(empty)


@pytest.mark.parametrize("ext", ["tar.xz", "tar.zst", "tar.gz", "tar.bz2"])
def test_truncated_compressed_archive(tmp_path, ext):
    archive = write_archive(tmp_path, [f("big", os.urandom(300_000))], ext)
    archive.write_bytes(archive.read_bytes()[:-2000])
    with pytest.raises(KiwiError, match="damaged or truncated|truncated"):
        extract_archive(archive, tmp_path / "root")


def test_truncated_plain_tar_and_bad_header(tmp_path):
    data = tar_bytes([f("a", b"a" * 5000), f("b", b"b" * 5000)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:3000])
    with pytest.raises(KiwiError, match="truncated|damaged"):
        extract_archive(cut, tmp_path / "r1")
    bad = bytearray(data)
    second_header = data.index(b"b" * 100) - 512
    bad[second_header : second_header + 100] = b"\x01" * 100
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(bad))
    with pytest.raises(KiwiError, match="damaged"):
        extract_archive(broken, tmp_path / "r2")


# ---------------------------------------------------------------- per-member API


def test_routing_one_tar_into_two_extractors(tmp_path):
    archive = write_archive(
        tmp_path,
        [
            f("kiwi.json", b"{}"),
            d("rootfs"),
            f("rootfs/etc/os", b"base"),
            hard("rootfs/etc/os-link", "rootfs/etc/os"),
            d("upper/etc"),
            f("upper/etc/.wh.os", b""),
            f("upper/var/.wh..wh..opq", b""),
            f("upper/new", b"n"),
        ],
    )
    base, upper = tmp_path / "base", tmp_path / "upper"
    with open_archive(archive) as stream, Extractor(base) as b, Extractor(upper, allow_whiteouts=True) as u:
        tar = open_tar_stream(stream, archive)
        for m in iter_members(tar, archive):
            top, _, rest = m.name.partition("/")
            if top == "rootfs":
                b.add(tar, m, relpath=rest, linkpath=m.linkname.partition("/")[2] or None)
            elif top == "upper" and rest.endswith(".wh..wh..opq"):
                u.set_opaque(rest.rpartition("/")[0])
            elif top == "upper" and rest.rpartition("/")[2].startswith(".wh."):
                head, _, leaf = rest.rpartition("/")
                u.add_whiteout(f"{head}/{leaf[4:]}")
            elif top == "upper":
                u.add(tar, m, relpath=rest)
        b.finish()
        ustats = u.finish()
    assert (base / "etc/os").read_bytes() == b"base"
    assert lstat(base / "etc/os-link").st_ino == lstat(base / "etc/os").st_ino
    whiteout = lstat(upper / "etc/os")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "var", "trusted.overlay.opaque") == b"y"
    assert (upper / "new").read_bytes() == b"n"
    assert ustats.whiteouts == 1 and not (base / "kiwi.json").exists()


def test_whiteouts_need_permission(tmp_path):
    with Extractor(tmp_path / "root") as extractor:
        with pytest.raises(UnsafeArchiveError, match="whiteout"):
            extractor.add_whiteout("etc/passwd")
        with pytest.raises(UnsafeArchiveError, match="whiteout"):
            extractor.set_opaque("etc")
    with Extractor(tmp_path / "root2", allow_whiteouts=True) as extractor:
        with pytest.raises(UnsafeArchiveError, match="'..'"):
            extractor.add_whiteout("../x")


# ---------------------------------------------------------------- import_image


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "kiwi-data")


def leftovers(store):
    found = []
    for folder in (store.images_dir, store.tmp_dir):
        if folder.exists():
            found += [f"{folder.name}/{e}" for e in os.listdir(folder)]
    return found


def test_import_image_and_list_get_delete(tmp_path, store):
    archive = write_archive(tmp_path, sample_tree(), "tar.zst")
    info = images.import_image(store, "mini", archive, source="test")
    assert info["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert info["source"] == "test" and info["name"] == "mini" and info["created"].endswith("Z")
    assert info["files"] > 10 and info["size"] > 0
    assert (store.image_dir("mini") / "rootfs/bin/su").exists()
    assert images.get_image(store, "mini") == info
    assert images.image_exists(store, "mini")
    assert [i["name"] for i in images.list_images(store)] == ["mini"]
    assert leftovers(store) == ["images/mini"]
    with pytest.raises(KiwiError, match="already exists"):
        images.import_image(store, "mini", archive)
    images.delete_image(store, "mini")
    assert leftovers(store) == [] and images.list_images(store) == []
    with pytest.raises(KiwiError, match="no image named mini; see 'kiwi list images'"):
        images.get_image(store, "mini")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_import_of_hostile_archive_leaves_nothing(tmp_path, store, case):
    entries, message = HOSTILE[case]
    archive = write_archive(tmp_path, [f("before", b"b")] + entries, "tar.xz")
    with pytest.raises(UnsafeArchiveError, match=message):
        images.import_image(store, "evil", archive)
    assert leftovers(store) == []
    assert_nothing_escaped(tmp_path)


def test_import_refuses_bad_names_and_missing_files(tmp_path, store):
    archive = write_archive(tmp_path, [f("a", b"")])
    for bad in ("Bad", "../x", "", "-x", "a/b"):
        with pytest.raises(KiwiError, match="invalid image name"):
            images.import_image(store, bad, archive)
    with pytest.raises(KiwiError, match="is not a file"):
        images.import_image(store, "ok", tmp_path / "missing.tar")
    assert leftovers(store) == []


def test_interrupted_import_leaves_nothing(tmp_path, store):
    archive = write_archive(tmp_path, [f(f"f{i}", b"x" * 100) for i in range(50)], "tar.gz")

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        images.import_image(store, "half", archive, progress=interrupt)
    assert leftovers(store) == []


def test_cleanup_removes_only_unlocked_staging(store):
    store.tmp_dir.mkdir(parents=True)
    stale = store.tmp_dir / "import-dead-abc"
    (stale / "rootfs").mkdir(parents=True)
    live = store.tmp_dir / "import-live-def"
    live.mkdir()
    fd = images._hold_staging_lock(live)
    try:
        assert images.remove_stale_staging(store) == ["import-dead-abc"]
        assert live.exists() and not stale.exists()
    finally:
        os.close(fd)


# ---------------------------------------------------------------- sparse files

SPARSE_FORMATS = {
    "gnu": ["--format=gnu"],
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
}


def sparse_file(path, size, regions):
    with open(path, "wb") as out:
        out.truncate(size)
        for offset, data in regions:
            out.seek(offset)
            out.write(data)


@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_sparse_files_stay_sparse(tmp_path, fmt):
    """GNU tar's sparse formats, as tarfile parses them: holes are never written."""
    src = tmp_path / "src"
    src.mkdir()
    size = 64 << 20
    regions = [(0, b"head" * 1000), (30 << 20, os.urandom(70000)), (size - 5, b"tail!")]
    sparse_file(src / "disk.img", size, regions)
    sparse_file(src / "hole-at-end", 64 << 20, [(4096, b"x")])
    archive = tmp_path / "sparse.tar.xz"
    tar = ["tar", "--sparse", *SPARSE_FORMATS[fmt], "-cJf", str(archive), "-C", str(src)]
    subprocess.run([*tar, "disk.img", "hole-at-end"], check=True)
    dest = tmp_path / "dest"
    stats = extract_archive(archive, dest)
    for name in ("disk.img", "hole-at-end"):
        got, want = dest / name, src / name
        assert got.stat().st_size == want.stat().st_size
        assert got.stat().st_blocks * 512 < 1 << 20, f"{name} was written out in full"
        assert file_sha256(got) == file_sha256(want)
    assert stats.files == 2


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def gnu_sparse_member(name, stored: bytes, realsize, regions):
    """An old-GNU sparse header ('S') with the given map, written by hand as an attacker would."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    head = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    head[156] = ord(tarfile.GNUTYPE_SPARSE)
    for i, (offset, length) in enumerate(regions):
        head[386 + 24 * i : 386 + 24 * i + 24] = tarfile.itn(offset, 12) + tarfile.itn(length, 12)
    head[483:495] = tarfile.itn(realsize, 12)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head) + stored + b"\0" * (-len(stored) % 512)


@pytest.mark.parametrize(
    "regions, realsize",
    [
        ([(4096, 512)], 1000),  # data beyond the file's end
        ([(0, 512), (256, 512)], 1 << 20),  # regions overlap / go backwards
        ([(0, 1 << 20)], 1 << 20),  # maps more than the 512 bytes stored
    ],
)
def test_damaged_sparse_map_is_refused(tmp_path, regions, realsize):
    data = gnu_sparse_member("bad", b"x" * 512, realsize, regions) + b"\0" * 1024
    archive = tmp_path / "bad.tar"
    archive.write_bytes(data)
    with pytest.raises(KiwiError, match="sparse map|maps more data"):
        extract_archive(archive, tmp_path / "dest")


def test_hand_made_sparse_member_is_extracted(tmp_path):
    data = gnu_sparse_member("s", b"A" * 512, 10 << 20, [(5 << 20, 512)]) + b"\0" * 1024
    archive = tmp_path / "s.tar"
    archive.write_bytes(data)
    extract_archive(archive, tmp_path / "dest")
    got = tmp_path / "dest" / "s"
    assert got.stat().st_size == 10 << 20 and got.stat().st_blocks * 512 <= 64 << 10
    with open(got, "rb") as f:
        f.seek(5 << 20)
        assert f.read(513) == b"A" * 512 + b"\0"


def test_free_space_counts_every_block_a_sparse_map_touches(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        space = extract._FreeSpace(fd, tmp_path)
        block, before = space.block, space.free
        space.claim([(i << 20, 1) for i in range(1000)], "scattered")  # 1000 bytes, 1000 blocks
        assert before - space.free == 1000 * block
        space.claim([(block - 1, 2)], "straddling")
        assert before - space.free == 1002 * block
        with pytest.raises(extract.NoSpaceError, match="'huge' needs .* free"):
            space.claim([(0, 1 << 60)], "huge")
    finally:
        os.close(fd)


def pax_sparse_member(name, sparse_map: bytes, data: bytes, realsize, after: str = "") -> bytes:
    """A PAX sparse 1.0 member (GNU tar's --sparse-version=1.0) with a hand-written map,
    after a regular file named `after` if given."""
    body = sparse_map + b"\0" * (-len(sparse_map) % 512) + data
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.size = len(body)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if after:
            tar.addfile(tarfile.TarInfo(after))
        tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def compressed_stream(*parts) -> bytes:
    """xz of the parts, each a bytes or an (int, bytes) repeat: a bomb of a few KB."""
    packer = lzma.LZMACompressor()
    out = []
    for part in parts:
        count, chunk = part if isinstance(part, tuple) else (1, part)
        out += [packer.compress(chunk) for _ in range(count)]
    return b"".join(out) + packer.flush()


@pytest.mark.parametrize(
    "sparse_map",
    [
        b"3\n0\n4\n",  # says 3 regions, gives half of one: tarfile's ValueError before
        b"abc\n",  # a count that is no number
        b"1\n0\nfour\n",
        b"1\n-8\n4\n",  # a region before the file's start
        b"2\n0\n-4\n8\n8\n",  # a negative length
    ],
)
def test_lying_pax_sparse_map_is_damage(tmp_path, sparse_map):
    archive = tmp_path / "lies.tar"
    # After a first member: damage, not "not a tar archive".
    archive.write_bytes(pax_sparse_member("f", sparse_map, b"A" * 16, 100, after="first"))
    with pytest.raises(KiwiError, match="damaged"):
        extract_archive(archive, tmp_path / "dest")


def test_pax_sparse_map_of_too_many_regions_is_refused_before_it_is_read(tmp_path):
    """50 M regions of 'nothing' in 2 KB of xz made tarfile build a list of 50 M tuples
    (5 M: 550 MB of memory, 5 s)."""
    count = extract.MAX_SPARSE_REGIONS + 1
    head = pax_sparse_member("f", f"{count}\n".encode(), b"", 100)
    archive = tmp_path / "regions.tar.xz"
    archive.write_bytes(compressed_stream(head[:-1024], (count // 1024 + 1, b"0\n0\n" * 1024), b"\0" * 1536))
    with pytest.raises(KiwiError, match=f"at most {extract.MAX_SPARSE_REGIONS}"):
        extract_archive(archive, tmp_path / "dest")


def test_old_gnu_sparse_extension_blocks_are_bounded(tmp_path):
    blocks = extract.MAX_SPARSE_REGIONS // 21 + 2
    head = bytearray(gnu_sparse_member("s", b"", 1 << 30, [(1, 1)]))
    head[482] = 1  # isextended
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    extension = bytearray(512)
    for i in range(21):
        extension[24 * i : 24 * i + 24] = tarfile.itn(1, 12) + tarfile.itn(1, 12)
    extension[504] = 1
    archive = tmp_path / "old.tar.xz"
    archive.write_bytes(compressed_stream(bytes(head[:512]), (blocks, bytes(extension)), b"\0" * 1024))
    with pytest.raises(KiwiError, match=f"more than {extract.MAX_SPARSE_REGIONS} regions"):
        extract_archive(archive, tmp_path / "dest")


def test_old_gnu_sparse_extension_blocks_mapping_nothing_are_bounded(tmp_path):
    """Blocks of empty slots, each saying another follows: 75 KB of xz were 1 M blocks and
    13 s of CPU, and no bound (only regions were counted)."""
    blocks = extract.MAX_SPARSE_REGIONS // 21 + 2
    head = bytearray(gnu_sparse_member("s", b"", 4096, []))
    head[482] = 1  # isextended
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    extension = bytearray(512)
    extension[504] = 1
    archive = tmp_path / "empty.tar.xz"
    archive.write_bytes(compressed_stream(bytes(head[:512]), (blocks, bytes(extension)), b"\0" * 1024))
    with pytest.raises(KiwiError, match=f"more than {extract.MAX_SPARSE_REGIONS} regions"):
        extract_archive(archive, tmp_path / "dest")


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_chain_of_extended_headers_is_damage(tmp_path, kind):
    """5000 pax (or long name) headers in a row: tarfile reads each next one by recursion, and
    the RecursionError was told as `kiwi: the files are nested too deeply`."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, 11
    raw = header._create_header(header.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")  # type: ignore[attr-defined]
    record = (b"11 a.b=cde\n" if kind == tarfile.XHDTYPE else b"x" * 10 + b"\0").ljust(512, b"\0")
    archive = tmp_path / "chain.tar"
    archive.write_bytes((raw + record) * 5000 + tarfile.TarInfo("z").tobuf() + b"\0" * 1024)
    with pytest.raises(KiwiError, match="extended headers follow each other.*damaged"):
        extract_archive(archive, tmp_path / "dest")


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_huge_long_name_or_pax_header_is_refused_before_it_is_read(tmp_path, kind):
    """A 300 MB GNU long name in 46 KB of xz: 1.2 GB of kiwi's memory, then an error line
    of 300 MB on the terminal."""
    size = extract.MAX_PAX_HEADER + 512
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, size
    raw = header._create_header(header.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")  # type: ignore[attr-defined]
    filler = b"a" * 511 + b"\n" if kind == tarfile.GNUTYPE_LONGNAME else b"511 comment=" + b"a" * 498 + b"\n"
    archive = tmp_path / "long.tar.xz"
    archive.write_bytes(compressed_stream(raw, (size // 512, filler), b"\0" * 2048))
    with pytest.raises(KiwiError, match="Kiwi reads at most") as error:
        extract_archive(archive, tmp_path / "dest")
    assert len(str(error.value)) < 300
