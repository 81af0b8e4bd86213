"""Issue 20: `kiwi list` reads little (no argparse for its usual spellings, no look
into the runtime folder of a container that has none) and still shows each state."""

from __future__ import annotations

import json
import marshal
import os
import signal
import time

import pytest

from conftest import wait_gone


def rows_by_name(kiwi, *args) -> dict:
    return {r["name"]: r for r in kiwi.json("list", *args)}


def test_quick_and_full_parsing_agree(kiwi, busybox):
    """`list [what] [--json]` skips argparse; `--debug list ...` goes through it: same answers."""
    up = kiwi.create(busybox, "--name", "up")
    kiwi.create(busybox, "--name", "down")
    kiwi("attach", up, "--", "true")
    try:
        table = kiwi.out("list")
        assert kiwi.out("ps") == table == kiwi.out("list", "containers")
        assert kiwi.out("--debug", "list") == table
        assert len(table.splitlines()) == 3
        quick = kiwi.json("list")
        assert kiwi.json("list", "containers") == quick
        assert json.loads(kiwi.out("--debug", "list", "--json")) == quick
        assert json.loads(kiwi.out("list", "--json", "containers")) == quick
        everything = kiwi.json("list", "all")
        assert everything["containers"] == quick
        assert json.loads(kiwi.out("--debug", "list", "all", "--json")) == everything
        assert kiwi.json("list", "images") == everything["images"]
        assert kiwi.json("list", "exports") == everything["exports"] == []
    finally:
        kiwi("stop", up)


def test_other_spellings_still_get_argparse(kiwi):
    for args, fragment in (
        (("list", "bogus"), "invalid choice"),
        (("list", "images", "containers"), "unrecognized arguments"),
        (("list", "--json", "--bogus"), "unrecognized arguments"),
    ):
        done = kiwi(*args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert fragment in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1].startswith("kiwi"), done.stderr
    assert "--json" in kiwi.out("list", "--help")
    assert kiwi.json("list", "--json") == []  # argparse takes --json twice; so does list


def test_every_state_shows(kiwi, busybox, tmp_path):
    """Stopped (no runtime folder), running, mounted and back to stopped."""
    cid = kiwi.create(busybox, "--name", "c")
    runtime_folder = kiwi.root / "mounts" / cid
    assert not runtime_folder.exists()
    assert rows_by_name(kiwi)["c"]["status"] == "stopped"
    kiwi("attach", cid, "--", "true")
    try:
        row = rows_by_name(kiwi)["c"]
        assert row["status"] == "running" and row["cgroup"] in ("v1", "v2"), row
        assert f"{cid}  c     running" in kiwi.out("list")
    finally:
        kiwi("stop", cid)
    assert rows_by_name(kiwi)["c"]["status"] == "stopped"
    target = tmp_path / "view"
    target.mkdir()
    kiwi("mount", cid, str(target))
    try:
        row = rows_by_name(kiwi)["c"]
        assert row["status"] == "mounted" and row["mount"] == str(target), row
    finally:
        kiwi("unmount", cid)
    row = rows_by_name(kiwi)["c"]
    assert row["status"] == "stopped" and row["mount"] is None, row


def test_a_damaged_record_is_skipped(kiwi, busybox):
    """A config.json that does not parse leaves the others listed; list never fails on it."""
    good = kiwi.create(busybox, "--name", "good")
    bad = kiwi.create(busybox, "--name", "bad")
    (kiwi.root / "containers" / bad / "config.json").write_text("{not json")
    assert [r["id"] for r in kiwi.json("list")] == [good]
    # not an object, nested too deeply, empty, an id that is not its folder's
    for damage in ("[1, 2]", "[" * 100_000, "", '{"id": 5}', json.dumps({"id": good})):
        (kiwi.root / "containers" / bad / "config.json").write_text(damage)
        done = kiwi("list")
        assert [line.split()[0] for line in done.stdout.splitlines()] == ["ID", good], damage
        assert not done.stderr, (damage, done.stderr)


def containers_block(text: str) -> str:
    """The containers table of `list all`: the lines before the first blank one."""
    return text.split("\n\n")[0]


