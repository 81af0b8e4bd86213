"""Looks at a process, a state image and a small JSON record with os alone.

No json, re, pathlib, signal or contextlib: each of those costs `kiwi list`
2-10 ms of start-up against a ~20 ms interpreter (issue 20), and listing.py
reads every container with these. proc.py, storage.py and runstate.py use
them too: one copy each.
"""

from __future__ import annotations

import os

# --- processes ----------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (None for a gone or zombie process): tells a live
    process from a recycled pid."""
    fields = stat_fields(pid)
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def is_namespace_init(pid: int) -> bool:
    """The process is PID 1 of a pid namespace right below ours (NSpid: "<pid> 1"): a
    container's init, never a host process nor a helper that only joined the namespace."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith(b"NSpid:"):
            return line.split()[1:] == [str(pid).encode(), b"1"]
    return False


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ...
    (the name itself may hold spaces and parentheses, so split after the last ')')."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)  # one line of ~300 bytes (the name is at most 15)
    except OSError:
        return None  # ESRCH: it ended between the open and the read
    finally:
        os.close(fd)
    return data[data.rindex(b")") + 2 :].split()


# --- container configs --------------------------------------------------------------


def is_privileged(config: dict) -> bool:
    """A config without an id block (older Kiwi, Go Kiwi, `create --privileged`): see idmap.py."""
    idmap = config.get("idmap")
    return not (isinstance(idmap, dict) and isinstance(idmap.get("base"), int))


# --- state images -------------------------------------------------------------------


def read_superblock(img) -> dict | None:
    """Block counts from the ext4 superblock itself: no tool to run, so `list` stays fast."""
    try:
        fd = os.open(img, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        sb = os.pread(fd, 1024, 1024)
    except OSError:
        return None  # a folder (EISDIR)
    finally:
        os.close(fd)
    if len(sb) < 0x250 or le(sb, 0x38, 2) != 0xEF53:
        return None
    blocks_lo, free_lo, log_block = le(sb, 4), le(sb, 12), le(sb, 24)
    blocks_hi = free_hi = 0
    if le(sb, 0x60) & 0x80:  # 64bit feature: high halves are valid
        blocks_hi, free_hi = le(sb, 0x150), le(sb, 0x158)
    blocks = blocks_lo | blocks_hi << 32
    free = free_lo | free_hi << 32
    # Metadata (journal, inode tables) is not "used" in df's sense, nor in a running container's statfs.
    overhead = le(sb, 0x248)
    return {"blocks": blocks, "free": free, "overhead": overhead, "block_size": 1024 << log_block}


def le(data: bytes, offset: int, size: int = 4) -> int:
    """A little-endian unsigned field (struct.unpack_from without importing struct)."""
    return int.from_bytes(data[offset : offset + size], "little")


def superblock_usage(img) -> int | None:
    sb = read_superblock(img)
    if sb is None:
        return None
    return max(sb["blocks"] - sb["free"] - sb["overhead"], 0) * sb["block_size"]


def live_usage(init_pid: int) -> int | None:
    """A running container's overlay reports its upper filesystem in statfs: exact and current."""
    try:
        st = os.statvfs(f"/proc/{init_pid}/root")
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- small JSON records -------------------------------------------------------------

# What json.loads would read with json's default decoder; the _json scanner asks for these.
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
_WHITESPACE = " \t\n\r"


class _Decoder:
    """The settings _json.make_scanner reads from a json.JSONDecoder (the defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__

    def __init__(self):
        self.memo = {}  # json's pure-Python scanner keeps its keys here


def mount_points() -> set[str]:
    """Every mount point this process sees (/proc/self/mountinfo's fifth field); empty
    when it cannot be read."""
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


_scanner = []  # made on first use: proc.py imports this module too


def json_value(data: bytes):
    """json.loads(data) for a record Kiwi wrote (UTF-8, no BOM): the same C scanner json
    itself uses, without importing json (json.decoder imports re, and re enum). Any
    damage is a ValueError, as with json.loads."""
    if not _scanner:
        try:
            from _json import make_scanner
        except ImportError:  # an interpreter without the accelerator: json's own pure-Python scanner
            from json.scanner import py_make_scanner as make_scanner
        _scanner.append(make_scanner(_Decoder()))
    text = data.decode()
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scanner[0](text, start)
    except StopIteration:
        raise ValueError(f"Expecting value at {start}") from None
    except SystemError:
        # The C scanner reports damage as json.decoder.JSONDecodeError, found only when
        # json.decoder is loaded (else this SystemError): json itself says what is wrong.
        import json

        return json.loads(data)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data at {end}")
    return value
