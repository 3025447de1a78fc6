"""Durations as people type them (`7d`, `12h`, `30m`, `45s`, plain seconds),
for the command line and the server's options alike; no I/O, no server code."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s` or plain seconds, as seconds; 0 is 0 (the
    caller says what it means: forever, or none)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m or seconds)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]
