"""kiwi.sizes.parse_size: what users type for --memory and --storage."""

import pytest

from kiwi.errors import KiwiError
from kiwi.sizes import format_size, parse_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("4096", 4096),
        ("7k", 7 * K),
        ("7K", 7 * K),
        ("512M", 512 * M),
        ("512m", 512 * M),
        ("2G", 2 * G),
        ("1t", T),
        ("1.5G", 3 * G // 2),
        ("0.5k", 512),
        ("512MB", 512 * M),
        ("512MiB", 512 * M),
        ("2gib", 2 * G),
        (" 3 G ", 3 * G),
        ("100B", 100),
        ("100b", 100),
    ],
)
def test_suffixes(text, expected):
    assert parse_size(text) == expected


def test_bare_number_takes_the_default_unit():
    assert parse_size("64", default_unit="m") == 64 * M
    assert parse_size("2", default_unit="g") == 2 * G


def test_an_explicit_unit_beats_the_default():
    assert parse_size("64k", default_unit="m") == 64 * K
    # B alone means bytes, not the default unit: "512B" of memory is 512 bytes.
    assert parse_size("512B", default_unit="m") == 512


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "M",
        "G1",
        "1.",
        ".5G",
        "-1G",
        "+1G",
        "1e9",
        "0x10",
        "1,5G",
        "1 G B",
        "1P",
        "1GG",
        "ib",
        "5ib",
        "1 k 2",
        "1\n2",
        "١٢",
        "inf",
        "nan",
    ],
)
def test_bad_input_is_one_clear_line(text):
    with pytest.raises(KiwiError) as err:
        parse_size(text, what="memory size")
    message = str(err.value)
    assert message.startswith("invalid memory size ") and "\n" not in message.replace(repr(text), "")


@pytest.mark.parametrize("text", ["0", "0G", "0.0", "0.0001k", "0.4"])
def test_zero_and_below_one_byte_are_refused(text):
    with pytest.raises(KiwiError, match="more than zero"):
        parse_size(text)


def test_non_string_input_is_read_as_text():
    assert parse_size(512, default_unit="m") == 512 * M


def test_format_size_round_trips_whole_units():
    assert format_size(None) == "-"
    assert format_size(100) == "100B"
    for text in ("1K", "512M", "1.5G", "2T"):
        assert format_size(parse_size(text)) == text
