"""files.atomic_write_json: the whole new file under the final name, nothing else left
beside it, with the mode asked for, durable or not (runtime.json is written without fsync)."""

import json
import os
import stat

import pytest

from kiwi import files


@pytest.mark.parametrize("durable", [True, False])
def test_writes_whole_file_with_mode_and_leaves_no_temp(tmp_path, durable):
    target = tmp_path / "runtime.json"
    target.write_text('{"old": true}\n')
    files.atomic_write_json(target, {"init_pid": 7}, mode=0o600, durable=durable)
    assert json.loads(target.read_text()) == {"init_pid": 7}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["runtime.json"]


def test_temp_file_is_private_and_new(tmp_path):
    target = tmp_path / "config.json"
    fd, tmp = files.new_temp_file(target)
    try:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".config.json.") and tmp.name.endswith(".tmp")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        files.atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["config.json"]


def test_remove_temp_files_takes_only_that_files_leftovers(tmp_path):
    record = tmp_path / "runtime.json"
    record.write_text("{}")
    fd, left = files.new_temp_file(record)  # a writer killed before its rename
    os.close(fd)
    other = tmp_path / ".runtime.json.bak"  # not new_temp_file's
    other.write_text("")
    neighbour = tmp_path / ".mount.json.0123abcd.tmp"  # another file's
    neighbour.write_text("")
    files.remove_temp_files(record)
    assert not left.exists()
    assert record.exists() and other.exists() and neighbour.exists()
    files.remove_temp_files(tmp_path / "missing" / "x.json")  # no folder: nothing to do
