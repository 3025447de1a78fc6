"""The MCP server against a real server and engine: in process (the mcp SDK's
own client on `build_server`), over stdio (`arker mcp` spawned as an agent
host would), and over the mounted /mcp streamable HTTP endpoint with a key
(a wrong key refused). A model's session: list tools, fork, write, run,
read, edit, branch, delete."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from contract_check import check
from live import ARKER, Live
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context

from arker import AsyncArker
from arker.mcp import MAX_OUTPUT_CHARS, build_server

TOOLS = {
    "vm_fork", "golden_list", "vm_list", "vm_get", "vm_delete",
    "run", "run_background", "run_output", "run_wait", "run_cancel",
    "fs_read", "fs_write", "fs_edit", "fs_list", "fs_remove", "port_url",
}  # fmt: skip


def _data(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data: dict[str, Any] = result.structured_content
        return data
    loaded: dict[str, Any] = json.loads(result.content[0].text)
    return loaded


def _error(result: Any) -> str:
    """A tool error's text, less the SDK's "Error executing tool NAME: "."""
    assert result.is_error, result
    text: str = result.content[0].text
    return text.split(": ", 1)[1] if text.startswith("Error executing tool ") else text


async def _session(client: Client) -> None:
    """What a model does: fork, write, run, read, edit, branch, delete."""
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} >= TOOLS
    fork_tool = next(t for t in tools.tools if t.name == "vm_fork")
    assert "source" in fork_tool.input_schema["properties"] and fork_tool.description

    vm = _data(await client.call_tool("vm_fork", {"source": "busybox", "name": "mcp-main"}))
    vm_id = vm["vm_id"]
    child_id = None
    try:
        path = "/home/user/app.txt"
        w = await client.call_tool("fs_write", {"vm_id": vm_id, "path": path, "content": "a\nb\n"})
        assert _data(w)["size"] == 4
        r = _data(await client.call_tool("run", {"vm_id": vm_id, "command": f"cat {path}"}))
        assert (r["state"], r["exit_code"], r["stdout"]) == ("completed", 0, "a\nb\n")
        edit = {"vm_id": vm_id, "path": path, "old": "b\n", "new": "B\n"}
        assert _data(await client.call_tool("fs_edit", edit))["replaced_at_line"] == 2
        read = _data(await client.call_tool("fs_read", {"vm_id": vm_id, "path": path}))
        assert read["content"] == "a\nB\n" and read["next_offset"] is None
        missing = await client.call_tool("fs_edit", {**edit, "old": "zzz"})
        assert _error(missing).startswith("not_found:")
        await client.call_tool("fs_write", {"vm_id": vm_id, "path": path, "content": "x x"})
        twice = await client.call_tool("fs_edit", {**edit, "old": "x"})
        assert "2 times" in _error(twice)

        # branch: the fork has the file as it is now; its edits stay its own
        branch = {"source": vm_id, "name": "mcp-branch", "ttl_s": 3600}
        child = _data(await client.call_tool("vm_fork", branch))
        child_id = child["vm_id"]
        assert child["parent_id"] == vm_id
        assert child["expires_at"] and "expires_at" not in vm  # a TTL only when asked
        await client.call_tool("fs_write", {"vm_id": child_id, "path": path, "content": "child"})
        parent_read = _data(await client.call_tool("fs_read", {"vm_id": vm_id, "path": path}))
        assert parent_read["content"] == "x x"

        listed = _data(await client.call_tool("fs_list", {"vm_id": vm_id}))
        assert [e["name"] for e in listed["entries"]] == ["app.txt"]
        gone = await client.call_tool("vm_get", {"vm_id": "01NOSUCHVM"})
        assert _error(gone).startswith("not_found:")
    finally:
        for made in (child_id, vm_id):
            if made is not None:
                _data(await client.call_tool("vm_delete", {"vm_id": made}))
    assert _error(await client.call_tool("vm_get", {"vm_id": vm_id})).startswith("not_found:")


@pytest.fixture
def in_process(live: Live) -> Client:
    @asynccontextmanager
    async def clients(_: Context) -> AsyncIterator[AsyncArker]:
        async with live.aclient() as arker:  # every response checked against the contract
            yield arker

    return Client(build_server(clients))


async def test_in_process_session(in_process: Client) -> None:
    async with in_process as client:
        await _session(client)


async def test_runs_in_the_background_capped_output_and_progress(in_process: Client) -> None:
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with in_process as client:
        vm_id = _data(await client.call_tool("vm_fork", {"source": "busybox"}))["vm_id"]
        try:
            big = await client.call_tool(
                "run", {"vm_id": vm_id, "command": "yes 0123456789 | head -c 100000"}
            )
            data = _data(big)
            assert len(data["stdout"]) < MAX_OUTPUT_CHARS + 200 and "capped" in data["note"]
            assert data["stdout"].startswith("0123456789\n")

            slow = await client.call_tool(
                "run",
                {"vm_id": vm_id, "command": "sleep 5; echo done"},
                progress_callback=on_progress,
            )
            assert _data(slow)["stdout"] == "done\n" and progress, progress

            cmd = "for i in 1 2 3; do echo line$i; sleep 1; done"
            started = _data(
                await client.call_tool("run_background", {"vm_id": vm_id, "command": cmd})
            )
            run_id = started["run_id"]
            first = _data(await client.call_tool("run_output", {"vm_id": vm_id, "run_id": run_id}))
            waited = _data(await client.call_tool("run_wait", {"vm_id": vm_id, "run_id": run_id}))
            assert (waited["state"], waited["exit_code"]) == ("completed", 0)
            assert waited["stdout"] == "line1\nline2\nline3\n"
            rest = _data(
                await client.call_tool(
                    "run_output",
                    {
                        "vm_id": vm_id,
                        "run_id": run_id,
                        "stdout_offset": first["next_stdout_offset"],
                    },
                )
            )
            assert first["stdout"] + rest["stdout"] == "line1\nline2\nline3\n"

            long_run = _data(
                await client.call_tool("run_background", {"vm_id": vm_id, "command": "sleep 300"})
            )
            short = {"vm_id": vm_id, "run_id": long_run["run_id"], "timeout_s": 0.5}
            assert _data(await client.call_tool("run_wait", short))["state"] == "running"
            cancel = {"vm_id": vm_id, "run_id": long_run["run_id"]}
            assert _data(await client.call_tool("run_cancel", cancel))["state"] == "cancelled"

            url = _data(await client.call_tool("port_url", {"vm_id": vm_id, "port": 8000}))
            assert "/ports/8000/" in url["api_url"] and url["url"].startswith("http")
            bad = await client.call_tool("fs_read", {"vm_id": vm_id, "path": "/etc/passwd"})
            assert _error(bad).startswith("invalid_path:")
        finally:
            await client.call_tool("vm_delete", {"vm_id": vm_id})


@pytest.mark.skipif(ARKER is None, reason="needs the arker console script")
async def test_over_stdio(live: Live) -> None:
    assert ARKER is not None
    env = {
        **os.environ,
        "ARKER_API_KEY": live.keys["acme"],
        "ARKER_BASE_URL": live.url,
    }
    params = StdioServerParameters(command=ARKER, args=["mcp"], env=env)
    async with Client(params) as client:
        await _session(client)


async def test_over_the_mounted_http_endpoint(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.keys['acme']}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{live.url}/mcp", http_client=http)) as client,
    ):
        await _session(client)
        vm_id = _data(await client.call_tool("vm_fork", {"source": "busybox"}))["vm_id"]
        try:
            # the tools act as the key's org: globex does not see acme's VM
            with live.client("globex") as globex:
                assert vm_id not in {v.vm_id for v in globex.list().items}
            url = _data(await client.call_tool("port_url", {"vm_id": vm_id, "port": 8000}))
            assert url["api_url"].startswith(live.url)  # the caller's own base URL
        finally:
            await client.call_tool("vm_delete", {"vm_id": vm_id})


def test_the_http_endpoint_refuses_a_wrong_key(live: Live) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer ark_live_wrong"}):
        r = httpx.post(f"{live.url}/mcp", json=body, headers={**accept, **auth}, timeout=30)
        check(r)  # /mcp is in the contract
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
