"""files.read_json reads small files in one small read and still bounds large ones."""

import json

import pytest

from kiwi.errors import KiwiError
from kiwi.files import JSON_FIRST_READ, read_json


@pytest.mark.parametrize("size", [0, 10, JSON_FIRST_READ - 1, JSON_FIRST_READ, JSON_FIRST_READ + 1, 300_000])
def test_whole_file_read_up_to_the_limit(tmp_path, size):
    value = "x" * max(size - 2, 0)  # a JSON string of `size` bytes with its quotes
    path = tmp_path / "f.json"
    path.write_text(json.dumps(value) if size >= 2 else "0" * max(size, 1))
    assert path.stat().st_size == max(size, 1)
    assert read_json(path) == (value if size >= 2 else 0)


@pytest.mark.parametrize("limit", [100, JSON_FIRST_READ - 1, JSON_FIRST_READ, JSON_FIRST_READ + 5])
def test_one_byte_over_the_limit_is_refused(tmp_path, limit):
    path = tmp_path / "f.json"
    path.write_text(json.dumps("y" * (limit - 1)))  # limit + 1 bytes
    with pytest.raises(KiwiError, match="larger than"):
        read_json(path, limit=limit)
    path.write_text(json.dumps("y" * (limit - 2)))  # exactly limit bytes
    assert read_json(path, limit=limit) == "y" * (limit - 2)
