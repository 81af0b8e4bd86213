"""The .kiwi format: round trips and hostile archives (run as root: xattrs, mknod)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from kiwi import archive
from kiwi.errors import KiwiError

PAX = tarfile.PAX_FORMAT
ENC = dict(encoding="utf-8", errors="surrogateescape")


# ------------------------------------------------------------------ trees


def make_rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "private").mkdir(mode=0o700)
    os.chown(root / "private", 1234, 2345)
    tool = root / "bin" / "tool"
    tool.write_bytes(os.urandom(200_000) + b"x" * 300_000)
    os.chmod(tool, 0o4755)
    os.link(tool, root / "bin" / "tool-hardlink")
    os.symlink("tool", root / "bin" / "relative-link")
    os.symlink("/etc/passwd", root / "bin" / "absolute-link")
    passwd = root / "etc" / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    os.setxattr(passwd, "user.comment", b"hello")
    os.setxattr(passwd, "trusted.kiwi-test", b"\xff\x00binary")
    owned = root / "etc" / "conf.d" / "owned"
    owned.write_text("data")
    os.chown(owned, 1000, 1001)
    os.utime(owned, (1_600_000_000, 1_600_000_000))
    (root / "etc" / "empty").write_bytes(b"")
    (root / "opq").mkdir()
    (root / "opq" / "old").write_text("hidden by the opaque upper dir")
    name = os.fsdecode(b"caf\xc3\xa9-and-\xff")  # not UTF-8: must survive byte for byte
    (root / name).write_text("odd name")
    return root


def make_upper(upper: Path) -> Path:
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/ash\n")
    os.mknod(upper / "etc" / "empty", stat.S_IFCHR, os.makedev(0, 0))  # whiteout
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq" / "new").write_text("new")
    (upper / "new-dir" / "deep").mkdir(parents=True)
    (upper / "new-dir" / "deep" / "file").write_bytes(b"z" * 10_000)
    os.link(upper / "new-dir" / "deep" / "file", upper / "new-dir" / "second-name")
    return upper


def describe(root: Path) -> dict:
    """Everything the format promises to keep, per path."""
    out = {}
    inode_names = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "xattrs": {}}
            if not stat.S_ISDIR(st.st_mode):
                entry["mtime"] = int(st.st_mtime)
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                inode_names.setdefault(st.st_ino, []).append(rel)
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            if stat.S_ISCHR(st.st_mode):
                entry["rdev"] = st.st_rdev
            if not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {k: os.getxattr(path, k) for k in os.listxattr(path)}
            out[rel] = entry
    out["<hardlinks>"] = sorted(sorted(v) for v in inode_names.values() if len(v) > 1)
    return out


@pytest.fixture
def trees(tmp_path):
    return make_rootfs(tmp_path / "rootfs"), make_upper(tmp_path / "upper")


# ------------------------------------------------------------- round trips


def test_container_round_trip_keeps_everything(tmp_path, trees):
    rootfs, upper = trees
    seen = []
    settings = {"id": "8f3b9d2a1c44", "ipv4": "10.44.0.2", "name": "web", "memory": 1 << 28}
    manifest = archive.write_archive(
        tmp_path / "c.kiwi",
        "container",
        settings,
        {"name": "alpine", "sha256": "ab" * 32},
        rootfs,
        upper,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1][0] == seen[-1][1] > 500_000
    assert manifest["settings"] == {"name": "web", "memory": 1 << 28}  # no id, no ip

    out_rootfs, out_upper = tmp_path / "out-rootfs", tmp_path / "out-upper"
    read_back = archive.extract_archive(tmp_path / "c.kiwi", out_rootfs, out_upper)
    assert read_back == archive.read_manifest(tmp_path / "c.kiwi")
    assert read_back["parts"] == manifest["parts"]
    assert describe(out_rootfs) == describe(rootfs)
    assert describe(out_upper) == describe(upper)
    assert stat.S_IMODE(os.stat(out_rootfs / "bin" / "tool").st_mode) == 0o4755
    assert os.getxattr(out_upper / "opq", "trusted.overlay.opaque") == b"y"


def test_sparse_files_keep_their_holes(tmp_path, trees):
    """A file of 64 MiB with 3 bytes of data (root inside makes terabytes so, within any
    storage limit) is stored as its data alone, restored with its holes, and GNU tar reads it."""
    rootfs, upper = trees
    big = 64 << 20
    with open(upper / "sparse", "wb") as f:
        for offset in (0, 32 << 20, big - 1):
            os.pwrite(f.fileno(), b"S", offset)
    with open(upper / "holes-only", "wb") as f:
        f.truncate(big)
    manifest = archive.write_archive(tmp_path / "c.kiwi", "container", {}, {}, rootfs, upper)
    assert manifest["parts"]["upper"]["size"] < 1 << 20  # the tar bytes: holes were never written
    out = tmp_path / "out-upper"
    archive.extract_archive(tmp_path / "c.kiwi", tmp_path / "out-rootfs", out)
    assert describe(out) == describe(upper)
    for name in ("sparse", "holes-only"):
        st = os.stat(out / name)
        assert st.st_size == big and st.st_blocks * 512 <= 1 << 20
    with open(out / "sparse", "rb") as f:
        assert [os.pread(f.fileno(), 2, o) for o in (0, (32 << 20) - 1)] == [b"S\0", b"\0S"]
        assert os.pread(f.fileno(), 2, big - 2) == b"\0S"
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(
        ["tar", "-I", "zstd", "-xf", str(tmp_path / "c.kiwi"), "-C", str(gnu), "upper/sparse"], check=True
    )
    assert os.stat(gnu / "upper" / "sparse").st_size == big
    assert (gnu / "upper" / "sparse").read_bytes() == (upper / "sparse").read_bytes()


def test_more_regions_than_a_restore_reads_are_refused_at_snap(tmp_path, trees, monkeypatch):
    """extract.py reads at most MAX_SPARSE_REGIONS regions of a member (the map is held in
    memory), so a snapshot never holds more: one line naming the file, not an archive that
    cannot be restored."""
    rootfs, upper = trees
    monkeypatch.setattr(archive, "MAX_SPARSE_REGIONS", 2)
    with open(upper / "scattered", "wb") as f:
        for n in range(3):
            os.pwrite(f.fileno(), b"S", n << 20)
    with pytest.raises(KiwiError, match="scattered: it has more than 2 separate runs of data"):
        archive.write_archive(tmp_path / "c.kiwi", "container", {}, {}, rootfs, upper)
    assert not (tmp_path / "c.kiwi").exists()  # nothing half-written


def test_sparse_member_storing_more_than_a_ustar_size_keeps_its_holes(tmp_path, trees, monkeypatch):
    """From 8 GiB of data on (here lowered to 4 KiB), a sparse file was written whole: 8 GiB
    and a 16 TiB hole made 16 TiB of zeros. Its stored size is now base-256 in the header,
    and the members after it are still found (kiwi, tarfile and GNU tar)."""
    rootfs, upper = trees
    monkeypatch.setattr(archive, "SPARSE_STORED_LIMIT", 4096)
    big = 1 << 30
    with open(upper / "a-sparse", "wb") as f:
        for offset in (0, 1 << 20, big - 9000):
            os.pwrite(f.fileno(), os.urandom(9000), offset)
    (upper / "z-after").write_bytes(b"after")
    manifest = archive.write_archive(tmp_path / "c.kiwi", "container", {}, {}, rootfs, upper)
    assert manifest["parts"]["upper"]["size"] < 1 << 20
    out = tmp_path / "out-upper"
    archive.extract_archive(tmp_path / "c.kiwi", tmp_path / "out-rootfs", out)
    assert describe(out) == describe(upper)
    assert os.stat(out / "a-sparse").st_blocks * 512 < 1 << 20
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(
        ["tar", "-I", "zstd", "-xf", str(tmp_path / "c.kiwi"), "-C", str(gnu), "upper"], check=True
    )
    assert (gnu / "upper" / "a-sparse").read_bytes() == (upper / "a-sparse").read_bytes()
    assert (gnu / "upper" / "z-after").read_bytes() == b"after"


def test_oci_layers_write_holes_as_zeros(tmp_path):
    """The image spec says sparse members SHOULD NOT be used: export's layers stay plain."""
    from kiwi.oci.export import _layer_writer

    (tmp_path / "tree").mkdir()
    with open(tmp_path / "tree" / "sparse", "wb") as f:
        os.pwrite(f.fileno(), b"S", (1 << 20) - 1)

    class Sink(io.BytesIO):
        files = data_bytes = 0

    sink = Sink()
    _layer_writer()(sink, "", archive._Counter(None, 0), False).write_root(tmp_path / "tree")
    sink.write(archive.END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        member = tar.getmember("sparse")
        assert member.sparse is None and member.size == 1 << 20
        assert tar.extractfile(member).read() == bytes((1 << 20) - 1) + b"S"


def test_plain_tar_sees_kiwi_json_first_and_oci_whiteouts(tmp_path, trees):
    rootfs, upper = trees
    archive.write_archive(tmp_path / "c.kiwi", "container", {}, {}, rootfs, upper)
    listing = subprocess.run(
        ["tar", "-I", "zstd", "-tf", str(tmp_path / "c.kiwi")], check=True, capture_output=True, text=True
    ).stdout.split()
    assert listing[0] == "kiwi.json"
    assert listing[1].rstrip("/") == "rootfs"
    assert "upper/etc/.wh.empty" in listing
    assert "upper/opq/.wh..wh..opq" in listing
    first_upper = next(i for i, n in enumerate(listing) if n.startswith("upper"))
    assert all(n.startswith("rootfs") for n in listing[1:first_upper])


def test_upper_only_extraction_seeks_past_the_rootfs(tmp_path, trees):
    rootfs, upper = trees
    archive.write_archive(tmp_path / "c.kiwi", "container", {}, {}, rootfs, upper)
    seen = []
    archive.extract_archive(tmp_path / "c.kiwi", None, tmp_path / "u", progress=lambda d, t: seen.append(d))
    assert describe(tmp_path / "u") == describe(upper)
    assert not (tmp_path / "rootfs-out").exists()
    assert max(seen) < 100_000  # the half-megabyte rootfs was never decompressed


def test_image_archive_and_content_hash(tmp_path, trees):
    rootfs, _ = trees
    manifest = archive.write_archive(tmp_path / "i.kiwi", "image", None, {"name": "x"}, rootfs)
    assert manifest["kind"] == "image" and list(manifest["parts"]) == ["rootfs"]
    archive.extract_archive(tmp_path / "i.kiwi", tmp_path / "r")
    digest = archive.image_content_hash(manifest)
    assert digest == archive.image_content_hash(rootfs)
    assert digest == archive.image_content_hash(tmp_path / "r")  # extraction is exact
    (tmp_path / "r" / "etc" / "passwd").write_text("changed")
    assert archive.image_content_hash(tmp_path / "r") != digest


def test_write_is_atomic_and_private(tmp_path, trees):
    rootfs, upper = trees
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError):
        archive.write_archive(out / "c.kiwi", "container", {}, {}, rootfs, tmp_path / "missing")
    assert os.listdir(out) == []
    archive.write_archive(out / "c.kiwi", "container", {}, {}, rootfs, upper)
    assert os.listdir(out) == ["c.kiwi"]
    assert stat.S_IMODE(os.stat(out / "c.kiwi").st_mode) == 0o600


