"""Store.resolve_container on a store in a temporary folder (plain files only)."""

import json

import pytest

from kiwi.errors import KiwiError
from kiwi.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "kiwi-data")


def add(store, cid, name=None, config_text=None):
    folder = store.containers_dir / cid
    folder.mkdir(parents=True)
    if config_text is None:
        config_text = json.dumps({"id": cid, "name": name})
    (folder / "config.json").write_text(config_text)


def refused(store, ref, fragment):
    with pytest.raises(KiwiError, match=fragment) as err:
        store.resolve_container(ref)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_an_empty_or_missing_store_has_nothing(store):
    refused(store, "", "no container given")
    refused(store, "0123", "no container named or starting with '0123'")
    refused(store, "web", "no container named or starting with 'web'")


def test_full_id_prefix_and_name(store):
    add(store, "0123456789ab", "web")
    add(store, "fedcba987654", "db")
    assert store.resolve_container("0123456789ab") == "0123456789ab"
    assert store.resolve_container("0") == "0123456789ab"
    assert store.resolve_container("fedcba98765") == "fedcba987654"
    assert store.resolve_container("web") == "0123456789ab"
    assert store.resolve_container("db") == "fedcba987654"


def test_a_name_beats_an_id_prefix(store):
    add(store, "0123456789ab", "fed")
    add(store, "fedcba987654")
    assert store.resolve_container("fed") == "0123456789ab"
    assert store.resolve_container("fedc") == "fedcba987654"


def test_an_ambiguous_prefix_names_the_candidates(store):
    add(store, "0123456789ab")
    add(store, "0123456789cd")
    message = refused(store, "0123", "matches 2 containers")
    assert "0123456789ab, 0123456789cd" in message and "give more of the id" in message
    assert store.resolve_container("0123456789c") == "0123456789cd"


def test_a_long_ambiguity_is_cut_short(store):
    for last in "abcdef":
        add(store, f"aaaaaaaaaaa{last}")
    message = refused(store, "aaaa", "matches 6 containers")
    assert message.count("aaaaaaaaaaa") == 4 and ", ..." in message


@pytest.mark.parametrize(
    "ref",
    [
        "0123456789AB",  # ids are lower case
        "0123456789abc",  # longer than an id
        "123456789ab",  # not a prefix
        " 0123",  # no trimming
        "0123456789ab/..",
        "0123456789ab\n",
        "g",
    ],
)
def test_near_misses_are_refused(store, ref):
    add(store, "0123456789ab", "web")
    refused(store, ref, "no container named or starting with")


def test_only_id_shaped_folders_are_containers(store):
    add(store, "0123456789ab", "web")
    (store.containers_dir / "notanid").mkdir()
    (store.containers_dir / ".0123456789a").mkdir()
    (store.containers_dir / "0123456789abcd").mkdir()
    assert store.container_ids() == ["0123456789ab"]
    assert store.resolve_container("0123") == "0123456789ab"
    refused(store, "notanid", "no container named")


def test_damaged_or_missing_configs_still_resolve_by_id(store):
    add(store, "0123456789ab", config_text="{not json")
    (store.containers_dir / "fedcba987654").mkdir(parents=True)  # no config.json
    add(store, "aaaaaaaaaaaa", "web")
    assert store.resolve_container("0123") == "0123456789ab"
    assert store.resolve_container("fedcba987654") == "fedcba987654"
    assert store.resolve_container("web") == "aaaaaaaaaaaa"
