"""What the egress tests share: real ClientHellos from Python's own TLS
stack, DNS queries built by hand, and a fake upstream resolver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight a real TLS client sends (one record, here)."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake re-framed as TLS records of `size` payload bytes."""
    header, payload = hello[:5], hello[5:]
    out = b""
    for i in range(0, len(payload), size):
        chunk = payload[i : i + size]
        out += header[:3] + struct.pack("!H", len(chunk)) + chunk
    return out


def dns_query(name: str, qtype: int = 1, qid: int = 0x4242) -> bytes:
    """A standard query with RD set, one question, class IN."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def rcode(answer: bytes) -> int:
    return answer[3] & 0x0F


def fake_answer(query: bytes) -> bytes:
    """The query turned into an answer with one A record, 192.0.2.1."""
    qid, flags = struct.unpack_from("!HH", query)
    record = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, socket.inet_aton("192.0.2.1"))
    header = struct.pack("!HHHHHH", qid, flags | 0x8080, 1, 1, 0, 0)
    return header + query[12:] + record


class FakeResolver(asyncio.DatagramProtocol):
    """An upstream on 127.0.0.1 (UDP and TCP on one port) that answers every
    query with `fake_answer` and records what it was asked."""

    def __init__(self) -> None:
        self.queries: list[bytes] = []
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.port = 0

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.udp.get_extra_info("sockname")[1]
        self.tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", self.port)
        return self.port

    async def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queries.append(data)
        assert self.udp is not None
        self.udp.sendto(fake_answer(data), (str(addr[0]), int(addr[1])))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        query = await reader.readexactly(length)
        self.queries.append(query)
        answer = fake_answer(query)
        writer.write(struct.pack("!H", len(answer)) + answer)
        await writer.drain()
        writer.close()
