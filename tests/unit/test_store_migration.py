"""Store.open's old-layout migrations (./.kiwi -> kiwi-data/, run/ -> mounts/): only a
folder that is provably an older Kiwi's moves; anyone else's .kiwi, and a shared folder's
own run/, stay where they are (plain files only)."""

import os

import pytest

from kiwi.store import is_old_kiwi_folder, is_old_kiwi_runtime, migrate_old_folder, migrate_old_runtime

CID = "0123456789ab"


@pytest.fixture
def root(tmp_path):
    """An older Kiwi's data folder: one container, its runtime folder in run/."""
    root = tmp_path / "kiwi-data"
    (root / "containers" / CID).mkdir(parents=True)
    (root / "containers" / CID / "config.json").write_text(f'{{"id": "{CID}"}}')
    (root / "run" / CID / "root").mkdir(parents=True)
    (root / "run" / CID / "runtime.json").write_text("{}")
    return root


def test_an_old_kiwi_folder_moves(root):
    assert is_old_kiwi_runtime(root)
    migrate_old_runtime(root)
    assert not (root / "run").exists()
    assert (root / "mounts" / CID / "runtime.json").read_text() == "{}"


def shared_folder_cases(root):
    """Each makes run/ something Kiwi cannot prove is its own."""
    yield "someone's file in run/", lambda: (root / "run" / "notes.txt").write_text("mine")
    yield "a folder named like an id, no such container", lambda: os.mkdir(root / "run" / "fedcba987654")
    yield "the container has no config", lambda: os.unlink(root / "containers" / CID / "config.json")
    yield "no containers/ at all", lambda: os.rename(root / "containers", root / "elsewhere")
    yield "a symlink named like the container", lambda: replace_with_symlink(root / "run" / CID)
    yield "run/ is a symlink", lambda: replace_with_symlink(root / "run")
    yield "run/ is empty", lambda: replace_with_empty(root / "run")


def replace_with_symlink(path):
    os.rename(path, path.with_name(path.name + ".moved"))
    os.symlink(path.name + ".moved", path)


def replace_with_empty(path):
    os.rename(path, path.with_name(path.name + ".moved"))
    path.mkdir()


@pytest.mark.parametrize("case", [name for name, _ in shared_folder_cases(None)])
def test_a_run_folder_kiwi_cannot_prove_is_its_own_stays(tmp_path, case):
    root = tmp_path / "kiwi-data"
    (root / "containers" / CID).mkdir(parents=True)
    (root / "containers" / CID / "config.json").write_text("{}")
    (root / "run" / CID).mkdir(parents=True)
    dict(shared_folder_cases(root))[case]()
    before = sorted(os.listdir(root / "run"))
    assert not is_old_kiwi_runtime(root)
    migrate_old_runtime(root)
    assert not (root / "mounts").exists()
    assert sorted(os.listdir(root / "run")) == before


def test_mounts_present_means_no_move(root):
    (root / "mounts").mkdir()
    migrate_old_runtime(root)
    assert (root / "run" / CID / "runtime.json").exists()
    assert os.listdir(root / "mounts") == []


def test_a_folder_without_run_is_left_alone(tmp_path):
    root = tmp_path / "kiwi-data"
    root.mkdir()
    migrate_old_runtime(root)
    assert os.listdir(root) == []


def old_kiwi_folder(tmp_path):
    """./.kiwi as an older Kiwi left it (tests/integration/test_migrate_old_folder.py runs
    every case through the Python rule and the frozen launcher's)."""
    old = tmp_path / ".kiwi"
    (old / "containers" / CID).mkdir(parents=True)
    (old / "containers" / CID / "config.json").write_text("{}")
    (old / "images" / "bb").mkdir(parents=True)
    (old / "images" / "bb" / "manifest.json").write_text("{}")
    (old / "s1.kiwi").write_bytes(b"hsqs")
    return old


def test_an_older_kiwis_dot_kiwi_moves(tmp_path):
    old = old_kiwi_folder(tmp_path)
    migrate_old_folder(old, tmp_path / "kiwi-data")
    assert not old.exists()
    assert (tmp_path / "kiwi-data" / "containers" / CID / "config.json").exists()


def test_someone_elses_dot_kiwi_stays(tmp_path):
    old = old_kiwi_folder(tmp_path)
    (old / "settings.toml").write_text("mine")
    assert not is_old_kiwi_folder(old)
    migrate_old_folder(old, tmp_path / "kiwi-data")
    assert (old / "settings.toml").read_text() == "mine"
    assert not (tmp_path / "kiwi-data").exists()