# --------------------------------------------------------- hostile archives


def member(name, data=b"", kind=tarfile.REGTYPE, linkname="", mode=0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, len(data)
    return info.tobuf(PAX, **ENC) + data + b"\0" * (-len(data) % 512)


def craft(path, rootfs_members, upper_members=None, manifest_changes=None, sums=None):
    """A .kiwi written by hand: one zstd frame, sums right unless `sums` overrides them."""
    parts = {"rootfs": b"".join(rootfs_members)}
    if upper_members is not None:
        parts["upper"] = b"".join(upper_members)
    manifest = {
        "format_version": 1,
        "kind": "container" if upper_members is not None else "image",
        "settings": {},
        "image": {},
        "parts": {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b), "offset": 0}
            for n, b in parts.items()
        },
    }
    for name, digest in (sums or {}).items():
        manifest["parts"][name]["sha256"] = digest
    manifest.update(manifest_changes or {})
    text = json.dumps(manifest).encode()
    stream = member("kiwi.json", text) + b"".join(parts.values()) + b"\0" * 1024
    Path(path).write_bytes(zstandard.ZstdCompressor().compress(stream))
    return path


ROOT_DIR = member("rootfs", kind=tarfile.DIRTYPE, mode=0o755)


def refused(path, tmp_path, match, upper=False):
    dests = {"rootfs_dest": tmp_path / "dest-rootfs"}
    if upper:
        dests["upper_dest"] = tmp_path / "dest-upper"
    with pytest.raises(KiwiError, match=match):
        archive.extract_archive(path, **dests)
    for dest in dests.values():
        assert not dest.exists(), "a refused archive must leave nothing behind"


