"""Client calls over a scripted server. The sync tests are generated from the
async ones by scripts/unasync, so both clients pass the same tests."""

from __future__ import annotations

from pathlib import Path

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
    build_client,
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
    AsyncArker,
    AsyncComputer,
    CompletedRun,
    ErrorCode,
    PortToken,
    RunStatus,
    StartedRun,
)


def make(server: FakeServer, sleeps: list[float], **options: object) -> AsyncArker:
    return build_client(AsyncArker, server, sleeps, **options)


@pytest.fixture
def arker(server: FakeServer, sleeps: list[float]) -> AsyncArker:
    return make(server, sleeps)


# Routing


async def test_fork_sends_resources_only_when_set(arker: AsyncArker, server: FakeServer) -> None:
    from arker._types import Resources

    server.reply(ok(vm(), 201), ok(vm(), 201), ok(vm(), 201))
    await arker.vm("debian").fork(resources={"disk_mib": 512})
    assert body(server.last) == {"durable": False, "resources": {"disk_mib": 512}}
    await arker.vm("debian").fork(resources=Resources(disk_mib=64))
    assert body(server.last) == {"durable": False, "resources": {"disk_mib": 64}}
    await arker.vm("debian").fork()
    assert "resources" not in body(server.last)


async def test_fork_sizes_are_resources_and_win_over_them(
    arker: AsyncArker, server: FakeServer
) -> None:
    server.reply(ok(vm(), 201), ok(vm(), 201))
    await arker.vm("debian").fork(cpu=2, memory_mib=2048)
    assert body(server.last)["resources"] == {"cpu": 2, "memory_mib": 2048}
    await arker.vm("debian").fork(resources={"disk_mib": 64, "cpu": 1}, cpu=0.5, pids=100)
    assert body(server.last)["resources"] == {"disk_mib": 64, "cpu": 0.5, "pids": 100}


async def test_normal_golden_forks_on_the_region_host(
    arker: AsyncArker, server: FakeServer
) -> None:
    server.reply(ok(vm(name="hello"), 201), ok(completed(b"hi\n")))
    child = await arker.vm("debian").fork(name="hello")
    assert server.last.method == "POST"
    assert str(server.last.url) == f"{NORMAL}/v1/vms/debian/fork"
    assert body(server.last) == {"name": "hello", "durable": False}
    assert server.last.headers["Authorization"] == f"Bearer {KEY}"
    assert child.vm_id == VM_ID and child.info is not None and child.info.name == "hello"
    await child.run("echo hi")
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs"


async def test_arkuntu_forks_on_burst_and_the_child_stays_pinned(
    arker: AsyncArker, server: FakeServer
) -> None:
    # The child's id has no burst suffix: only pinning keeps it on the burst host.
    server.reply(ok(vm(base_image="arkuntu"), 201), ok(completed()))
    child = await arker.vm("arkuntu").fork()
    assert str(server.last.url) == f"{BURST}/v1/vms/arkuntu/fork"
    assert child.endpoint == BURST
    await child.run("true")
    assert str(server.last.url) == f"{BURST}/v1/vms/{VM_ID}/runs"
    assert arker.vm(VM_ID).endpoint == NORMAL  # an unpinned handle routes by id


