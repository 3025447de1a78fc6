"""The forwarder on loopback, against a fake upstream resolver: what each
policy gets, over UDP and TCP, and that bad input never stops it."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from egress_helpers import FakeResolver, dns_query, fake_answer, rcode

from arker.engine.egress import DnsForwarder, Policy, read_resolv_conf

NXDOMAIN, REFUSED = 3, 5


@pytest.fixture
async def upstream() -> AsyncIterator[FakeResolver]:
    resolver = FakeResolver()
    await resolver.open()
    try:
        yield resolver
    finally:
        await resolver.close()


@pytest.fixture
def policies() -> dict[str, Policy]:
    return {"127.0.0.1": Policy(True, ("allowed.test", "*.wild.test"))}


@pytest.fixture
async def forwarder(
    upstream: FakeResolver, policies: dict[str, Policy]
) -> AsyncIterator[tuple[DnsForwarder, int]]:
    fwd = DnsForwarder(policies.get, upstreams=[("127.0.0.1", upstream.port)], timeout_s=0.5)
    port = await fwd.open("127.0.0.1", 0)
    try:
        yield fwd, port
    finally:
        await fwd.close()


async def ask_udp(port: int, query: bytes, timeout_s: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        await loop.sock_sendall(sock, query)
        async with asyncio.timeout(timeout_s):
            return await loop.sock_recv(sock, 65535)


async def ask_tcp(port: int, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


async def test_allowed_names_are_forwarded_unchanged(
    forwarder: tuple[DnsForwarder, int], upstream: FakeResolver
) -> None:
    _, port = forwarder
    for name, qtype in (("allowed.test", 1), ("ALLOWED.test", 28), ("a.b.wild.test", 1)):
        query = dns_query(name, qtype, qid=0x1234)
        assert await ask_udp(port, query) == fake_answer(query)
        assert upstream.queries[-1] == query
    query = dns_query("allowed.test", 1, qid=0x5678)
    assert await ask_tcp(port, query) == fake_answer(query)
    assert upstream.queries[-1] == query


async def test_other_names_get_nxdomain_without_asking_upstream(
    forwarder: tuple[DnsForwarder, int], upstream: FakeResolver
) -> None:
    _, port = forwarder
    for name in ("denied.test", "wild.test", "allowed.test.evil.test"):
        answer = await ask_udp(port, dns_query(name, qid=0x0102))
        assert answer[:2] == b"\x01\x02" and answer[2] & 0x80  # same id, a response
        assert rcode(answer) == NXDOMAIN
        assert answer[12:] == dns_query(name)[12:]  # the question echoed
    assert rcode(await ask_tcp(port, dns_query("denied.test"))) == NXDOMAIN
    assert upstream.queries == []


async def test_egress_off_and_strangers_are_refused(
    forwarder: tuple[DnsForwarder, int], policies: dict[str, Policy], upstream: FakeResolver
) -> None:
    _, port = forwarder
    policies["127.0.0.1"] = Policy(False)
    assert rcode(await ask_udp(port, dns_query("allowed.test"))) == REFUSED
    del policies["127.0.0.1"]
    assert rcode(await ask_udp(port, dns_query("allowed.test"))) == REFUSED
    policies["127.0.0.1"] = Policy(True)  # open egress: everything goes up
    query = dns_query("anything.test")
    assert await ask_udp(port, query) == fake_answer(query)
    assert len(upstream.queries) == 1


async def test_malformed_packets_are_ignored(forwarder: tuple[DnsForwarder, int]) -> None:
    _, port = forwarder
    good = dns_query("allowed.test")
    bad = [
        b"",
        b"\x00" * 11,
        good[:-3],  # truncated question
        good[:2] + b"\x81\x00" + good[4:],  # a response, not a query
        good[:4] + b"\x00\x02" + good[6:],  # two questions claimed
        good[:12] + b"\xc0\x0c" + good[-4:],  # a compression pointer in the question
        good[:12] + b"\x40" + b"a" * 64 + b"\x00" + good[-4:],  # a 64-byte label
        b"\xff" * 5000,  # over the size bound
    ]
    for packet in bad:
        with pytest.raises(TimeoutError):
            await ask_udp(port, packet, timeout_s=0.2)
    assert await ask_udp(port, good) == fake_answer(good)  # still serving


async def test_a_dead_upstream_means_no_answer_after_the_retries(
    policies: dict[str, Policy],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        fwd = DnsForwarder(
            policies.get, upstreams=[("127.0.0.1", silent.getsockname()[1])], timeout_s=0.1
        )
        port = await fwd.open("127.0.0.1", 0)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(TimeoutError):
                await ask_udp(port, dns_query("allowed.test"), timeout_s=1.0)
            assert loop.time() - start >= 1.0
            assert len(silent.recv(512)) > 0 and len(silent.recv(512)) > 0  # two attempts
        finally:
            await fwd.close()


async def test_in_flight_bound_drops_the_rest(policies: dict[str, Policy]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.settimeout(0.5)
        fwd = DnsForwarder(
            policies.get,
            upstreams=[("127.0.0.1", silent.getsockname()[1])],
            timeout_s=1.0,
            attempts=1,
            max_inflight_per_vm=3,
        )
        port = await fwd.open("127.0.0.1", 0)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                for i in range(10):
                    client.sendto(dns_query("allowed.test", qid=i), ("127.0.0.1", port))
                await asyncio.sleep(0.3)
            seen = []
            with pytest.raises(TimeoutError):
                while True:
                    seen.append(silent.recv(512))
            assert len(seen) == 3
        finally:
            await fwd.close()


def test_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# x\nnameserver 10.255.255.53\nsearch a\nnameserver fe80::1%eth0\nnameserver x\n"
    )
    assert read_resolv_conf(str(conf)) == [("10.255.255.53", 53), ("fe80::1", 53)]
    assert read_resolv_conf(str(conf) + ".missing") == []
