"""Prometheus text exposition, written by hand: the few metric kinds the server
needs do not justify a dependency."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

__all__ = ["Counter", "Histogram", "Metrics"]

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: defaultdict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = list(self._values.items()) or [((), 0.0)]
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in items]
        return lines


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        # per label set: counts per bucket (non-cumulative), sum, count
        self._data: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            data = [(k, list(c), s[0]) for k, (c, s) in self._data.items()]
        for key, counts, total in data:
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels((*key, ('le', le)))} {running}")
            lines.append(f"{self.name}_sum{_labels(key)} {total:.6f}")
            lines.append(f"{self.name}_count{_labels(key)} {running}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "arker_http_requests_total", "HTTP requests by route, method and status."
        )
        self.latency = Histogram(
            "arker_http_request_duration_seconds", "HTTP request latency by route."
        )
        self.forks = Counter("arker_forks_total", "VMs forked.")
        self.runs_started = Counter("arker_runs_started_total", "Runs started.")
        self.runs_finished = Counter("arker_runs_finished_total", "Runs finished, by final state.")
        self.vms_expired = Counter("arker_vms_expired_total", "VMs deleted at their TTL.")
        self.vms_idle_stopped = Counter(
            "arker_vms_idle_stopped_total", "VMs stopped after idle_stop_s with nothing to do."
        )

    def render(self, vms_running: int | None, *, delete_pending: int | None = None) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.forks,
            self.runs_started,
            self.runs_finished,
            self.vms_expired,
            self.vms_idle_stopped,
        ):
            lines += metric.render()
        if vms_running is not None:
            lines += [
                "# HELP arker_vms_running VMs whose init holds their namespaces.",
                "# TYPE arker_vms_running gauge",
                f"arker_vms_running {vms_running}",
            ]
        if delete_pending is not None:
            lines += [
                "# HELP arker_storage_delete_pending Deletes that failed and wait to be retried.",
                "# TYPE arker_storage_delete_pending gauge",
                f"arker_storage_delete_pending {delete_pending}",
            ]
        return "\n".join(lines) + "\n"