async def test_burst_vm_id_routes_to_burst(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(ok(vm(BURST_VM_ID)))
    got = await arker.get(BURST_VM_ID)
    assert got.vm_id == BURST_VM_ID
    assert str(server.last.url) == f"{BURST}/v1/vms/{BURST_VM_ID}"


async def test_base_url_keeps_its_prefix_and_takes_burst_traffic(
    server: FakeServer, sleeps: list[float]
) -> None:
    client = make(server, sleeps, region=None, base_url="http://localhost:8740/api/")
    server.reply(ok({"items": []}), ok(vm(), 201))
    await client.goldens()
    await client.vm("arkuntu").fork()
    assert server.urls() == [
        "http://localhost:8740/api/v1/goldens",
        "http://localhost:8740/api/v1/vms/arkuntu/fork",
    ]


async def test_burst_base_url_overrides_the_burst_host(
    server: FakeServer, sleeps: list[float]
) -> None:
    client = make(server, sleeps, burst_base_url="http://burst.test/x/")
    server.reply(ok(vm(BURST_VM_ID)))
    await client.get(BURST_VM_ID)
    await client.get(VM_ID)
    assert server.urls() == [
        f"http://burst.test/x/v1/vms/{BURST_VM_ID}",
        f"{NORMAL}/v1/vms/{VM_ID}",
    ]


def test_vm_sends_no_request(arker: AsyncArker, server: FakeServer) -> None:
    handle = arker.vm(VM_ID)
    assert isinstance(handle, AsyncComputer) and handle.vm_id == VM_ID and handle.info is None
    assert server.requests == []


# Calls and decoding


async def test_goldens_list_and_get(arker: AsyncArker, server: FakeServer) -> None:
    golden = {"name": "debian", "description": "bookworm", "created_at": "2026-11-28T18:00:00Z"}
    server.reply(
        ok({"items": [golden]}),
        ok({"items": [vm(), vm("01KQH2ADR3DCAJF06N4R453WPK")], "total": 7}),
        ok(vm(state="stopped")),
    )
    assert [g.name for g in await arker.goldens()] == ["debian"]
    page = await arker.list(limit=2, offset=4)
    assert server.last.url.params["limit"] == "2" and server.last.url.params["offset"] == "4"
    assert page.total == 7 and [v.vm_id for v in page.items][1].endswith("PK")
    assert (await arker.get(VM_ID)).state == "stopped"


def _operation(state: str, **fields: object) -> dict[str, object]:
    at = "2026-12-04T19:00:00Z"
    return {
        "operation_id": "op_1",
        "kind": "import_golden",
        "state": state,
        "progress": {"done": 1, "total": 2, "message": "reading"},
        "golden": None,
        "error": None,
        "created_at": at,
        "updated_at": at,
        **fields,
    }


async def test_publish_and_delete_golden(arker: AsyncArker, server: FakeServer) -> None:
    golden = {"name": "tools", "description": None, "created_at": "2026-12-04T19:00:00Z"}
    server.reply(ok({**golden, "scope": "org"}, 201), ok(golden, 201), ok(None, 204))
    made = await arker.publish_golden("tools", VM_ID)
    assert made.name == "tools" and made.scope == "org"
    assert str(server.last.url) == f"{NORMAL}/v1/goldens"
    assert body(server.last) == {"name": "tools", "from_vm": VM_ID}  # for_all only when set
    await arker.publish_golden("tools", VM_ID, description="d", for_all=True)
    assert body(server.last) == {
        "name": "tools",
        "from_vm": VM_ID,
        "description": "d",
        "for_all": True,
    }
    await arker.delete_golden("tools")
    assert server.last.method == "DELETE" and str(server.last.url) == f"{NORMAL}/v1/goldens/tools"


async def test_import_golden_streams_the_file_and_waits(
    arker: AsyncArker, server: FakeServer, sleeps: list[float], tmp_path: Path
) -> None:
    tarball = tmp_path / "root.tar"
    data = bytes(range(256)) * 5000  # over one piece
    tarball.write_bytes(data)
    golden = {"name": "img", "description": None, "created_at": "2026-12-04T19:00:00Z"}
    server.reply(
        ok(_operation("running"), 202),
        ok(_operation("running")),
        ok(_operation("succeeded", golden=golden)),
    )
    op = await arker.import_golden("img", tarball, description="mine")
    put = server.requests[0]
    assert put.method == "PUT" and put.url.path == "/v1/goldens/img"
    assert put.url.params["description"] == "mine" and "for_all" not in put.url.params
    assert put.content == data and put.headers["Content-Length"] == str(len(data))
    assert op.state == "succeeded" and op.golden is not None and op.golden.name == "img"
    assert str(server.last.url) == f"{NORMAL}/v1/operations/op_1"
    assert sleeps  # it polled


async def test_a_failed_operation_raises_its_error(arker: AsyncArker, server: FakeServer) -> None:
    failed = _operation(
        "failed",
        error={"code": "invalid_request", "message": "no /bin/sh", "status": 400},
    )
    server.reply(ok(failed))
    with pytest.raises(ArkerError) as err:
        await arker.wait_operation("op_1")
    assert err.value.code == ErrorCode.INVALID_REQUEST and err.value.status == 400
    assert "/bin/sh" in err.value.message
    server.replies.clear()
    server.reply(ok(_operation("running", kind="build_golden_later")))  # a kind not known yet
    with pytest.raises(ArkerError) as err:
        await arker.wait_operation("op_1", timeout_s=0)
    assert err.value.code == ErrorCode.TIMEOUT


async def test_run_sends_every_option_and_decodes_bytes(
    arker: AsyncArker, server: FakeServer
) -> None:
    raw = bytes(range(256))
    server.reply(ok(completed(raw, b"warn\n", exit_code=3)))
    result = await arker.vm(VM_ID).run(
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
        (ok(output("failed", b"half", failure_reason="server restarted")), "failed"),
        (ok({"type": "started", "run_id": "run9"}, 202), "started"),
    ],
)
async def test_run_result_variants(
    arker: AsyncArker, server: FakeServer, reply: httpx.Response, kind: str
) -> None:
    server.reply(reply)
    result = await arker.vm(VM_ID).run("sleep 9", background=kind == "started")
    assert result.type == kind
    if result.type == "timed_out":
        assert result.stdout == b"partial" and result.timeout_s == 1.5
    elif result.type == "cancelled":
        assert result.stderr == b"bye"
    elif result.type == "failed":
        assert result.stdout == b"half" and result.failure_reason == "server restarted"
    else:
        assert isinstance(result, StartedRun) and result.run_id == "run9"


