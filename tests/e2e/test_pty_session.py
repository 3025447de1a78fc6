"""The terminal over a real server on the real engine: a WebSocket session
(output, resize, exit status), root, the SDK both ways, refusals in the
contract's shape, and the shell's tree killed when the client leaves or the
VM is deleted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from live import Live
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from arker import Arker, ArkerError, AsyncArker, Computer, Pty
from arker import _types as t

DEADLINE_S = 60.0


@pytest.fixture
def vm(arker: Arker) -> Iterator[Computer]:
    with arker.vm("busybox").fork(name="pty") as computer:
        yield computer


def read_until(pty: Pty, wanted: bytes) -> bytes:
    seen = b""
    deadline = time.monotonic() + DEADLINE_S
    while wanted not in seen:
        assert time.monotonic() < deadline, seen
        chunk = pty.recv()
        assert chunk, f"the terminal ended before {wanted!r}: {seen!r}"
        seen += chunk
    return seen


def _ws(live: Live, path: str, org: str | None = "acme"):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {live.keys[org]}"} if org else {}
    url = "ws" + live.url.removeprefix("http") + path
    return connect(url, additional_headers=headers, open_timeout=DEADLINE_S)


def test_session_resize_and_exit(live: Live, vm: Computer) -> None:
    # The wire itself, as a browser's xterm.js would speak it.
    with _ws(live, f"/v1/vms/{vm.vm_id}/pty?cols=77&rows=19") as ws:
        assert t.PtyStarted.model_validate_json(ws.recv(DEADLINE_S)).type == "started"
        ws.send(b"stty size; echo E''ND\r")
        seen = b""
        while b"END\r\n" not in seen:
            seen += ws.recv(DEADLINE_S)  # type: ignore[operator]
        assert b"19 77" in seen
        ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        ws.send(b"stty size; exit 7\r")
        frames: list[str | bytes] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(ws.recv(DEADLINE_S))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        output = b"".join(f for f in frames if isinstance(f, bytes))
        assert b"40 120" in output
        texts = [f for f in frames if isinstance(f, str)]
        assert texts and t.PtyExit.model_validate_json(texts[-1]).exit_code == 7


def test_sdk_sync_as_root(vm: Computer) -> None:
    with vm.pty(user="root", cols=50, rows=10) as pty:
        pty.send("id -u; echo E''ND\n")
        assert b"\r\n0\r\n" in read_until(pty, b"END\r\n")
        pty.send("exit 3\n")
        assert pty.wait() == 3 and pty.exit_code == 3
    with vm.pty() as pty:
        pty.send("id -u; pwd; exit\n")
        out = b"".join(pty.output())
        assert b"1000\r\n/home/user\r\n" in out
        assert pty.exit_code == 0


async def test_sdk_async_resize(aarker: AsyncArker, vm: Computer) -> None:
    avm = aarker.vm(vm.vm_id)
    async with await avm.pty(command="sleep 0.2; stty size", cols=33, rows=11) as pty:
        out = b"".join([chunk async for chunk in pty.output()])
        assert b"11 33" in out and pty.exit_code == 0
    async with await avm.pty() as pty:
        await pty.resize(101, 31)
        await pty.send(b"stty size; exit 2\r")
        assert await asyncio.wait_for(pty.wait(), DEADLINE_S) == 2


def test_refusals(live: Live, vm: Computer) -> None:
    with Arker(api_key=live.keys["globex"], base_url=live.url) as globex:
        for computer in (globex.vm(vm.vm_id), vm._arker.vm("01NOSUCHVM0000000000000000")):
            with pytest.raises(ArkerError) as info:
                computer.pty()
            assert (info.value.code, info.value.status) == ("not_found", 404)
    cases = [
        ("acme", f"/v1/vms/{vm.vm_id}/pty?cols=0", 4422, "invalid_request"),
        ("acme", f"/v1/vms/{vm.vm_id}/pty?rows=abc", 4422, "invalid_request"),
        ("acme", f"/v1/vms/{vm.vm_id}/pty?user=admin", 4422, "invalid_request"),
        ("globex", f"/v1/vms/{vm.vm_id}/pty", 4404, "not_found"),
        ("acme", "/v1/vms/01NOSUCHVM0000000000000000/pty", 4404, "not_found"),
        (None, f"/v1/vms/{vm.vm_id}/pty", 4401, "unauthorized"),
    ]
    for org, path, close_code, code in cases:
        with _ws(live, path, org) as ws:
            # One frame, the error in the contract's shape, then 4000 + the status.
            refused = t.PtyRefused.model_validate_json(ws.recv(DEADLINE_S))
            assert refused.error.code == code, (path, refused)
            if close_code == 4422:
                assert refused.error.details and refused.error.details["errors"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(DEADLINE_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
    with pytest.raises(ArkerError) as info:
        vm.pty(cols=5000)
    assert info.value.code == "invalid_request"


def test_leaving_kills_the_tree(vm: Computer) -> None:
    pty = vm.pty()
    pty.send("sleep 4321 & echo S''TARTED\n")
    read_until(pty, b"STARTED\r\n")
    pty.close()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = vm.run("ps -o args | grep 'sleep 432[1]' || true")
        assert found.type == "completed"
        if found.stdout == b"":
            break
        assert time.monotonic() < deadline, found.stdout
        time.sleep(0.1)


def test_vm_delete_ends_the_session(arker: Arker) -> None:
    computer = arker.vm("busybox").fork(name="pty-delete")
    try:
        pty = computer.pty()
        pty.send("echo R''EADY\n")
        read_until(pty, b"READY\r\n")
        computer.delete()
        assert pty.wait() is None  # the VM ended it: no exit status
        assert pty.done
    finally:
        with pytest.raises(ArkerError):
            computer.delete()
