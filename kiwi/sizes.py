"""Human sizes, 1024-based: 512M, 1.5G, 2t."""

from __future__ import annotations

import re

from .errors import KiwiError

UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# The unit is a letter (k, M, G, T, with an optional B or iB) or B alone: plain bytes.
# Compiled on first use (re caches it): commands.py imports this module for
# format_size, and compiling the pattern was 1.5% of a warm `attach`.
SIZE_PATTERN = r"\s*(\d+(?:\.\d+)?)\s*([kmgt](?:i?b)?|b)?\s*\Z"
MAX_SIZE = 1 << 60  # far above any disk or RAM, far below what a C off_t or long holds
MAX_DIGITS = 24  # more is never a size; it would only make huge ints


def parse_size(text: str, default_unit: str = "", what: str = "size", maximum: int = MAX_SIZE) -> int:
    """'512M' -> bytes. A bare number means default_unit ('m' for memory)."""
    text = str(text)
    if text.strip().startswith("-"):
        raise KiwiError(f"invalid {what} {text!r}: it cannot be negative; give e.g. 512M or 2G")
    m = re.match(SIZE_PATTERN, text, re.IGNORECASE | re.ASCII)
    if not m:
        raise KiwiError(f"invalid {what} {text!r}: use a number with k, M, G or T, e.g. 512M or 2G")
    number, unit = m.group(1), (m.group(2) or default_unit)[:1].lower()
    if len(number) > MAX_DIGITS:
        raise KiwiError(f"invalid {what} {text!r}: it is too large; the most is {format_size(maximum)}")
    scale = UNITS[unit]
    whole, _, fraction = number.partition(".")
    # Exact integer arithmetic: float() would round, and overflow on long inputs.
    value = int(whole) * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if value <= 0:
        raise KiwiError(f"invalid {what} {text!r}: it must be more than zero")
    if value > maximum:
        raise KiwiError(f"invalid {what} {text!r}: it is too large; the most is {format_size(maximum)}")
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