async def test_run_status_and_cancel_decode_output(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(
        ok(status(stdout=b"\x00\xffso far", retry_count=2)), ok(status("cancelled", exit_code=137))
    )
    computer = arker.vm(VM_ID)
    got = await computer.run_status("run1")
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs/run1"
    assert isinstance(got, RunStatus) and got.stdout == b"\x00\xffso far"
    assert got.retry_count == 2 and not got.done
    cancelled = await computer.cancel_run("run1")
    assert server.last.method == "POST"
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/runs/run1/cancel"
    assert "Idempotency-Key" in server.last.headers
    assert cancelled.state == "cancelled" and cancelled.exit_code == 137 and cancelled.done


async def test_delete_and_refresh(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(ok(vm(name="fresh")), httpx.Response(204))
    computer = arker.vm(VM_ID)
    got = await computer.get()
    assert got.name == "fresh" and computer.info == got
    assert await computer.delete() is None
    assert server.last.method == "DELETE" and str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}"
    assert "Idempotency-Key" in server.last.headers


async def test_restart(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(ok(vm(name="again")))
    computer = arker.vm(VM_ID)
    got = await computer.restart()
    assert server.last.method == "POST"
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/restart"
    assert "Idempotency-Key" in server.last.headers
    assert got.name == "again" and computer.info == got


def test_port_url_sends_no_request(arker: AsyncArker, server: FakeServer) -> None:
    assert arker.vm(VM_ID).port_url(8000) == f"{NORMAL}/v1/vms/{VM_ID}/ports/8000/"
    assert arker.vm(BURST_VM_ID).port_url(1).startswith(f"{BURST}/v1/vms/{BURST_VM_ID}/")
    for bad in (0, 65536, "80", True):
        with pytest.raises(ArkerError) as caught:
            arker.vm(VM_ID).port_url(bad)  # type: ignore[arg-type]
        assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert server.requests == []


async def test_port_token_sends_ttl_only_when_set(arker: AsyncArker, server: FakeServer) -> None:
    url = f"{NORMAL}/v1/vms/{VM_ID}/ports/8000/?arker_token=t.s"
    answer = {"url": url, "expires_at": "2026-12-03T10:00:00Z"}
    server.reply(ok(answer), ok(answer))
    token = await arker.vm(VM_ID).port_token(8000)
    assert isinstance(token, PortToken)
    assert token.url == url and token.expires_at.year == 2026
    assert server.last.method == "POST" and server.last.content == b""
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}/ports/8000/token"
    await arker.vm(VM_ID).port_token(8000, ttl_s=60)
    assert body(server.last) == {"ttl_s": 60}
    with pytest.raises(ArkerError) as caught:
        await arker.vm(VM_ID).port_token(8000, ttl_s=0)
    assert caught.value.code is ErrorCode.INVALID_REQUEST and "ttl_s" in caught.value.message


async def test_read_and_write_files(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(httpx.Response(200, content=b"\x00\x01data"), ok(written("/home/user/a.txt", 6)))
    files = arker.vm(VM_ID).sync
    assert await files.read_file("/home/user/./a.txt") == b"\x00\x01data"
    assert server.last.url.params["path"] == "/home/user/a.txt"
    info = await files.write_file("/home/user/a.txt", "héllo")
    assert server.last.method == "PUT" and server.last.content == "héllo".encode()
    assert server.last.headers["Content-Type"] == "application/octet-stream"
    assert "Upload-Id" in server.last.headers and "Idempotency-Key" in server.last.headers
    assert info.size == 6 and info.path == "/home/user/a.txt"


async def test_a_large_file_goes_in_pieces_with_its_length_and_again_on_retry(
    arker: AsyncArker, server: FakeServer
) -> None:
    data = bytes(range(256)) * (3 * 4096 + 1)  # a little over 3 MiB
    server.reply(error(503, "unavailable"), ok(written("/home/user/big", len(data))))
    await arker.vm(VM_ID).sync.write_file("/home/user/big", data)
    first, retry = server.requests
    for request in (first, retry):
        assert request.content == data
        assert request.headers["Content-Length"] == str(len(data))
        assert "Transfer-Encoding" not in request.headers
    assert first.headers["Upload-Id"] == retry.headers["Upload-Id"]


@pytest.mark.parametrize("path", ["rel.txt", "/etc/passwd", "/home/user/../root", "/home/user"])
async def test_bad_paths_fail_before_any_request(
    arker: AsyncArker, server: FakeServer, path: str
) -> None:
    files = arker.vm(VM_ID).sync
    with pytest.raises(ArkerError) as read:
        await files.read_file(path)
    with pytest.raises(ArkerError) as write:
        await files.write_file(path, b"x")
    assert read.value.code == write.value.code == ErrorCode.INVALID_PATH
    assert server.requests == []


# Context managers


async def test_client_closes_only_what_it_owns() -> None:
    async with AsyncArker(api_key=KEY, region=REGION) as owned:
        assert not owned._http.is_closed
    assert owned._http.is_closed
    http = httpx.AsyncClient()
    async with AsyncArker(api_key=KEY, region=REGION, http_client=http):
        pass
    assert not http.is_closed
    await http.aclose()


async def test_computer_deletes_its_vm_on_exit(arker: AsyncArker, server: FakeServer) -> None:
    server.reply(ok(vm(), 201), ok(completed(b"x")), httpx.Response(204))
    async with await arker.vm("debian").fork() as computer:
        await computer.run("echo x")
    assert [r.method for r in server.requests] == ["POST", "POST", "DELETE"]
    assert str(server.last.url) == f"{NORMAL}/v1/vms/{VM_ID}"


async def test_computer_exit_tolerates_an_already_deleted_vm(
    arker: AsyncArker, server: FakeServer
) -> None:
    server.reply(httpx.Response(204), error(404, "not_found"))
    async with arker.vm(VM_ID) as computer:
        await computer.delete()
    assert [r.method for r in server.requests] == ["DELETE", "DELETE"]


async def test_computer_exit_raises_other_delete_errors(
    arker: AsyncArker, server: FakeServer
) -> None:
    server.reply(error(409, "conflict", "busy"))

    async def use() -> None:
        async with arker.vm(VM_ID):
            pass

    with pytest.raises(ArkerError) as caught:
        await use()
    assert caught.value.code is ErrorCode.CONFLICT


# Checked before sending


@pytest.mark.parametrize(
    "call",
    ["fork_name", "fork_key", "run_empty", "run_env", "run_timeout", "list_limit", "vm_id"],
)
async def test_bad_arguments_fail_before_any_request(
    arker: AsyncArker, server: FakeServer, call: str
) -> None:
    computer = arker.vm(VM_ID)
    with pytest.raises(ArkerError) as caught:
        if call == "fork_name":
            await computer.fork(name="no spaces allowed")
        elif call == "fork_key":
            await computer.fork(idempotency_key="not ascii é")
        elif call == "run_empty":
            await computer.run("")
        elif call == "run_env":
            await computer.run("env", env={"1BAD": "x"})
        elif call == "run_timeout":
            await computer.run("sleep 1", timeout_s=0)
        elif call == "list_limit":
            await arker.list(limit=0)
        else:
            arker.vm("")
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert server.requests == []


async def test_foreground_run_gets_a_longer_http_timeout(
    arker: AsyncArker, server: FakeServer
) -> None:
    server.reply(ok(completed()))
    await arker.vm(VM_ID).run("sleep 100", timeout_s=100)
    assert server.last.extensions["timeout"]["read"] == 130.0
    await arker.vm(VM_ID).run("sleep 100", timeout_s=100, background=True)
    assert server.last.extensions["timeout"]["read"] == arker.timeout_s == 60.0
