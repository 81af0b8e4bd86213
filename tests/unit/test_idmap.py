"""The user-id block allocator (pure logic of kiwi/idmap.py)."""

import pytest

from kiwi import idmap
from kiwi.errors import KiwiError

FIRST, SIZE = idmap.FIRST_BASE, idmap.SIZE


def test_first_block_when_nothing_is_taken():
    assert idmap.free_base([], []) == FIRST


def test_taken_blocks_are_skipped_and_a_released_one_is_reused():
    assert idmap.free_base([FIRST, FIRST + SIZE], []) == FIRST + 2 * SIZE
    assert idmap.free_base([FIRST + SIZE], []) == FIRST


def test_subid_ranges_are_skipped_even_when_they_only_overlap_partly():
    reserved = [(FIRST + 100, 10), (FIRST + SIZE + SIZE - 1, 1)]
    assert idmap.free_base([], reserved) == FIRST + 2 * SIZE


def test_a_range_just_before_or_after_a_block_does_not_overlap_it():
    assert idmap.free_base([], [(FIRST - 10, 10), (FIRST + SIZE, 5)]) == FIRST


def test_exhaustion_is_a_clear_error():
    reserved = [(FIRST, idmap.LAST_ID - FIRST + 1)]
    with pytest.raises(KiwiError, match="no free user id range"):
        idmap.free_base([], reserved)


def test_parse_subids_ignores_malformed_lines():
    text = "alice:100000:65536\n\nbroken\nbob:x:1\ncarol:231072:65536:extra\ndave:1000000000:5\n"
    assert idmap.parse_subids(text) == [(100000, 65536), (1000000000, 5)]


def test_usable_base_keeps_own_or_free_blocks_only():
    leases = {str(FIRST): "f/a", str(FIRST + SIZE): "f/b"}
    assert idmap.usable_base(FIRST, "f/a", leases, [])
    assert not idmap.usable_base(FIRST, "g/a", leases, [])  # a copied folder's record
    assert idmap.usable_base(FIRST + 2 * SIZE, "g/a", leases, [])
    assert not idmap.usable_base(FIRST + 2 * SIZE, "g/a", leases, [(FIRST + 2 * SIZE + 7, 1)])
    assert not idmap.usable_base(FIRST + 1, "f/a", leases, [])  # not a block boundary
    assert not idmap.usable_base(0, "f/a", {}, [])
    assert not idmap.usable_base("1000000000", "f/a", {}, [])


def test_privileged_is_any_config_without_a_valid_idmap():
    assert idmap.is_privileged({})  # older Kiwi, Go Kiwi, migrate
    assert idmap.is_privileged({"idmap": None, "privileged": True})
    assert idmap.is_privileged({"idmap": {"base": "x"}})
    assert not idmap.is_privileged({"idmap": {"base": FIRST, "size": SIZE}})
    assert idmap.base_of({"idmap": {"base": FIRST, "size": SIZE}}) == FIRST


def test_own_leases_lists_only_that_folder():
    state = {"idmaps": {str(FIRST): "f/a", str(FIRST + SIZE): "g/b", str(FIRST + 2 * SIZE): "f/c"}}
    assert sorted(idmap.own_leases(state, "f")) == [(str(FIRST), "a"), (str(FIRST + 2 * SIZE), "c")]
