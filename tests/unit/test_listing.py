"""listing.py (the quick `kiwi list`) against the full cmd_list path on the same data
folders: the same rows where it answers, Unusual (cmd_list answers) everywhere else.

Running containers are stood in for by this test's own process: its pid and start time
in runtime.json are a live init, exactly what runstate.read_runtime checks."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import time

import pytest

from kiwi import commands, freeze, listing, peek, proc
from kiwi.store import Store

MIB = 1 << 20


def write_json(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def add_container(root, cid: str, **settings) -> dict:
    config = {"id": cid, "name": f"c{cid[:4]}", "image": "bb", "network": "separate", "ipv4": "10.9.9.2"}
    config.update(settings)
    write_json(root / "containers" / cid / "config.json", config)
    return config


def make_running(data, cid: str, **record) -> None:
    pid = os.getpid()
    base = {"init_pid": pid, "init_start_time": proc.process_start_time(pid), "cgroup_version": "v1"}
    write_json(data / "mounts" / cid / "runtime.json", {**base, **record})


def mkfs(img, size: int) -> None:
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "kiwi-data"
    for name in listing.PRIVATE_DIRS:
        (root / name).mkdir(parents=True, mode=0o700)
    return root


def full_rows(root) -> list[dict]:
    return commands.container_rows(Store(root))


def test_the_rows_match_cmd_lists(root, capsys):
    add_container(root, "aaaaaaaaaaa1", memory=256 * MIB, cpu=2, storage=None)
    add_container(root, "aaaaaaaaaaa2", network="host", idmap={"base": 1_000_065_536, "size": 65536})
    add_container(root, "aaaaaaaaaaa3", storage=64 * MIB, storage_sparse=True, name=None)
    mkfs(root / "containers" / "aaaaaaaaaaa3" / "state.img", 64 * MIB)
    add_container(root, "aaaaaaaaaaa4", storage=64 * MIB)
    mkfs(root / "containers" / "aaaaaaaaaaa4" / "state.img", 64 * MIB)
    make_running(root, "aaaaaaaaaaa4")
    add_container(root, "aaaaaaaaaaa5", storage=None)
    (root / "containers" / "aaaaaaaaaaa5" / "state" / "upper").mkdir(parents=True)
    (root / "containers" / "aaaaaaaaaaa5" / "state" / "upper" / "f").write_bytes(b"x" * 10000)
    rows, full = listing.container_rows(str(root)), full_rows(root)
    # The stand-in init's root is the host's, whose usage moves between two looks.
    live, full_live = rows[3].pop("storage_used"), full[3].pop("storage_used")
    assert rows == full
    assert (
        live > 64 * MIB and full_live > 64 * MIB
    )  # statfs of the init's root, not the 64M image's superblock
    rows[3]["storage_used"] = live
    assert rows[2]["storage_used"] == peek.superblock_usage(
        root / "containers" / "aaaaaaaaaaa3" / "state.img"
    )
    assert rows[4]["storage_used"] >= 10000
    commands.show_containers(rows)  # what cmd_list prints for them
    assert capsys.readouterr().out == listing.containers_table(rows) + "\n"


def test_an_empty_or_new_folder(root, tmp_path):
    assert listing.container_rows(str(root)) == []
    assert listing.container_rows(str(tmp_path)) == []  # no containers/ nor mounts/


@pytest.mark.parametrize(
    "case",
    [
        "runtime folder without a record",
        "dead init",
        "recycled pid",
        "record of another folder",
        "freeze lease",
        "damaged config",
        "config of another id",
        "config not an object",
        "huge config",
        "go container",
        "no superblock",
    ],
)
def test_what_it_leaves_to_cmd_list(root, case):
    add_container(root, "bbbbbbbbbbb1")
    cid = "bbbbbbbbbbb2"
    add_container(root, cid)
    config = root / "containers" / cid / "config.json"
    if case == "runtime folder without a record":
        (root / "mounts" / cid).mkdir()
    elif case == "dead init":
        make_running(root, cid, init_pid=2**22 + 1)
    elif case == "recycled pid":
        make_running(root, cid, init_start_time=1)
    elif case == "record of another folder":
        make_running(root, cid, root="/elsewhere/kiwi-data")
    elif case == "freeze lease":
        make_running(root, cid)
        write_json(root / "mounts" / cid / freeze.LEASE, {"pid": 1, "start_time": 1})
    elif case == "damaged config":
        config.write_text("{not json")
    elif case == "config of another id":
        add_container(root, cid, id="bbbbbbbbbbb1")
    elif case == "config not an object":
        config.write_text("[1, 2]")
    elif case == "huge config":
        add_container(root, cid, note="x" * listing.RECORD_LIMIT)
    elif case == "go container":
        (root / "containers" / ("c" * 24)).mkdir()
    elif case == "no superblock":
        (root / "containers" / cid / "state.img").write_bytes(b"\0" * 4096)
    with pytest.raises(listing.Unusual):
        listing.container_rows(str(root))
    if case.startswith(("damaged", "config")):  # cmd_list skips the container
        assert [r["id"] for r in full_rows(root)] == ["bbbbbbbbbbb1"]


def test_the_folder_checks(root, monkeypatch):
    monkeypatch.setenv("KIWI_ROOT", str(root))
    assert listing.data_root() == str(root)
    listing.check_layout(str(root))
    listing.refuse_go_data(str(root))
    os.chmod(root / "exports", 0o755)  # an older Kiwi's: Store.open closes it
    with pytest.raises(listing.Unusual):
        listing.check_layout(str(root))
    os.chmod(root / "exports", 0o700)
    (root / "mounts").rmdir()
    (root / "run").mkdir()  # an older Kiwi's runtime folder: Store.open renames it
    with pytest.raises(listing.Unusual):
        listing.check_layout(str(root))
    (root / "images" / "old").mkdir()
    (root / "images" / "old" / "manifest.json").write_text("{}")
    with pytest.raises(listing.Unusual):
        listing.refuse_go_data(str(root))
    for value in (
        "relative/kiwi-data",
        str(root / "missing"),
        str(root / "images" / "old" / "manifest.json"),
    ):
        monkeypatch.setenv("KIWI_ROOT", value)
        with pytest.raises(listing.Unusual):
            listing.data_root()


def test_a_mount_shows_only_while_mounted(root):
    cid = "ccccccccccc1"
    add_container(root, cid)
    make_running(root, cid)
    write_json(root / "mounts" / cid / "mount.json", {"target": "/"})  # "/" is always a mount point
    assert listing.container_rows(str(root))[0]["mount"] == "/" == full_rows(root)[0]["mount"]
    write_json(root / "mounts" / cid / "mount.json", {"target": str(root)})  # not a mount point
    assert listing.container_rows(str(root))[0]["mount"] is None
    assert listing.container_rows(str(root)) == full_rows(root)


def test_the_sparse_warning(root):
    add_container(root, "ddddddddddd1", storage=15 << 40, storage_sparse=True)
    with open(root / "containers" / "ddddddddddd1" / "state.img", "wb") as f:
        f.truncate(15 << 40)  # a sparse file of 15 TiB: more than the test disk holds
    warning = listing.sparse_shortfall(str(root), ["ddddddddddd1"])
    assert warning.startswith("warning: sparse containers may still write 15T but the host's disk has only")
    assert listing.sparse_shortfall(str(root), []) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [true, false, null], "c": {"d": "\\u00e9\\n"}, "e": -1.5e3, "f": 12345678901234567890}',
        "  {}\n",
        '"x"',
        "[NaN, Infinity, -Infinity]",
        '{"a": 1, "a": 2}',
        "\t[ 1 , 2 ]\r\n",
    ],
)
def test_json_value_reads_what_json_reads(text):
    assert repr(peek.json_value(text.encode())) == repr(json.loads(text))


@pytest.mark.parametrize(
    "data",
    [b"", b"  ", b"{not json", b"{} x", b'{"a": 1,}', b"[1, 2", b"\xff{}", b'{"a": "\x01"}', b"[" * 100000],
)
def test_json_value_refuses_what_json_refuses(data):
    with pytest.raises((ValueError, RecursionError)):
        json.loads(data)
    with pytest.raises((ValueError, RecursionError)):
        peek.json_value(data)


def test_json_value_in_a_fresh_interpreter():
    """As in `kiwi list`, where json was never imported: damage is still a ValueError."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(peek.__file__)))
    code = (
        "import sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "from kiwi import peek\n"
        "assert peek.json_value(b'{\"a\": [1]}') == {'a': [1]}\n"
        "assert 'json' not in sys.modules and 're' not in sys.modules\n"
        "for bad in (b'{not json', b'[1, 2', b'{\"a\": 1,}'):\n"
        "    try:\n"
        "        peek.json_value(bad)\n"
        "    except ValueError:\n"
        "        continue\n"
        "    raise AssertionError(bad)\n"
    )
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True)


