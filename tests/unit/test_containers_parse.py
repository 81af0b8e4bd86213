"""kiwi.containers.parse_*: the values of --storage, --memory, --cpu and --shell."""

import os

import pytest

from kiwi import containers, storage
from kiwi.errors import KiwiError

M, G = 1 << 20, 1 << 30


def refused(parse, text, fragment):
    with pytest.raises(KiwiError, match=fragment) as err:
        parse(text)
    assert "\n" not in str(err.value).replace(repr(text), "")


def test_storage():
    assert containers.parse_storage(None) == containers.DEFAULT_STORAGE == G
    assert containers.parse_storage("host") is None
    assert containers.parse_storage("1G") == storage.MIN_STORAGE
    assert containers.parse_storage("2.5g") == 5 * G // 2
    assert containers.parse_storage("1048576k") == G
    refused(containers.parse_storage, "1023M", "storage 1023M is too small: the minimum is 1G")
    refused(containers.parse_storage, "1024", "too small")  # a bare number is bytes here
    refused(containers.parse_storage, "0", "more than zero")
    refused(containers.parse_storage, "Host", "invalid storage size 'Host'")
    refused(containers.parse_storage, "lots", "invalid storage size")


def test_memory():
    assert containers.parse_memory("host") is None
    assert containers.parse_memory("64") == 64 * M  # a bare number is MiB
    assert containers.parse_memory("16M") == containers.MIN_MEMORY
    assert containers.parse_memory("1.5G") == 3 * G // 2
    refused(containers.parse_memory, "15M", "memory 15M is too small: the minimum is 16M")
    refused(containers.parse_memory, "16777215B", "too small")
    refused(containers.parse_memory, "-1", "invalid memory size")
    refused(containers.parse_memory, "", "invalid memory size")


def test_cpu():
    usable = len(os.sched_getaffinity(0))
    assert containers.parse_cpu("host") is None
    assert containers.parse_cpu("1") == 1
    assert containers.parse_cpu(str(usable)) == usable
    assert containers.parse_cpu(" 1 ") == 1  # int() trims
    refused(containers.parse_cpu, str(usable + 1), f"this host has {usable} usable CPUs")
    refused(containers.parse_cpu, "0", "invalid cpu count 0")
    refused(containers.parse_cpu, "-2", "invalid cpu count -2")
    for text in ("1.5", "two", "", "0x2", "1e1"):
        refused(containers.parse_cpu, text, "use a whole number like 2, or 'host'")


def test_shell():
    for ok in ("/bin/sh", "/usr/bin/bash", "/odd path/with space"):
        assert containers.parse_shell(ok) == ok
    for bad in ("sh", "", "bin/sh", "./sh", "/bin/sh\n", "/bin/sh\0x", "~/sh"):
        refused(containers.parse_shell, bad, "give an absolute path inside the container")
