"""The MCP tools' pieces that need no server: the output cap and the schemas
a model is shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp import Client
from mcp.server.mcpserver import Context

from arker import ArkerError, AsyncArker
from arker.mcp import MAX_OUTPUT_CHARS, build_server
from arker.mcp.tools import cap
from arker.server.fs import accepts_zstd


def test_cap_keeps_head_and_tail_and_says_so() -> None:
    assert cap("short") == ("short", False)
    text = "H" * 40_000 + "T" * 40_000
    out, cut = cap(text)
    assert cut and out.startswith("H" * 100) and out.endswith("T" * 100)
    assert "characters left out" in out and len(out) < MAX_OUTPUT_CHARS + 100


def test_accept_encoding_zstd() -> None:
    assert accepts_zstd("gzip, zstd") and accepts_zstd("zstd;q=0.5")
    assert not accepts_zstd("zstd;q=0") and not accepts_zstd("gzip") and not accepts_zstd(None)


async def test_every_tool_has_a_description_and_an_arker_error_is_a_tool_error() -> None:
    @asynccontextmanager
    async def clients(_: Context) -> AsyncIterator[AsyncArker]:
        raise ArkerError("unauthorized", "no key")
        yield  # pragma: no cover

    async with Client(build_server(clients)) as client:
        tools = (await client.list_tools()).tools
        assert all(t.description and len(t.description) > 40 for t in tools), tools
        fork = next(t for t in tools if t.name == "vm_fork")
        assert "ttl_s" in fork.input_schema["properties"]
        result = await client.call_tool("vm_list", {})
        assert result.is_error and "unauthorized: no key" in result.content[0].text


async def test_vm_fork_asks_for_a_size() -> None:
    import json

    import httpx

    sent: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        vm = {
            "vm_id": "01KQH2ADR3DCAJF06N4R453WPJ", "name": None, "base_image": "debian",
            "region": "local", "created_at": "2026-12-04T00:00:00Z", "parent_id": None,
            "durable": False, "state": "stopped",
            "resources": {"cpu": 2, "memory_mib": 2048, "pids": 512, "disk_mib": None},
        }  # fmt: skip
        return httpx.Response(201, json=vm)

    @asynccontextmanager
    async def clients(_: Context) -> AsyncIterator[AsyncArker]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncArker(
            api_key="ark_live_x", base_url="http://a.test", http_client=http
        ) as a:
            yield a

    async with Client(build_server(clients)) as client:
        tools = (await client.list_tools()).tools
        props = next(t for t in tools if t.name == "vm_fork").input_schema["properties"]
        assert {"cpu", "memory_mib", "pids"} <= props.keys()
        result = await client.call_tool(
            "vm_fork", {"source": "debian", "cpu": 2, "memory_mib": 2048}
        )
        assert not result.is_error, result.content
        assert sent[-1]["resources"] == {"cpu": 2, "memory_mib": 2048}
        await client.call_tool("vm_fork", {"source": "debian"})
        assert "resources" not in sent[-1]
