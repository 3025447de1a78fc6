"""What the command line reads for VMs that clean up after themselves:
durations (`--ttl 1h`, `--idle-stop 10m`; `0`: none) and labels (`k=v`)."""

from __future__ import annotations

import math

from arker._durations import parse_duration
from arker.cli._output import fail

__all__ = ["labels_arg", "seconds_arg"]


def seconds_arg(text: str, option: str) -> int | None:
    """Whole seconds (rounded up) of `7d`, `12h`, `30m`, `45s` or seconds;
    `0` is None: no TTL (or idle stop), whatever the server's default."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        fail("invalid_request", f"{option}: {exc}")
    return math.ceil(seconds) or None


def labels_arg(pairs: list[str] | None, option: str) -> dict[str, str] | None:
    """`key=value`s as a dict (the server checks keys and values); None for none."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail("invalid_request", f"{option} takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out or None
