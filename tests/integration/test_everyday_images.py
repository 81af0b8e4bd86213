"""Issue 17 item 1: deleting images and the .kiwi files of the data folder."""

from __future__ import annotations

import os


def test_delete_image_refused_while_used_then_deleted(kiwi, busybox):
    cid = kiwi.create("busybox", "--name", "user1")
    refused = kiwi("delete", "image", "busybox", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("kiwi: image busybox is used by 1 container(s): ")
    assert f"{cid} (user1)" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert [i["name"] for i in kiwi.json("list", "images")] == ["busybox"]

    kiwi("delete", cid, "--yes")
    assert kiwi.out("delete", "image", "busybox") == "deleted image busybox"
    assert kiwi.json("list", "images") == []
    assert not (kiwi.root / "images" / "busybox").exists()
    gone = kiwi("delete", "image", "busybox", check=False)
    assert gone.returncode == 1 and "no image named busybox" in gone.stderr


def test_existing_image_error_names_the_real_command(kiwi, busybox, busybox_tar):
    again = kiwi("import", "--name", "busybox", busybox_tar, check=False)
    assert again.returncode == 1
    assert "kiwi delete image busybox" in again.stderr


def test_delete_with_a_bad_kind_or_name_is_one_line(kiwi):
    bad = kiwi("delete", "imagez", "x", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "kiwi delete image" in bad.stderr
    bad = kiwi("delete", "image", "../etc", check=False)
    assert bad.returncode == 1 and "invalid image name" in bad.stderr


def test_list_and_delete_exports(kiwi, busybox, tmp_path):
    cid = kiwi.create("busybox")
    kiwi("snap", cid, "first")
    exports = kiwi.root / "exports"
    (exports / "alpine.kiwi").write_bytes(b"x" * 10)
    # A symlink is never listed nor followed by delete.
    target = tmp_path / "victim.kiwi"
    target.write_text("keep")
    os.symlink(target, exports / "evil.kiwi")

    rows = kiwi.json("list", "exports")
    assert sorted(r["name"] for r in rows) == sorted(["alpine.kiwi", f"{cid}-first.kiwi"])
    table = kiwi.out("list", "exports")
    assert table.splitlines()[0].split() == ["FILE", "SIZE", "MODIFIED", "PATH"]
    assert "alpine.kiwi" in table

    assert kiwi.out("delete", "export", "alpine") == f"deleted {exports / 'alpine.kiwi'}"
    assert kiwi.out("delete", "export", f"{cid}-first.kiwi").endswith(f"{cid}-first.kiwi")
    assert kiwi.json("list", "exports") == []
    refused = kiwi("delete", "export", "evil", check=False)
    assert refused.returncode == 1 and "no .kiwi file named 'evil'" in refused.stderr
    assert target.read_text() == "keep" and os.path.islink(exports / "evil.kiwi")
    traversal = kiwi("delete", "export", "../../victim", check=False)
    assert traversal.returncode == 1 and target.exists()


def test_delete_of_an_image_name_says_how_to_delete_the_image(kiwi, busybox):
    """`kiwi delete busybox` (an image, no container of that name) is one line that gives
    the command which deletes the image, and deletes nothing."""
    done = kiwi("delete", "busybox", "--yes", check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "kiwi delete image busybox" in done.stderr, done.stderr
    assert [i["name"] for i in kiwi.json("list", "images")] == ["busybox"]
    other = kiwi("delete", "nothing-here", "--yes", check=False)
    assert other.returncode == 1 and "kiwi delete image" not in other.stderr, other.stderr
