"""The proxy end to end on loopback: a fake upstream that records every byte
and answers only after the client's half-close, a resolver the test owns, and
real ClientHellos. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from egress_helpers import client_hello, split_records

from arker.engine.egress import EgressProxy, Policy, cidr_allowed
from arker.engine.egress.proxy import may_reach

ME = "127.0.0.1"
NAMES = {"allowed.test": ["127.0.0.1"], "private.test": ["127.0.0.1", "10.9.9.9"]}


@dataclass
class Upstream:
    """Reads to EOF, then answers `reply` and closes: so a relay that does not
    pass the half-close on hangs, and one that truncates shows."""

    reply: bytes = b""
    received: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read())
        writer.write(self.reply)
        await writer.drain()
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(reply=os.urandom(1 << 20))
    server = await asyncio.start_server(up.serve, ME, 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def policies() -> dict[str, Policy]:
    # 127.0.0.1 is in a denied range: the test's upstream is reachable only
    # because the policy names it as a CIDR and the proxy is told it may.
    return {ME: Policy(True, ("allowed.test", "127.0.0.1"))}


async def _resolve(name: str) -> list[str]:
    if name not in NAMES:
        raise OSError(f"no such name {name}")
    return NAMES[name]


@pytest.fixture
async def proxy(upstream: Upstream, policies: dict[str, Policy]) -> AsyncIterator[int]:
    p = EgressProxy(
        policies.get,
        resolve=_resolve,
        upstream_ports={"tls": upstream.port, "http": upstream.port},
        peek_timeout_s=0.5,
        idle_timeout_s=0.5,
        max_connections_per_vm=4,
        # The loopback upstream stands for the internet where the test's policy names it.
        reachable=lambda ip: may_reach(ip) or (ME in policies and cidr_allowed(policies[ME], ip)),
    )
    port = await p.open(ME, 0)
    try:
        yield port
    finally:
        await p.close()


async def exchange(port: int, *chunks: bytes, pause_s: float = 0.01) -> bytes:
    """Send the chunks as separate segments, half-close, read to EOF. A reset
    (the proxy closed before reading all we sent) reads as b""."""
    reader, writer = await asyncio.open_connection(ME, port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause_s)
        writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_tls_relayed_byte_exact_both_ways(proxy: int, upstream: Upstream) -> None:
    hello = split_records(client_hello("allowed.test"), 200)
    payload = os.urandom(1 << 20)
    pieces = [hello[i : i + 150] for i in range(0, len(hello), 150)]
    assert await exchange(proxy, *pieces, payload) == upstream.reply
    assert upstream.received == [hello + payload]


async def test_http_relayed_byte_exact_both_ways(proxy: int, upstream: Upstream) -> None:
    head = b"POST /x HTTP/1.1\r\nHost: allowed.test:80\r\nContent-Length: 5\r\n\r\n"
    assert await exchange(proxy, head[:10], head[10:], b"hello") == upstream.reply
    assert upstream.received == [head + b"hello"]


async def test_denied_names_go_nowhere(proxy: int, upstream: Upstream) -> None:
    assert await exchange(proxy, client_hello("denied.test")) == b""
    assert await exchange(proxy, client_hello(None)) == b""  # no SNI at all
    answer = await exchange(proxy, b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"denied.test is not allowed" in answer
    answer = await exchange(proxy, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert upstream.received == []


async def test_a_name_resolving_to_denied_ranges_is_refused(
    proxy: int, upstream: Upstream, policies: dict[str, Policy]
) -> None:
    policies[ME] = Policy(True, ("private.test",))
    answer = await exchange(proxy, b"GET / HTTP/1.1\r\nHost: private.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"resolves only to denied addresses (127.0.0.1, 10.9.9.9)" in answer
    assert await exchange(proxy, client_hello("private.test")) == b""
    policies[ME] = Policy(True)  # open egress keeps the denied ranges denied too
    assert await exchange(proxy, client_hello("allowed.test")) == b""
    assert upstream.received == []


async def test_egress_off_and_strangers_are_closed(
    proxy: int, upstream: Upstream, policies: dict[str, Policy]
) -> None:
    policies[ME] = Policy(False, ("allowed.test",))
    assert await exchange(proxy, client_hello("allowed.test")) == b""
    del policies[ME]
    assert await exchange(proxy, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n") == b""
    assert upstream.received == []


async def test_silent_and_idle_clients_are_cut(proxy: int, upstream: Upstream) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(ME, proxy)
    start = loop.time()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # nothing sent: peek timeout
    assert 0.4 < loop.time() - start < 2
    writer.close()
    reader, writer = await asyncio.open_connection(ME, proxy)
    writer.write(client_hello("allowed.test"))
    start = loop.time()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # relayed, then idle
    assert 0.4 < loop.time() - start < 2
    writer.close()


async def test_connections_per_vm_are_bounded(proxy: int) -> None:
    held = [await asyncio.open_connection(ME, proxy) for _ in range(4)]
    try:
        reader, writer = await asyncio.open_connection(ME, proxy)
        assert await asyncio.wait_for(reader.read(), 0.3) == b""  # closed at once
        writer.close()
    finally:
        for _, w in held:
            w.close()


def test_the_host_itself_is_never_reachable() -> None:
    """Not its loopback, and not its uplink address, which no denied range
    holds on these machines (the documentation ranges stay open)."""
    import socket as _socket

    with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
        s.connect(("203.0.113.80", 9))  # no packet is sent: this picks the uplink address
        uplink = s.getsockname()[0]
    assert not may_reach(uplink)
    assert not may_reach("127.0.0.1")
    assert not may_reach("169.254.169.254")
    assert may_reach("203.0.113.80")
