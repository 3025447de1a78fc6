"""When to try a request again, and how long to wait first.

Retried: connection errors, timeouts, and the statuses 408, 429, 502, 503 and
504 (but not a 429 `quota_exceeded`, a limit that waiting does not lift).
Nothing else: a 400, 404, 409 or 500 is raised at once. Every mutating call
carries one Idempotency-Key (and a file write one Upload-Id) reused by all its
attempts, so a retry never does the work twice.

The wait before retry n (n = 1 after the first try):
- a `Retry-After` header (delta-seconds or an HTTP date) is honoured, clipped to
  [0, RETRY_AFTER_CAP_S] so that a server cannot park the caller for minutes;
- otherwise min(max_delay_s, base_delay_s * 2**(n-1)), minus up to 25% jitter.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from arker.errors import ArkerError, ErrorCode

__all__ = ["RETRYABLE_STATUSES", "RETRY_AFTER_CAP_S", "RetryPolicy", "retry_after_s"]

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
RETRY_AFTER_CAP_S = 30.0

# Failures where the request may not have reached the server, or its answer was
# lost; LocalProtocolError and UnsupportedProtocol would fail the same way again.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries: `attempts` counts every try, the first included."""

    attempts: int = 4
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ArkerError(ErrorCode.INVALID_REQUEST, "retry attempts must be an int")
        if self.attempts < 1:
            raise ArkerError(ErrorCode.INVALID_REQUEST, "retry attempts must be at least 1")
        for name in ("base_delay_s", "max_delay_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ArkerError(
                    ErrorCode.INVALID_REQUEST, f"retry {name} must be a finite number >= 0"
                )

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | bool | None) -> RetryPolicy:
        """A policy from what a client accepts: a policy, a dict of its fields,
        True/None (the default) or False (one try, no retries)."""
        if isinstance(value, RetryPolicy):
            return value
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(attempts=1)
        if isinstance(value, Mapping):
            unknown = set(value) - {"attempts", "base_delay_s", "max_delay_s"}
            if unknown:
                raise ArkerError(
                    ErrorCode.INVALID_REQUEST, f"unknown retry settings: {sorted(unknown)}"
                )
            return cls(**value)
        raise ArkerError(ErrorCode.INVALID_REQUEST, "retry must be a RetryPolicy, a dict or a bool")

    def backoff_s(self, attempt: int, rand: float) -> float:
        """The jittered wait after failed try number `attempt` (rand in [0, 1))."""
        nominal = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return nominal * (1 - 0.25 * rand)

    def delay_after(
        self,
        attempt: int,
        outcome: httpx.Response | Exception,
        *,
        rand: Callable[[], float] = random.random,
        now: datetime | None = None,
    ) -> float | None:
        """The wait before the next try after try number `attempt` ended in
        `outcome` (an error response or a transport exception); None to give up."""
        if attempt >= self.attempts:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in RETRYABLE_STATUSES or _is_quota(outcome):
                return None
            hinted = retry_after_s(outcome.headers.get("Retry-After"), now=now)
            if hinted is not None:
                return hinted
        elif not isinstance(outcome, _RETRYABLE_ERRORS):
            return None
        return self.backoff_s(attempt, rand())


def _is_quota(response: httpx.Response) -> bool:
    """A 429 `quota_exceeded` is a limit, not a moment's load: retrying it
    would only wait for the same answer."""
    if response.status_code != 429:
        return False
    try:
        body = response.json()
    except (httpx.ResponseNotRead, ValueError):
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == "quota_exceeded"


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a Retry-After header, clipped to [0, RETRY_AFTER_CAP_S];
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)