# --- the row cache -------------------------------------------------------------------


def replace_json(path, value) -> None:
    """As files.atomic_write_json does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def cached_rows(root, monkeypatch) -> list[dict]:
    """The rows with no config and no state image read: from the cache alone."""
    read_record = listing.read_record

    def no_config(path):
        assert not path.endswith("/config.json"), f"{path} was read"
        return read_record(path)  # a running container's record: never cached

    with monkeypatch.context() as m:
        m.setattr(listing, "read_record", no_config)
        m.setattr(listing, "superblock_usage", lambda img: pytest.fail(f"{img} was read"))
        return listing.container_rows(str(root), listing.RowCache(str(root)))


def listed(root) -> list[dict]:
    cache = listing.RowCache(str(root))
    rows = listing.container_rows(str(root), cache)
    cache.save()
    return rows


def listed_table(root) -> str:
    """The quick list's table (listing.containers_listing without the environment)."""
    cache = listing.RowCache(str(root))
    cells, _ = listing.table_cells(str(root), cache)
    cache.save()
    return listing.table_text(listing.HEADERS, cells)


def cached_table(root, monkeypatch) -> str:
    """The table with no config, state image nor record read and no row built of a stopped
    container with a state image (a folder's usage is read each time)."""
    images = {p.parent.name for p in (root / "containers").glob("*/state.img")}
    stopped = images - {p.name for p in (root / "mounts").iterdir()}

    def no_row(cid, config, state, used):
        assert cid not in stopped, f"{cid}'s row was built"
        return container_row(cid, config, state, used)

    container_row = listing.container_row
    with monkeypatch.context() as m:
        m.setattr(listing, "read_record", lambda path: pytest.fail(f"{path} was read"))
        m.setattr(listing, "superblock_usage", lambda img: pytest.fail(f"{img} was read"))
        m.setattr(listing, "container_row", no_row)
        cells, _ = listing.table_cells(str(root), listing.RowCache(str(root)))
    return listing.table_text(listing.HEADERS, cells)


