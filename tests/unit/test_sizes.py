"""sizes.parse_size: units, exact arithmetic, and the bounds that keep huge or
negative numbers from ever reaching a syscall (an OverflowError once did)."""

import pytest

from kiwi.errors import KiwiError
from kiwi.sizes import MAX_SIZE, format_size, parse_size

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    "text, unit, expected",
    [
        ("512M", "", 512 * MIB),
        ("1.5G", "", GIB + GIB // 2),
        ("2t", "", 2 * TIB),
        ("0.5k", "", 512),
        ("1", "", 1),
        ("256", "m", 256 * MIB),
        (" 3 G ", "", 3 * GIB),
        ("4GiB", "", 4 * GIB),
        ("1.0000001k", "", KIB),
        ("16T", "", 16 * TIB),
        ("1048576T", "", MAX_SIZE),
    ],
)
def test_valid_sizes(text, unit, expected):
    assert parse_size(text, default_unit=unit) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("-5M", "cannot be negative"),
        (" -1", "cannot be negative"),
        ("-0", "cannot be negative"),
        ("0", "more than zero"),
        ("0.0001k", "more than zero"),
        ("1048577T", "too large"),
        ("999999999T", "too large"),
        ("9" * 400, "too large"),
        ("9" * 5000 + "T", "too large"),
        ("1" + "0" * 24, "too large"),
        ("12Q", "use a number"),
        ("", "use a number"),
        ("1e9", "use a number"),
        ("0x10", "use a number"),
        ("inf", "use a number"),
        ("nan", "use a number"),
        ("1,5G", "use a number"),
    ],
)
def test_refused_sizes_say_why_in_one_line(text, fragment):
    with pytest.raises(KiwiError) as caught:
        parse_size(text, what="memory size")
    message = caught.value.message
    assert fragment in message and "memory size" in message and "\n" not in message


def test_a_caller_sets_its_own_maximum():
    assert parse_size("16T", maximum=16 * TIB) == 16 * TIB
    with pytest.raises(KiwiError) as caught:
        parse_size("17T", what="storage size", maximum=16 * TIB)
    assert "the most is 16T" in caught.value.message


def test_format_size_round_trips_the_bounds():
    assert format_size(MAX_SIZE) == "1048576T" and parse_size(format_size(16 * TIB)) == 16 * TIB
    assert format_size(None) == "-" and format_size(1536 * MIB) == "1.5G"
