"""`kiwi import x.tar` first reads every header of an uncompressed tar to see whether it is an
OCI layout or a docker save (oci.pull.open_image_tar), before extract.py reads it as a rootfs.
That first read has extract.py's bounds on a member's metadata too: a 20 MB tar of one PAX
sparse map of 5 M regions took 530 MB of memory there, before extract.py refused it."""

from __future__ import annotations

import tarfile
import tracemalloc

from test_extract import pax_sparse_member

from kiwi import extract
from kiwi.oci import pull


def test_a_huge_sparse_map_is_not_read_by_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "MAX_SPARSE_REGIONS", 1000)
    count = 200_000  # of "0\n0\n": 800 KB of tar, some 20 MB of tuples once read
    archive = tmp_path / "map.tar"
    archive.write_bytes(pax_sparse_member("f", b"%d\n" % count + b"0\n0\n" * count, b"", 100))
    tracemalloc.start()
    try:
        assert pull.open_image_tar(archive) is None  # a rootfs archive, for extract.py to refuse
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_chain_of_pax_headers_is_left_to_extract(tmp_path):
    """Hundreds of pax headers in a row: tarfile's recursive read ended in a RecursionError,
    told as 'the files are nested too deeply'."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 11
    raw = header._create_header(header.get_info(), tarfile.PAX_FORMAT, "utf-8", "surrogateescape")  # type: ignore[attr-defined]
    archive = tmp_path / "chain.tar"
    archive.write_bytes((raw + b"11 a.b=cde\n".ljust(512, b"\0")) * 5000 + b"\0" * 1024)
    assert pull.open_image_tar(archive) is None
