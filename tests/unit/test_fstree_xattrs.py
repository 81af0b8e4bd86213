"""fstree.read_xattrs: the one reader of extended attributes (archive, flatten, goarchive)."""

from __future__ import annotations

import os

from kiwi import fstree


def test_an_fd_a_path_never_followed_and_a_missing_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    os.setxattr(f, "user.kiwi", b"1")
    os.setxattr(f, "user.empty", b"")
    (tmp_path / "link").symlink_to(f)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert fstree.read_xattrs(fd) == {"user.kiwi": b"1", "user.empty": b""}
    finally:
        os.close(fd)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fstree.read_xattrs(f"/proc/self/fd/{dir_fd}/f") == {"user.kiwi": b"1", "user.empty": b""}
        assert fstree.read_xattrs(f"/proc/self/fd/{dir_fd}/link") == {}  # the link's own, not its target's
        assert fstree.read_xattrs(f"/proc/self/fd/{dir_fd}/gone") == {}
    finally:
        os.close(dir_fd)