def test_crafted_archive_is_accepted_when_sound(tmp_path):
    path = craft(tmp_path / "ok.kiwi", [ROOT_DIR, member("rootfs/hello", b"hi")])
    archive.extract_archive(path, tmp_path / "r")
    assert (tmp_path / "r" / "hello").read_bytes() == b"hi"


def test_bad_sum_is_refused(tmp_path):
    path = craft(tmp_path / "bad.kiwi", [ROOT_DIR, member("rootfs/hello", b"hi")], sums={"rootfs": "0" * 64})
    refused(path, tmp_path, "does not match its sha256")


def test_altered_upper_is_refused(tmp_path):
    upper = [member("upper", kind=tarfile.DIRTYPE), member("upper/x", b"1")]
    good = craft(tmp_path / "good.kiwi", [ROOT_DIR], upper)
    digest = archive.read_manifest(good)["parts"]["upper"]["sha256"]
    tampered = [member("upper", kind=tarfile.DIRTYPE), member("upper/x", b"2")]
    path = craft(tmp_path / "t.kiwi", [ROOT_DIR], tampered, sums={"upper": digest})
    refused(path, tmp_path, "upper part .* does not match", upper=True)


def test_unknown_format_version_is_refused(tmp_path):
    path = craft(tmp_path / "v2.kiwi", [ROOT_DIR], manifest_changes={"format_version": 2})
    with pytest.raises(KiwiError, match="format version 2"):
        archive.read_manifest(path)
    refused(path, tmp_path, "format version 2")


