"""Retry decisions and waits, without a client."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from arker import ArkerError, ErrorCode, RetryPolicy
from arker.client._retry import RETRY_AFTER_CAP_S, retry_after_s

NOW = datetime(2026, 11, 28, 18, 0, 0, tzinfo=UTC)


def response(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return httpx.Response(status, headers=headers)


def test_defaults_and_coercion() -> None:
    assert RetryPolicy() == RetryPolicy(attempts=4, base_delay_s=0.2, max_delay_s=2.0)
    assert RetryPolicy.coerce(False).attempts == 1
    assert RetryPolicy.coerce(None) == RetryPolicy.coerce(True) == RetryPolicy()
    assert RetryPolicy.coerce({"attempts": 2, "max_delay_s": 1}) == RetryPolicy(2, 0.2, 1)


@pytest.mark.parametrize(
    "value", [{"attempts": 0}, {"tries": 3}, {"base_delay_s": -1}, {"attempts": 1.5}, "yes"]
)
def test_bad_policies_are_refused(value: object) -> None:
    with pytest.raises(ArkerError) as caught:
        RetryPolicy.coerce(value)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_backoff_doubles_and_is_bounded() -> None:
    policy = RetryPolicy(attempts=10, base_delay_s=0.2, max_delay_s=2.0)
    assert [policy.backoff_s(n, 0.0) for n in range(1, 6)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 2.0]
    )
    for n in range(1, 12):
        for rand in (0.0, 0.5, 0.999):
            assert 0.75 * min(2.0, 0.2 * 2 ** (n - 1)) <= policy.backoff_s(n, rand) <= 2.0


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert RetryPolicy().delay_after(1, response(status), rand=lambda: 0.0) == pytest.approx(0.2)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 410, 413, 422, 500, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert RetryPolicy().delay_after(1, response(status)) is None


def test_last_attempt_is_not_retried() -> None:
    policy = RetryPolicy(attempts=3)
    assert policy.delay_after(2, response(503)) is not None
    assert policy.delay_after(3, response(503)) is None
    assert RetryPolicy.coerce(False).delay_after(1, response(503)) is None


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("eof"), True),
        (httpx.UnsupportedProtocol("gopher"), False),
        (httpx.LocalProtocolError("bad header"), False),
    ],
)
def test_transport_errors(exc: Exception, retried: bool) -> None:
    assert (RetryPolicy().delay_after(1, exc) is not None) is retried


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        (" 0.5 ", 0.5),
        ("-3", 0.0),
        ("3600", RETRY_AFTER_CAP_S),
        ("Sat, 28 Nov 2026 18:00:04 GMT", 4.0),
        ("Sat, 28 Nov 2026 17:59:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_s(header, now=NOW) == seconds


def test_retry_after_beats_backoff_but_not_the_attempt_limit() -> None:
    policy = RetryPolicy(attempts=2, max_delay_s=0.1)
    assert policy.delay_after(1, response(429, "7"), now=NOW) == 7.0
    assert policy.delay_after(2, response(429, "7"), now=NOW) is None
    assert policy.delay_after(1, response(404, "7"), now=NOW) is None


def test_quota_exceeded_is_not_retried() -> None:
    import httpx

    from arker.client._retry import RetryPolicy

    policy = RetryPolicy(attempts=4)
    quota = httpx.Response(429, json={"error": {"code": "quota_exceeded", "message": "full"}})
    busy = httpx.Response(429, json={"error": {"code": "rate_limited", "message": "slow down"}})
    assert policy.delay_after(1, quota) is None
    assert policy.delay_after(1, busy) is not None