@pytest.fixture
def cached(root, monkeypatch):
    """Two stopped containers (an ext4 image, a folder) and a running one, listed once: cached."""
    monkeypatch.setattr(listing, "SETTLED_NS", 0)  # files just written count as settled
    add_container(root, "eeeeeeeeeee1", storage=64 * MIB, memory=MIB, cpu=1.5)
    mkfs(root / "containers" / "eeeeeeeeeee1" / "state.img", 64 * MIB)
    add_container(root, "eeeeeeeeeee2", storage=None, idmap={"base": 1_000_065_536, "size": 65536})
    add_container(root, "eeeeeeeeeee3", network="host")
    make_running(root, "eeeeeeeeeee3")
    first = listed(root)
    assert first == full_rows(root)
    assert cached_rows(root, monkeypatch) == first
    listed_table(root)  # the stopped image's cells replace its config's fields
    assert cached_table(root, monkeypatch) == listing.containers_table(first)
    return first


def test_the_cache_answers_while_the_files_stay(root, cached, monkeypatch):
    cache = root / listing.CACHE
    assert os.stat(cache).st_mode & 0o777 == 0o600
    data = cache.read_bytes()
    listed_table(root)
    assert cache.read_bytes() == data  # nothing changed: not rewritten
    (root / "mounts" / "eeeeeeeeeee3" / "runtime.json").unlink()
    (root / "mounts" / "eeeeeeeeeee3").rmdir()  # stopped: its status is never cached
    table = cached_table(root, monkeypatch)
    assert table.count(" stopped ") == 3 and table == listing.containers_table(full_rows(root))
    assert listed(root) == full_rows(root)


