"""layout.py: the one copy of the data folder's layout that the Store, runstate and the
quick list and attach read; checked here against what the Store answers."""

from __future__ import annotations

import os
import sys

import pytest
from fresh_import import modules_loaded_by

from kiwi import layout, peek
from kiwi.errors import KiwiError
from kiwi.store import Store

IDS = ["0123456789ab", "0123456789ff", "abcdef012345"]
NAMES = {"0123456789ab": "web", "0123456789ff": "abc", "abcdef012345": None}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("0123456789ab", ["0123456789ab"]),  # an id
        ("web", ["0123456789ab"]),  # a name
        ("abc", ["0123456789ff"]),  # a name that is also an id prefix: the name wins
        ("ab", ["abcdef012345"]),  # a unique prefix
        ("0123456789", ["0123456789ab", "0123456789ff"]),  # an ambiguous one
        ("0123456789abc", []),  # longer than an id
        ("nope", []),
        ("", []),
    ],
)
def test_find_container_is_the_stores_lookup(tmp_path, ref, expected):
    assert layout.find_container(ref, IDS, NAMES.get) == expected
    store = Store(tmp_path)
    for cid, name in NAMES.items():
        (tmp_path / "containers" / cid).mkdir(parents=True)
        (tmp_path / "containers" / cid / "config.json").write_text(
            f'{{"id": "{cid}", "name": "{name or ""}"}}'
        )
    if len(expected) == 1:
        assert store.resolve_container(ref) == expected[0]
    else:
        with pytest.raises(KiwiError):
            store.resolve_container(ref)


def test_live_init():
    pid = os.getpid()
    record = {"init_pid": pid, "init_start_time": peek.process_start_time(pid), "root": "/data"}
    assert layout.live_init(record, "/data") == pid
    assert layout.live_init({**record, "init_start_time": 1}, "/data") is None  # a recycled pid
    assert layout.live_init(record, "/elsewhere") is None  # a record copied with the folder
    assert layout.live_init({k: v for k, v in record.items() if k != "root"}, "/elsewhere") == pid
    for odd in (1, 0, -5, True, "12", None, 2**22 + 1):
        assert layout.live_init({**record, "init_pid": odd}, "/data") is None
    # A record of this boot, of an earlier one (its pid and start time anyone's now), of an older Kiwi.
    assert layout.live_init({**record, "boot": layout.boot_id()}, "/data") == pid
    assert layout.live_init({**record, "boot": "00000000-0000-4000-8000-000000000000"}, "/data") is None
    assert layout.boot_id() == open("/proc/sys/kernel/random/boot_id").read().strip()


def test_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("KIWI_ROOT", str(tmp_path))
    assert layout.data_folder() == str(tmp_path)
    monkeypatch.setenv("KIWI_ROOT", "relative")
    with pytest.raises(ValueError):
        layout.data_folder()
    with pytest.raises(KiwiError, match="KIWI_ROOT must be an absolute path"):
        Store.open()
    monkeypatch.delenv("KIWI_ROOT")
    checkout = os.path.dirname(os.path.dirname(os.path.realpath(layout.__file__)))
    assert layout.data_folder() == os.path.join(checkout, "kiwi-data")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("KIWI_EXECUTABLE", str(tmp_path / "bin" / "kiwi"))
    assert layout.data_folder() == str(tmp_path / "bin" / "kiwi-data")


def test_the_store_uses_its_names(tmp_path):
    store = Store(tmp_path)
    assert [p.name for p in store.private_dirs()] == list(layout.PRIVATE_DIRS)
    assert (store.images_dir.name, store.containers_dir.name, store.mounts_dir.name) == (
        layout.IMAGES,
        layout.CONTAINERS,
        layout.MOUNTS,
    )


def test_it_imports_nothing_heavy():
    """The quick list and attach read it: no pathlib, json, re (issue 20)."""
    loaded = modules_loaded_by("kiwi.layout")
    assert "kiwi.layout" in loaded
    assert not {"pathlib", "json", "re", "kiwi.store", "kiwi._sys"} & loaded
