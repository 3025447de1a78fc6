# GENERATED from tests/client/test_async_failures.py by scripts/unasync. Do not edit.
# Imports keep the order of the async file (time stands where anyio stood).
# ruff: noqa: I001
"""Retries and errors over a scripted server. The sync tests are generated from
the async ones by scripts/unasync, so both clients pass the same tests."""

from __future__ import annotations

import uuid

import httpx
import pytest
from client_fakes import (
    VM_ID,
    FakeServer,
    build_client,
    completed,
    error,
    ok,
    vm,
    written,
)

from arker import (
    ArkerError,
    Arker,
    ErrorCode,
)
from arker.errors import STATUS_BY_CODE


def make(server: FakeServer, sleeps: list[float], **options: object) -> Arker:
    return build_client(Arker, server, sleeps, **options)


@pytest.fixture
def arker(server: FakeServer, sleeps: list[float]) -> Arker:
    return make(server, sleeps)


# Retries


def test_retries_a_503_then_succeeds_with_bounded_waits(
    arker: Arker, server: FakeServer, sleeps: list[float]
) -> None:
    server.reply(error(503, "unavailable"), error(503, "unavailable"), ok(vm()))
    assert (arker.get(VM_ID)).vm_id == VM_ID
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert all(0 < s <= arker.retry.max_delay_s for s in sleeps)


def test_gives_up_after_the_attempts(arker: Arker, server: FakeServer, sleeps: list[float]) -> None:
    server.reply(error(502, "unavailable", "bad gateway"))
    with pytest.raises(ArkerError) as caught:
        arker.goldens()
    assert len(server.requests) == arker.retry.attempts == 4 and len(sleeps) == 3
    assert caught.value.status == 502 and caught.value.code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(("retry", "tries"), [(False, 1), ({"attempts": 2}, 2)])
def test_retry_setting(server: FakeServer, sleeps: list[float], retry: object, tries: int) -> None:
    client = make(server, sleeps, retry=retry)
    server.reply(error(504, "unavailable"))
    with pytest.raises(ArkerError):
        client.get(VM_ID)
    assert len(server.requests) == tries


def test_retry_after_is_honoured(arker: Arker, server: FakeServer, sleeps: list[float]) -> None:
    server.reply(error(429, "rate_limited", headers={"Retry-After": "1.5"}), ok({"items": []}))
    arker.goldens()
    assert sleeps == [1.5]


def test_a_connection_error_waits_before_the_next_try(
    arker: Arker, server: FakeServer, sleeps: list[float]
) -> None:
    # A server restarting refuses connections for seconds: each retry waits.
    server.reply(httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok(completed()))
    arker.vm(VM_ID).run("make")
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert all(0 < s <= arker.retry.max_delay_s for s in sleeps)


def test_one_idempotency_key_across_attempts_of_a_run(arker: Arker, server: FakeServer) -> None:
    server.reply(error(503, "unavailable"), httpx.ConnectError("reset"), ok(completed()))
    arker.vm(VM_ID).run("make")
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1
    uuid.UUID(keys.pop())  # the SDK's own key is a uuid
    server.reply(ok(completed()))
    arker.vm(VM_ID).run("make")
    assert server.requests[-1].headers["Idempotency-Key"] not in keys  # a new call, a new key


def test_one_upload_id_across_attempts_of_a_write(arker: Arker, server: FakeServer) -> None:
    server.reply(error(502, "unavailable"), httpx.ReadTimeout("slow"), ok(written()))
    arker.vm(VM_ID).sync.write_file("/home/user/a.txt", b"abc")
    assert len(server.requests) == 3
    assert len({r.headers["Upload-Id"] for r in server.requests}) == 1
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1
    assert {r.content for r in server.requests} == {b"abc"}


def test_fork_keeps_the_callers_key_across_attempts(arker: Arker, server: FakeServer) -> None:
    server.reply(error(408, "timeout"), ok(vm(), 201))
    arker.vm("debian").fork(idempotency_key="fork-1")
    assert [r.headers["Idempotency-Key"] for r in server.requests] == ["fork-1", "fork-1"]