def test_a_changed_config_or_image_is_read_again(root, cached, monkeypatch):
    config = root / "containers" / "eeeeeeeeeee1" / "config.json"
    replace_json(config, {**json.loads(config.read_text()), "name": "renamed", "memory": 2 * MIB})
    rows = listed(root)
    assert rows[0]["name"] == "renamed" and rows[0]["memory"] == 2 * MIB and rows == full_rows(root)
    img = root / "containers" / "eeeeeeeeeee1" / "state.img"
    (root / "content").mkdir()
    (root / "content" / "f").write_bytes(b"x" * MIB)  # written as a stopped container's image is
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(root / "content"), str(img)], check=True)
    rows = listed(root)
    assert rows[0]["storage_used"] == peek.superblock_usage(img) != cached[0]["storage_used"]
    assert rows == full_rows(root) == cached_rows(root, monkeypatch)
    assert listed_table(root) == listing.containers_table(rows) == cached_table(root, monkeypatch)
    (root / "containers" / "eeeeeeeeeee2" / "config.json").write_text("{not json")  # in place
    with pytest.raises(listing.Unusual):
        listed(root)
    (root / "containers" / "eeeeeeeeeee2" / "config.json").unlink()
    assert [r["id"] for r in listed(root)] == ["eeeeeeeeeee1", "eeeeeeeeeee3"]


@pytest.mark.parametrize(
    "forgery",
    ["another owner", "open to others", "damaged", "another format", "wrong types", "a symlink", "a fifo"],
)
def test_a_cache_list_did_not_write_is_ignored(root, cached, monkeypatch, forgery):
    """A cache whose keys match but whose rows lie: ignored unless it is list's own file."""
    cache = root / listing.CACHE
    form, entries, records, cells = marshal.loads(cache.read_bytes())
    lies = {}
    for cid, (config_key, fields, image_key, used) in entries.items():
        lies[cid] = (config_key, {**fields, "name": "forged"}, image_key, None if used is None else 1)
    record_lies = {cid: (key, {**record, "cgroup_version": "v9"}) for cid, (key, record) in records.items()}
    cell_lies = {
        cid: (keys[0], keys[1], (cid, "forged", *row[2:]), sparse)
        for cid, (*keys, row, sparse) in cells.items()
    }
    assert len(cell_lies) == 1 and len(record_lies) == 1  # the stopped image's cells, the running record
    cache.write_bytes(marshal.dumps((form, lies, record_lies, cell_lies)))
    forged = cached_table(root, monkeypatch)  # the forgery, as root's
    assert forged.count(" forged ") == 3 and "running (v9)" in forged
    if forgery == "another owner":
        os.chown(cache, 1000, 1000)
    elif forgery == "open to others":
        os.chmod(cache, 0o620)
    elif forgery == "damaged":
        cache.write_bytes(cache.read_bytes()[:-1])
    elif forgery == "another format":
        cache.write_bytes(marshal.dumps((form[:2] + (form[2] - 1,), lies, record_lies, cell_lies)))
    elif forgery == "wrong types":
        bad = {cid: (key, [fields], image_key, "1") for cid, (key, fields, image_key, _) in lies.items()}
        bad_records = {cid: (key, [record]) for cid, (key, record) in record_lies.items()}
        bad_cells = {cid: (*keys, [*row], 1) for cid, (*keys, row, _) in cell_lies.items()}
        bad_cells |= {
            cid: (*keys, (*row[:-1], None), sparse) for cid, (*keys, row, sparse) in cell_lies.items()
        }
        cache.write_bytes(marshal.dumps((form, bad, bad_records, bad_cells)))
    elif forgery == "a symlink":
        os.rename(cache, root / "elsewhere")
        cache.symlink_to(root / "elsewhere")
    elif forgery == "a fifo":  # opened without waiting for a writer
        cache.unlink()
        os.mkfifo(cache, 0o600)
    rows = listed(root)
    assert rows == cached == full_rows(root)
    table = listed_table(root)
    assert table == listing.containers_table(cached) and "forged" not in table
    assert os.stat(cache, follow_symlinks=False).st_uid == 0 and not cache.is_symlink()
    assert cached_table(root, monkeypatch) == table  # replaced by list's own


