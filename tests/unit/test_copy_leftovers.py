"""copyfiles.StagingRecords and remove_leftovers (kiwi cleanup): a killed copy's staging
entry on the host is removed as recorded, and nothing else is: not an entry merely named
like one, not one a live copy is building, not one in another folder now at that path."""

from __future__ import annotations

import json
import os

from kiwi import copyfiles

DEAD = 999999999  # no such pid


def setup(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    return tmp, dest


def record(tmp, dest, name: str, pid: int = DEAD) -> None:
    """What a copy of pid staging `name` in dest wrote, as StagingRecords.begin writes it."""
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        path = copyfiles.StagingRecords(str(tmp)).begin(fd, name)
    finally:
        os.close(fd)
    os.rename(path, tmp / f"cpstage-{pid}-{name}.json")


def alive(pid: int) -> bool:
    return pid != DEAD


def test_a_dead_copys_entry_is_removed_a_live_ones_kept(tmp_path):
    tmp, dest = setup(tmp_path)
    (dest / ".kiwi-cp-0000aaaa" / "sub").mkdir(parents=True)
    (dest / ".kiwi-cp-0000aaaa" / "sub" / "f").write_text("x")
    os.symlink(tmp_path, dest / ".kiwi-cp-0000aaaa" / "link")  # removed, never followed
    (dest / ".kiwi-cp-0000bbbb").write_text("live")
    (dest / ".kiwi-cp-0000cccc").write_text("nobody recorded it")
    record(tmp, dest, ".kiwi-cp-0000aaaa")
    record(tmp, dest, ".kiwi-cp-0000bbbb", pid=os.getpid())
    assert copyfiles.remove_leftovers(str(tmp), alive) == [f"half-copied {dest}/.kiwi-cp-0000aaaa"]
    assert sorted(os.listdir(dest)) == [".kiwi-cp-0000bbbb", ".kiwi-cp-0000cccc"]
    assert os.listdir(tmp) == [f"cpstage-{os.getpid()}-.kiwi-cp-0000bbbb.json"]


def test_another_folder_at_the_path_or_an_odd_record_removes_nothing(tmp_path):
    tmp, dest = setup(tmp_path)
    record(tmp, dest, ".kiwi-cp-0000aaaa")
    os.rename(dest, tmp_path / "moved")
    dest.mkdir()  # another folder, the same path
    (dest / ".kiwi-cp-0000aaaa").write_text("not the copy's")
    # A record naming something else than a staging entry, and one cut short.
    (tmp / f"cpstage-{DEAD}-x.json").write_text(
        json.dumps(
            {"folder": str(dest), "dev": os.stat(dest).st_dev, "ino": os.stat(dest).st_ino, "name": "x"}
        )
    )
    (dest / "x").write_text("keep")
    (tmp / f"cpstage-{DEAD}-.kiwi-cp-0000dddd.json").write_text('{"fol')
    assert copyfiles.remove_leftovers(str(tmp), alive) == []
    assert sorted(os.listdir(dest)) == [".kiwi-cp-0000aaaa", "x"]
    assert os.listdir(tmp) == []
