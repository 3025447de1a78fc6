# GENERATED from tests/client/test_async_api.py by scripts/unasync. Do not edit.
# Imports keep the order of the async file (time stands where anyio stood).
# ruff: noqa: I001
"""Client calls over a scripted server. The sync tests are generated from the
async ones by scripts/unasync, so both clients pass the same tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from client_fakes import (
    BURST,
    BURST_VM_ID,
    KEY,
    NORMAL,
    REGION,
    VM_ID,
    FakeServer,
    b64,
    body,
    completed,
    error,
    ok,
    output,
    status,
    vm,
    written,
)

from arker import (
    ArkerError,
    Arker,
    Computer,
    CompletedRun,
    ErrorCode,
    RunStatus,
    StartedRun,
)
from arker.errors import STATUS_BY_CODE


def make(server: FakeServer, sleeps: list[float], **options: object) -> Arker:
    options.setdefault("region", REGION)
    http = httpx.Client(transport=server.transport())
    client = Arker(api_key=KEY, http_client=http, **options)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = sleep
    return client


@pytest.fixture
def arker(server: FakeServer, sleeps: list[float]) -> Iterator[Arker]:
    client = make(server, sleeps)
    yield client
    client._http.close()


# Routing


def test_normal_golden_forks_on_the_region_host(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(ok(vm(name="hello"), 201), ok(completed(b"hi\n")))
    child = arker.vm("debian").fork(name="hello")
    assert server.last.method == "POST"
    assert str(server.last.url) == f"{NORMAL}/v1/vms/debian/fork"
    assert body(server.last) == {"name": "hello", "durable": False}
    assert server.last.headers["Authorization"] == f"Bearer {KEY}"
    assert child.vm_id == VM_ID and child.info is not None and child.info.name == "hello"
    child.run("echo hi")
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs"


def test_arkuntu_forks_on_burst_and_the_child_stays_pinned(
    arker: Arker, server: FakeServer
) -> None:
    # The child's id has no burst suffix: only pinning keeps it on the burst host.
    server.reply(ok(vm(base_image="arkuntu"), 201), ok(completed()))
    child = arker.vm("arkuntu").fork()
    assert str(server.last.url) == f"{BURST}/v1/vms/arkuntu/fork"
    assert child.endpoint == BURST
    child.run("true")
    assert str(server.last.url) == f"{BURST}/v1/vms/{VM_ID}/runs"
    assert arker.vm(VM_ID).endpoint == NORMAL  # an unpinned handle routes by id


def test_burst_vm_id_routes_to_burst(arker: Arker, server: FakeServer) -> None:
    server.reply(ok(vm(BURST_VM_ID)))
    got = arker.get(BURST_VM_ID)
    assert got.vm_id == BURST_VM_ID
    assert str(server.last.url) == f"{BURST}/v1/vms/{BURST_VM_ID}"


def test_base_url_keeps_its_prefix_and_takes_burst_traffic(
    server: FakeServer, sleeps: list[float]
) -> None:
    client = make(server, sleeps, region=None, base_url="http://localhost:8740/api/")
    server.reply(ok({"items": []}), ok(vm(), 201))
    client.goldens()
    client.vm("arkuntu").fork()
    assert server.urls() == [
        "http://localhost:8740/api/v1/goldens",
        "http://localhost:8740/api/v1/vms/arkuntu/fork",
    ]


def test_burst_base_url_overrides_the_burst_host(
    server: FakeServer, sleeps: list[float]
) -> None:
    client = make(server, sleeps, burst_base_url="http://burst.test/x/")
    server.reply(ok(vm(BURST_VM_ID)))
    client.get(BURST_VM_ID)
    client.get(VM_ID)
    assert server.urls() == [
        f"http://burst.test/x/v1/vms/{BURST_VM_ID}",
        f"{NORMAL}/v1/vms/{VM_ID}",
    ]


def test_vm_sends_no_request(arker: Arker, server: FakeServer) -> None:
    handle = arker.vm(VM_ID)
    assert isinstance(handle, Computer) and handle.vm_id == VM_ID and handle.info is None
    assert server.requests == []


# Calls and decoding


def test_goldens_list_and_get(arker: Arker, server: FakeServer) -> None:
    golden = {"name": "debian", "description": "bookworm", "created_at": "2026-11-28T18:00:00Z"}
    server.reply(ok({"items": [golden]}), ok({"items": [vm(), vm("01KQH2ADR3DCAJF06N4R453WPK")],
                                              "total": 7}), ok(vm(state="stopped")))
    assert [g.name for g in arker.goldens()] == ["debian"]
    page = arker.list(limit=2, offset=4)
    assert server.last.url.params["limit"] == "2" and server.last.url.params["offset"] == "4"
    assert page.total == 7 and [v.vm_id for v in page.items][1].endswith("PK")
    assert (arker.get(VM_ID)).state == "stopped"


def test_run_sends_every_option_and_decodes_bytes(
    arker: Arker, server: FakeServer
) -> None:
    raw = bytes(range(256))
    server.reply(ok(completed(raw, b"warn\n", exit_code=3)))
    result = arker.vm(VM_ID).run(
        "cat",
        timeout_s=5,
        env={"A": "1"},
        cwd="/home/user/w",
        stdin="héllo",
        user="root",
        idempotency_key="my-key-1",
    )
    assert body(server.last) == {
        "command": "cat",
        "background": False,
        "timeout_s": 5.0,
        "env": {"A": "1"},
        "cwd": "/home/user/w",
        "stdin": b64("héllo".encode()),
        "user": "root",
    }
    assert server.last.headers["Idempotency-Key"] == "my-key-1"
    assert isinstance(result, CompletedRun)
    if result.type == "completed":  # narrows for the type checker too
        assert result.exit_code == 3
    assert result.stdout == raw and result.stderr == b"warn\n" and result.stderr_text == "warn\n"


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (ok(output("timed_out", b"partial", timeout_s=1.5)), "timed_out"),
        (ok(output("cancelled", stderr=b"bye")), "cancelled"),
        (ok({"type": "started", "run_id": "run9"}, 202), "started"),
    ],
)
def test_run_result_variants(
    arker: Arker, server: FakeServer, reply: httpx.Response, kind: str
) -> None:
    server.reply(reply)
    result = arker.vm(VM_ID).run("sleep 9", background=kind == "started")
    assert result.type == kind
    if result.type == "timed_out":
        assert result.stdout == b"partial" and result.timeout_s == 1.5
    elif result.type == "cancelled":
        assert result.stderr == b"bye"
    else:
        assert isinstance(result, StartedRun) and result.run_id == "run9"


def test_run_status_and_cancel_decode_output(arker: Arker, server: FakeServer) -> None:
    server.reply(ok(status(stdout=b"\x00\xffso far", retry_count=2)),
                 ok(status("cancelled", exit_code=137)))
    computer = arker.vm(VM_ID)
    got = computer.run_status("run1")
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs/run1"
    assert isinstance(got, RunStatus) and got.stdout == b"\x00\xffso far"
    assert got.retry_count == 2 and not got.done
    cancelled = computer.cancel_run("run1")
    assert server.last.method == "POST"
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs/run1/cancel"
    assert "Idempotency-Key" in server.last.headers
    assert cancelled.state == "cancelled" and cancelled.exit_code == 137 and cancelled.done


def test_delete_and_refresh(arker: Arker, server: FakeServer) -> None:
    server.reply(ok(vm(name="fresh")), httpx.Response(204))
    computer = arker.vm(VM_ID)
    got = computer.get()
    assert got.name == "fresh" and computer.info == got
    assert computer.delete() is None
    assert server.last.method == "DELETE" and str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}"
    assert "Idempotency-Key" in server.last.headers


def test_read_and_write_files(arker: Arker, server: FakeServer) -> None:
    server.reply(httpx.Response(200, content=b"\x00\x01data"), ok(written("/home/user/a.txt", 6)))
    files = arker.vm(VM_ID).sync
    assert files.read_file("/home/user/./a.txt") == b"\x00\x01data"
    assert server.last.url.params["path"] == "/home/user/a.txt"
    info = files.write_file("/home/user/a.txt", "héllo")
    assert server.last.method == "PUT" and server.last.content == "héllo".encode()
    assert server.last.headers["Content-Type"] == "application/octet-stream"
    assert "Upload-Id" in server.last.headers and "Idempotency-Key" in server.last.headers
    assert info.size == 6 and info.path == "/home/user/a.txt"


@pytest.mark.parametrize("path", ["rel.txt", "/etc/passwd", "/home/user/../root", "/home/user"])
def test_bad_paths_fail_before_any_request(
    arker: Arker, server: FakeServer, path: str
) -> None:
    files = arker.vm(VM_ID).sync
    with pytest.raises(ArkerError) as read:
        files.read_file(path)
    with pytest.raises(ArkerError) as write:
        files.write_file(path, b"x")
    assert read.value.code == write.value.code == ErrorCode.INVALID_PATH
    assert server.requests == []


# Retries


def test_retries_a_503_then_succeeds_with_bounded_waits(
    arker: Arker, server: FakeServer, sleeps: list[float]
) -> None:
    server.reply(error(503, "unavailable"), error(503, "unavailable"), ok(vm()))
    assert (arker.get(VM_ID)).vm_id == VM_ID
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert all(0 < s <= arker.retry.max_delay_s for s in sleeps)


def test_gives_up_after_the_attempts(
    arker: Arker, server: FakeServer, sleeps: list[float]
) -> None:
    server.reply(error(502, "unavailable", "bad gateway"))
    with pytest.raises(ArkerError) as caught:
        arker.goldens()
    assert len(server.requests) == arker.retry.attempts == 4 and len(sleeps) == 3
    assert caught.value.status == 502 and caught.value.code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(("retry", "tries"), [(False, 1), ({"attempts": 2}, 2)])
def test_retry_setting(
    server: FakeServer, sleeps: list[float], retry: object, tries: int
) -> None:
    client = make(server, sleeps, retry=retry)
    server.reply(error(504, "unavailable"))
    with pytest.raises(ArkerError):
        client.get(VM_ID)
    assert len(server.requests) == tries


def test_retry_after_is_honoured(
    arker: Arker, server: FakeServer, sleeps: list[float]
) -> None:
    server.reply(error(429, "rate_limited", headers={"Retry-After": "1.5"}), ok({"items": []}))
    arker.goldens()
    assert sleeps == [1.5]


def test_one_idempotency_key_across_attempts_of_a_run(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(error(503, "unavailable"), httpx.ConnectError("reset"), ok(completed()))
    arker.vm(VM_ID).run("make")
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1
    uuid.UUID(keys.pop())  # the SDK's own key is a uuid
    server.reply(ok(completed()))
    arker.vm(VM_ID).run("make")
    assert server.requests[-1].headers["Idempotency-Key"] not in keys  # a new call, a new key


def test_one_upload_id_across_attempts_of_a_write(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(error(502, "unavailable"), httpx.ReadTimeout("slow"), ok(written()))
    arker.vm(VM_ID).sync.write_file("/home/user/a.txt", b"abc")
    assert len(server.requests) == 3
    assert len({r.headers["Upload-Id"] for r in server.requests}) == 1
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1
    assert {r.content for r in server.requests} == {b"abc"}


def test_fork_keeps_the_callers_key_across_attempts(
    arker: Arker, server: FakeServer
) -> None:
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


def test_no_retry_after_a_non_retryable_status(
    arker: Arker, server: FakeServer
) -> None:
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
    server.reply(error(402, "quota_exceeded", "pay up"))
    with pytest.raises(ArkerError) as caught:
        arker.get(VM_ID)
    assert caught.value.code == "quota_exceeded" and not isinstance(caught.value.code, ErrorCode)
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


def test_fields_from_a_newer_server_are_ignored(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(ok({**vm(), "gpu": "h100"}))
    assert (arker.get(VM_ID)).vm_id == VM_ID


@pytest.mark.parametrize(
    ("exc", "code"),
    [(httpx.ConnectError("refused"), ErrorCode.CONNECTION_ERROR),
     (httpx.ReadTimeout("slow"), ErrorCode.TIMEOUT)],
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


# Context managers


def test_client_closes_only_what_it_owns() -> None:
    with Arker(api_key=KEY, region=REGION) as owned:
        assert not owned._http.is_closed
    assert owned._http.is_closed
    http = httpx.Client()
    with Arker(api_key=KEY, region=REGION, http_client=http):
        pass
    assert not http.is_closed
    http.close()


def test_computer_deletes_its_vm_on_exit(arker: Arker, server: FakeServer) -> None:
    server.reply(ok(vm(), 201), ok(completed(b"x")), httpx.Response(204))
    with arker.vm("debian").fork() as computer:
        computer.run("echo x")
    assert [r.method for r in server.requests] == ["POST", "POST", "DELETE"]
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}"


def test_computer_exit_tolerates_an_already_deleted_vm(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(httpx.Response(204), error(404, "not_found"))
    with arker.vm(VM_ID) as computer:
        computer.delete()
    assert [r.method for r in server.requests] == ["DELETE", "DELETE"]


def test_computer_exit_raises_other_delete_errors(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(error(409, "conflict", "busy"))

    def use() -> None:
        with arker.vm(VM_ID):
            pass

    with pytest.raises(ArkerError) as caught:
        use()
    assert caught.value.code is ErrorCode.CONFLICT


# Checked before sending


@pytest.mark.parametrize(
    "call",
    ["fork_name", "fork_key", "run_empty", "run_env", "run_timeout", "list_limit", "vm_id"],
)
def test_bad_arguments_fail_before_any_request(
    arker: Arker, server: FakeServer, call: str
) -> None:
    computer = arker.vm(VM_ID)
    with pytest.raises(ArkerError) as caught:
        if call == "fork_name":
            computer.fork(name="no spaces allowed")
        elif call == "fork_key":
            computer.fork(idempotency_key="not ascii é")
        elif call == "run_empty":
            computer.run("")
        elif call == "run_env":
            computer.run("env", env={"1BAD": "x"})
        elif call == "run_timeout":
            computer.run("sleep 1", timeout_s=0)
        elif call == "list_limit":
            arker.list(limit=0)
        else:
            arker.vm("")
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert server.requests == []


def test_foreground_run_gets_a_longer_http_timeout(
    arker: Arker, server: FakeServer
) -> None:
    server.reply(ok(completed()))
    arker.vm(VM_ID).run("sleep 100", timeout_s=100)
    assert server.last.extensions["timeout"]["read"] == 130.0
    arker.vm(VM_ID).run("sleep 100", timeout_s=100, background=True)
    assert server.last.extensions["timeout"]["read"] == arker.timeout_s == 60.0