def test_files_changed_just_now_are_not_cached(root):
    """Their times may not move on a second change within the file system's granularity."""
    add_container(root, "fffffffffff1", storage=64 * MIB)
    mkfs(root / "containers" / "fffffffffff1" / "state.img", 64 * MIB)
    rows = listed(root)
    assert rows == full_rows(root)
    assert not (root / listing.CACHE).exists()
    add_container(root, "fffffffffff2")
    make_running(root, "fffffffffff2")  # a record just written: kept, its init checked each time
    assert listed_table(root) == listing.containers_table(full_rows(root))
    _, entries, records, cells = marshal.loads((root / listing.CACHE).read_bytes())
    assert list(records) == ["fffffffffff2"] and not entries and not cells
    (root / "mounts" / "fffffffffff2" / "runtime.json").unlink()
    (root / "mounts" / "fffffffffff2").rmdir()
    (root / "containers" / "fffffffffff2" / "config.json").unlink()
    (root / "containers" / "fffffffffff2").rmdir()
    (root / listing.CACHE).unlink()
    config = root / "containers" / "fffffffffff1" / "config.json"
    cache = listing.RowCache(str(root))
    cache.now += 3 * listing.SETTLED_NS  # three settling times later
    listing.container_rows(str(root), cache)
    cache.save()
    config_key, _, _, used = marshal.loads((root / listing.CACHE).read_bytes())[1]["fffffffffff1"]
    assert config_key[1] == os.stat(config).st_ino and used == rows[0]["storage_used"]