def test_dotdot_member_is_refused(tmp_path):
    path = craft(tmp_path / "dd.kiwi", [ROOT_DIR, member("rootfs/../../escaped", b"x")])
    refused(path, tmp_path, r"\.\.")
    assert not (tmp_path / "escaped").exists()


def test_member_outside_its_part_is_refused(tmp_path):
    path = craft(tmp_path / "o.kiwi", [ROOT_DIR, member("upper/sneaky", b"x")])
    refused(path, tmp_path, "outside its rootfs part")


def test_hard_link_out_of_the_part_is_refused(tmp_path):
    path = craft(
        tmp_path / "h.kiwi", [ROOT_DIR, member("rootfs/shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow")]
    )
    refused(path, tmp_path, "outside its rootfs part")


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    path = craft(
        tmp_path / "s.kiwi",
        [
            ROOT_DIR,
            member("rootfs/etc", kind=tarfile.SYMTYPE, linkname=str(outside)),
            member("rootfs/etc/evil", b"owned"),
        ],
    )
    refused(path, tmp_path, "symlink")
    assert os.listdir(outside) == []


def test_whiteouts_are_only_allowed_in_upper(tmp_path):
    # In the rootfs part a `.wh.` name is an ordinary file, never an overlay whiteout.
    path = craft(tmp_path / "w.kiwi", [ROOT_DIR, member("rootfs/.wh.passwd")])
    archive.extract_archive(path, tmp_path / "r")
    assert stat.S_ISREG(os.lstat(tmp_path / "r" / ".wh.passwd").st_mode)
    bad = craft(
        tmp_path / "w2.kiwi", [ROOT_DIR], [member("upper", kind=tarfile.DIRTYPE), member("upper/.wh..")]
    )
    refused(bad, tmp_path, "invalid whiteout", upper=True)


def test_huge_kiwi_json_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.kiwi"
    size = 100 << 20
    info = tarfile.TarInfo("kiwi.json")
    info.size = size
    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        w.write(info.tobuf(tarfile.USTAR_FORMAT, **ENC) + b"{")
        block = b" " * (1 << 20)
        for _ in range(100):
            w.write(block)
    tracemalloc.start()
    try:
        with pytest.raises(KiwiError, match="over the .*limit"):
            archive.read_manifest(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    refused(path, tmp_path, "over the .*limit")


def test_truncated_zstd_stream_is_refused(tmp_path, trees):
    rootfs, upper = trees
    whole = tmp_path / "c.kiwi"
    archive.write_archive(whole, "container", {}, {}, rootfs, upper)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 20):
        path = tmp_path / f"cut-{cut}.kiwi"
        path.write_bytes(data[:cut])
        refused(path, tmp_path, "truncated|damaged", upper=True)


def test_garbage_inside_the_stream_is_refused(tmp_path, trees):
    rootfs, upper = trees
    whole = tmp_path / "c.kiwi"
    manifest = archive.write_archive(whole, "container", {}, {}, rootfs, upper)
    data = bytearray(whole.read_bytes())
    spot = manifest["parts"]["rootfs"]["offset"] + 2000
    data[spot : spot + 64] = os.urandom(64)
    bad = tmp_path / "flipped.kiwi"
    bad.write_bytes(bytes(data))
    refused(bad, tmp_path, "damaged|does not match|truncated", upper=True)


def test_not_a_kiwi_archive(tmp_path):
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    path = tmp_path / "plain.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(plain.getvalue()))
    with pytest.raises(KiwiError, match="not a Kiwi archive"):
        archive.read_manifest(path)
    (tmp_path / "junk.kiwi").write_bytes(b"hello")
    with pytest.raises(KiwiError):
        archive.read_manifest(tmp_path / "junk.kiwi")
