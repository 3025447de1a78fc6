"""Latency series: timing helpers and the summary every figure is reported as."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Series", "p99", "time_ms"]


def time_ms(fn: Callable[[], object]) -> float:
    """How long `fn()` took, in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def p99(samples: list[float]) -> float:
    """The 99th percentile by nearest rank (with few samples, the largest)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Series:
    """Samples of one latency, in milliseconds."""

    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        return p99(self.samples_ms)

    def summary(self) -> dict[str, float]:
        return {
            "median_ms": self.median_ms,
            "p99_ms": self.p99_ms,
            "min_ms": min(self.samples_ms),
            "max_ms": max(self.samples_ms),
            "n": len(self.samples_ms),
        }