def test_a_running_containers_record_is_cached_but_its_init_checked_each_time(root, monkeypatch):
    """runtime.json's fields list shows come from the cache while it is the same file; the
    init's start time is read every time (a dead init, a pid reused), and a new start's
    record (same size and mtime, another inode and ctime) is read again."""
    monkeypatch.setattr(listing, "SETTLED_NS", 0)
    cid = "abababababa1"
    add_container(root, cid)
    runtime = root / "mounts" / cid / "runtime.json"
    first = subprocess.Popen(["sleep", "60"])
    second = subprocess.Popen(["sleep", "60"])
    try:
        assert len(str(first.pid)) == len(str(second.pid))  # the same record size
        record = {"init_pid": first.pid, "init_start_time": proc.process_start_time(first.pid)}
        write_json(runtime, {**record, "cgroup_version": "v1", "enter": {"kiwi": "x" * 1000}})
        table = listed_table(root)
        assert "running (v1)" in table and table == listing.containers_table(full_rows(root))
        assert marshal.loads((root / listing.CACHE).read_bytes())[2][cid][1] == {
            **record,
            "cgroup_version": "v1",
        }
        with monkeypatch.context() as m:
            m.setattr(listing, "read_record", lambda path: pytest.fail(f"{path} was read"))
            cells, _ = listing.table_cells(str(root), listing.RowCache(str(root)))
            assert listing.table_text(listing.HEADERS, cells) == table
        st = runtime.stat()
        again = {"init_pid": second.pid, "init_start_time": proc.process_start_time(second.pid)}
        write_json(
            runtime.with_name("new.json"), {**again, "cgroup_version": "v2", "enter": {"kiwi": "x" * 1000}}
        )
        os.utime(runtime.with_name("new.json"), ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(runtime.with_name("new.json"), runtime)  # a new start's, as runstate writes it
        assert (runtime.stat().st_size, runtime.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert "running (v2)" in listed_table(root)  # read again
        replace_json(runtime, {**json.loads(runtime.read_text()), **record, "cgroup_version": "v1"})
        assert "running (v1)" in listed_table(root)
        first.kill()
        first.wait()  # its pid is free: the cached record's init is gone
        with pytest.raises(listing.Unusual):
            listed_table(root)
        assert marshal.loads((root / listing.CACHE).read_bytes())[2][cid][1]["init_pid"] == first.pid
    finally:
        for child in (first, second):
            child.kill()
            child.wait()


def test_a_stopped_containers_cells_follow_its_files(root, monkeypatch):
    """A stopped container's cells are kept only beside its config's and image's keys, and
    only with both: a folder storage, a start, a changed config or image make the row again."""
    monkeypatch.setattr(listing, "SETTLED_NS", 0)
    add_container(root, "cdcdcdcdcdc1", storage=64 * MIB, storage_sparse=True)
    img = root / "containers" / "cdcdcdcdcdc1" / "state.img"
    mkfs(img, 64 * MIB)
    # An hour old: its rewrite below gets another mtime even within one tick of the kernel's
    # coarse file clock (SETTLED_NS, patched to 0 here, is what covers that in real use).
    hour_ago = time.time() - 3600
    os.utime(img, (hour_ago, hour_ago))
    add_container(root, "cdcdcdcdcdc2", storage=None)
    (root / "containers" / "cdcdcdcdcdc2" / "state" / "upper").mkdir(parents=True)
    table = listed_table(root)
    assert table == listing.containers_table(full_rows(root))
    cells = marshal.loads((root / listing.CACHE).read_bytes())[3]
    assert list(cells) == ["cdcdcdcdcdc1"] and cells["cdcdcdcdcdc1"][3] is True  # sparse
    assert cached_table(root, monkeypatch) == table
    (root / "containers" / "cdcdcdcdcdc2" / "state" / "upper" / "f").write_bytes(b"x" * 100_000)
    assert listed_table(root) == listing.containers_table(full_rows(root)) != table  # a folder's usage: read
    config = root / "containers" / "cdcdcdcdcdc1" / "config.json"
    replace_json(config, {**json.loads(config.read_text()), "name": "renamed"})
    assert " renamed " in listed_table(root)
    (root / "content").mkdir()
    (root / "content" / "f").write_bytes(b"x" * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(root / "content"), str(img)], check=True)
    table = listed_table(root)
    assert table == listing.containers_table(full_rows(root)) and " renamed " in table
    make_running(root, "cdcdcdcdcdc1")  # started: its status and usage are live, never cells
    table = listed_table(root)
    assert "running (v1)" in table and table == listing.containers_table(full_rows(root))


def test_the_cache_keeps_all_a_row_reads_of_a_config():
    """container_row reads no config key RowCache leaves out."""

    class Recording(dict):
        def get(self, key, default=None):
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

    seen: set[str] = set()
    config = Recording(id="a" * 12, idmap={"base": 1_000_065_536, "size": 65536}, storage=MIB)
    listing.container_row("a" * 12, config, {"status": "stopped"}, None)
    assert seen <= set(listing.ROW_KEYS) and "idmap" in seen


def test_a_cache_that_cannot_be_written(root, cached):
    """The cache's name taken by a folder: rows are read, nothing is left behind."""
    cache = root / listing.CACHE
    cache.unlink()
    cache.mkdir()
    assert listed(root) == cached
    assert cache.is_dir() and not os.listdir(cache) and not (root / f"{listing.CACHE}.tmp").exists()


@pytest.mark.parametrize("odd", [5, "64M", 1.5, True, [1], {"a": 1}])
def test_a_hand_edited_config_field_shows_a_question_mark(odd):
    """A config edited by hand with a value of the wrong type for any field the table shows
    is listed with '?' in that cell, not an internal error (list --json prints it as it is)."""
    config = {key: odd for key in listing.ROW_KEYS if key not in ("id", "cpu")}
    row = listing.container_row("c1", config, {"status": "stopped"}, None)
    table = listing.containers_table([row]).splitlines()
    assert len(table) == 2 and table[1].startswith("c1  "), table
    assert "?" in table[1], table


def test_quick_list_leaves_the_collector_on_where_cmd_list_answers(monkeypatch, capsys):
    """quick_list turns the cycle collector off for the list (and its exit); where listing
    leaves the answer to cmd_list, it is on again before cmd_list runs."""
    import gc

    from kiwi import cli

    def unusual():
        assert not gc.isenabled()
        raise listing.Unusual("cmd_list answers")

    monkeypatch.setattr(listing, "containers_listing", unusual)
    try:
        assert cli.quick_list(cli.quick_list_args(["list"])) is False
        assert gc.isenabled()
        monkeypatch.setattr(listing, "containers_listing", lambda: ("TABLE", None))
        assert cli.quick_list(cli.quick_list_args(["list"])) is True
        assert not gc.isenabled() and capsys.readouterr().out == "TABLE\n"
    finally:
        gc.enable()


def test_the_cache_keeps_one_object_of_each_repeated_value(root, cached, monkeypatch):
    """Equal texts and numbers are written once (marshal's references): the cache reads
    back equal, with each repeat the same object."""
    _, entries, records, cells = marshal.loads((root / listing.CACHE).read_bytes())
    value = {"a": ("stopped", 1 << 40, [1.5, True, None]), "b": ("stopped", 1 << 40, "x" * 3)}
    copy = marshal.loads(marshal.dumps(listing.one_of_each(value, {})))
    assert copy == value and copy["a"][0] is copy["b"][0] and copy["a"][1] is copy["b"][1]
    config_keys = [entry[0] for entry in entries.values()] + [entry[0] for entry in cells.values()]
    assert len({id(key[0]) for key in config_keys}) == 1  # one device number for every key
    assert cached_table(root, monkeypatch) == listing.containers_table(cached)
