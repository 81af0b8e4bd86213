"""Human sizes, 1024-based: 512M, 1.5G, 2t."""
from __future__ import annotations

import re

from .errors import KiwiError

UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# The unit is a letter (k, M, G, T, with an optional B or iB) or B alone: plain bytes.
SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt](?:i?b)?|b)?\s*\Z", re.IGNORECASE | re.ASCII)
MAX_SIZE = 1 << 63  # the kernel's limits are signed 64-bit


def parse_size(text: str, default_unit: str = "", what: str = "size") -> int:
    """'512M' -> bytes. A bare number means default_unit ('m' for memory)."""
    m = SIZE_RE.match(str(text))
    if not m:
        raise KiwiError(f"invalid {what} {text!r}: use a number with k, M, G or T, e.g. 512M or 2G")
    number, unit = m.group(1), (m.group(2) or default_unit)[:1].lower()
    scaled = float(number) * UNITS[unit]  # inf for a number too long for a float
    if scaled >= MAX_SIZE:
        raise KiwiError(f"invalid {what} {text!r}: it must be less than 8 EiB")
    value = int(scaled)
    if value <= 0:
        raise KiwiError(f"invalid {what} {text!r}: it must be more than zero")
    return value


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("T", "G", "M", "K"):
        scale = UNITS[unit.lower()]
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{n}B"