@pytest.mark.parametrize("code", ["invalid_request", "not_found", "conflict", "internal"])
def test_no_retry_of_other_statuses(
    arker: Arker, server: FakeServer, sleeps: list[float], code: str
) -> None:
    server.reply(error(STATUS_BY_CODE[ErrorCode(code)], code))
    with pytest.raises(ArkerError) as caught:
        arker.vm(VM_ID).run("x")
    assert caught.value.code == code and len(server.requests) == 1 and sleeps == []


def test_no_retry_after_a_non_retryable_status(arker: Arker, server: FakeServer) -> None:
    server.reply(error(503, "unavailable"), error(404, "not_found", "no such VM"), ok(vm()))
    with pytest.raises(ArkerError) as caught:
        arker.get(VM_ID)
    assert caught.value.code == ErrorCode.NOT_FOUND and caught.value.message == "no such VM"
    assert len(server.requests) == 2


# Errors


@pytest.mark.parametrize("code", list(STATUS_BY_CODE), ids=str)
def test_every_error_code_is_rebuilt(
    server: FakeServer, sleeps: list[float], code: ErrorCode
) -> None:
    client = make(server, sleeps, retry=False)
    server.reply(error(STATUS_BY_CODE[code], code.value, f"{code} happened", details={"k": 1}))
    with pytest.raises(ArkerError) as caught:
        client.vm(VM_ID).run("x")
    assert caught.value.code is code
    assert caught.value.status == STATUS_BY_CODE[code]
    assert caught.value.message == f"{code} happened" and caught.value.details == {"k": 1}


def test_unknown_code_stays_a_string(arker: Arker, server: FakeServer) -> None:
    server.reply(error(402, "payment_required", "pay up"))
    with pytest.raises(ArkerError) as caught:
        arker.get(VM_ID)
    assert caught.value.code == "payment_required" and not isinstance(caught.value.code, ErrorCode)
    assert caught.value.status == 402


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (httpx.Response(502, text="<html>Bad Gateway</html>"), ErrorCode.UNAVAILABLE),
        (httpx.Response(418, text="teapot"), ErrorCode.INVALID_RESPONSE),
        (httpx.Response(404, json={"detail": "Not Found"}), ErrorCode.NOT_FOUND),
    ],
)
def test_error_without_an_arker_body(
    server: FakeServer, sleeps: list[float], reply: httpx.Response, code: ErrorCode
) -> None:
    client = make(server, sleeps, retry=False)
    server.reply(reply)
    with pytest.raises(ArkerError) as caught:
        client.get(VM_ID)
    assert caught.value.code is code and caught.value.status == reply.status_code


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (httpx.Response(200, text="not json"), "not JSON"),
        (ok({**completed(), "exit_code": "three"}), "breaks the contract"),
        (ok({**completed(), "stdout": "%%%"}), "not base64"),
        (ok({**completed(), "type": "exploded"}), "unknown type"),
    ],
)
def test_bad_success_bodies_are_invalid_response(
    arker: Arker, server: FakeServer, reply: httpx.Response, words: str
) -> None:
    server.reply(reply)
    with pytest.raises(ArkerError) as caught:
        arker.vm(VM_ID).run("x")
    assert caught.value.code is ErrorCode.INVALID_RESPONSE and words in caught.value.message
    assert len(server.requests) == 1


def test_fields_from_a_newer_server_are_ignored(arker: Arker, server: FakeServer) -> None:
    server.reply(ok({**vm(), "gpu": "h100"}))
    assert (arker.get(VM_ID)).vm_id == VM_ID


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), ErrorCode.CONNECTION_ERROR),
        (httpx.ReadTimeout("slow"), ErrorCode.TIMEOUT),
    ],
)
def test_transport_errors(
    arker: Arker, server: FakeServer, exc: Exception, code: ErrorCode
) -> None:
    server.reply(exc)
    with pytest.raises(ArkerError) as caught:
        arker.goldens()
    assert caught.value.code is code and caught.value.status == 0
    assert caught.value.__cause__ is exc
    assert len(server.requests) == 4  # retried, then given up
