"""cli.quick_stop_args: the argparse-free reading of `kiwi stop` means what argparse's
would, and leaves every other spelling (and every mistake) to argparse."""

import pytest

from kiwi import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["stop", "web"],
        ["stop", "web", "--time", "0"],
        ["stop", "--time", "25", "3f2a"],
        ["stop", "", "--time", "7"],
    ],
)
def test_quick_stop_reads_what_argparse_reads(argv):
    quick, full = cli.quick_stop_args(argv), cli.parse(argv)
    assert quick is not None
    assert (quick.command, quick.container, quick.time) == (full.command, full.container, full.time)


@pytest.mark.parametrize(
    "argv",
    [
        ["stop"],
        ["stop", "-h"],
        ["stop", "--help"],
        ["stop", "a", "b"],
        ["stop", "web", "--time"],
        ["stop", "web", "--time", "-1"],
        ["stop", "web", "--time", "1.5"],
        ["stop", "web", "--time", "²"],
        ["stop", "web", "--time=3"],
        ["stop", "--time", "--time", "web"],
        ["stop", "web", "--", "sh"],
        ["stop", "-web"],
        ["start", "web"],
        ["list"],
    ],
)
def test_quick_stop_leaves_the_rest_to_argparse(argv):
    assert cli.quick_stop_args(argv) is None