def test_quick_table_is_cmd_lists_table(kiwi, busybox, tmp_path, monkeypatch):
    """`list` (listing.py, no commands.py) prints what `list all` (cmd_list) prints for the
    containers, in every state and setting; where listing leaves the answer to cmd_list
    (a mounted container), the table is the same too."""
    from kiwi import listing

    up = kiwi.create(busybox, "--name", "up", "--memory", "64M", "--cpu", "1")
    kiwi.create(busybox, "--name", "host-net", "--network", "host", "--privileged")
    kiwi.create(busybox, "--name", "host-storage", "--storage", "host")
    kiwi.create(busybox, "--name", "sparse", "--sparse")
    kiwi("attach", up, "--", "sh", "-c", "echo data > /kept")
    monkeypatch.setenv("KIWI_ROOT", str(kiwi.root))
    try:
        table = kiwi.out("list")
        assert containers_block(kiwi.out("list", "all")) == table
        assert listing.containers_listing()[0] == table  # listing answered, not cmd_list
        assert "running (" in table and table.count("stopped") == 3 and "  host-net " in table
    finally:
        kiwi("stop", up)
    target = tmp_path / "view"
    target.mkdir()
    kiwi("mount", "sparse", str(target))
    try:
        with pytest.raises(listing.Unusual):
            listing.containers_listing()
        table = kiwi.out("list")
        assert containers_block(kiwi.out("list", "all")) == table
        row = next(line.split() for line in table.splitlines() if line.split()[1] == "sparse")
        assert row[2] == "mounted" and row[-1] == str(target), row
    finally:
        kiwi("unmount", "sparse")


def cached_rows(kiwi, wanted: dict, timeout: float = 30) -> dict:
    """Lists until the row cache holds each wanted container ({cid: True for a stopped one's
    table cells, False for its config's fields}): files
    changed in the last listing.SETTLED_NS are read, not kept."""
    from kiwi import listing

    deadline = time.monotonic() + timeout
    while True:
        kiwi("list")
        try:
            _, rows, _, cells = marshal.loads((kiwi.root / listing.CACHE).read_bytes())
        except FileNotFoundError:
            rows = cells = {}
        if all(cid in (cells if stopped else rows) for cid, stopped in wanted.items()):
            return rows
        assert time.monotonic() < deadline, rows.keys()
        time.sleep(0.5)


def same_as_cmd_list(kiwi) -> str:
    table = kiwi.out("list")
    assert containers_block(kiwi.out("list", "all")) == table
    return table


def row_of(table: str, name: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[1] == name)


def test_the_row_cache_is_never_stale(kiwi, busybox):
    """`list` keeps each container's config and a stopped one's usage in a cache while the
    files stay the same; after set, rename, a write then stop, a kill -9 of the init and a
    forged cache it still prints what cmd_list prints."""
    a = kiwi.create(busybox, "--name", "a")
    b = kiwi.create(busybox, "--name", "b", "--sparse")
    kiwi("attach", b, "--", "true")
    try:
        cached_rows(kiwi, {a: True, b: False})
        same_as_cmd_list(kiwi)
        kiwi("set", a, "--memory", "256M")
        assert row_of(same_as_cmd_list(kiwi), "a")[5] == "256M"
        kiwi("rename", a, "renamed")
        assert row_of(same_as_cmd_list(kiwi), "renamed")[0] == a
        kiwi.sh(b, "dd if=/dev/zero of=/big bs=1M count=3 2>/dev/null")
        kiwi("stop", b)
        used = row_of(same_as_cmd_list(kiwi), "b")[7]
        cached_rows(kiwi, {a: True, b: True})
        assert row_of(same_as_cmd_list(kiwi), "b")[7] == used
        kiwi.sh(b, "rm /big; dd if=/dev/zero of=/other bs=1M count=6 2>/dev/null")
        runtime = json.loads((kiwi.root / "mounts" / b / "runtime.json").read_text())
        os.kill(runtime["init_pid"], signal.SIGKILL)
        wait_gone([runtime["init_pid"]])  # ended: its reaping is up to whoever adopted it
        assert row_of(same_as_cmd_list(kiwi), "b")[2] == "stopped"
        deadline = time.monotonic() + 30
        while row_of(containers_block(kiwi.out("list", "all")), "b")[7] == used:
            assert time.monotonic() < deadline  # the kernel writes the superblock as it unmounts
            time.sleep(0.1)
        same_as_cmd_list(kiwi)
    finally:
        kiwi("stop", b, check=False)
    # A cache of another owner's, with the right keys and a lie: ignored, then replaced.
    from kiwi import listing

    cache = kiwi.root / listing.CACHE
    entries = cached_rows(kiwi, {a: True, b: True})
    _, _, records, cells = marshal.loads(cache.read_bytes())
    *keys, row, sparse = cells[a]  # the table's cells of a stopped container
    cells[a] = (*keys, (row[0], "forged", *row[2:]), sparse)
    cache.write_bytes(marshal.dumps((listing.CACHE_FORMAT, entries, records, cells)))
    assert row_of(kiwi.out("list"), "forged")[0] == a  # as root's own file: believed
    os.chown(cache, 1000, 1000)
    assert row_of(same_as_cmd_list(kiwi), "renamed")[0] == a
    assert cache.stat().st_uid == 0 and b"forged" not in cache.read_bytes()
