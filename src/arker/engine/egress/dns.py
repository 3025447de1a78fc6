"""The VMs' resolver: a small DNS forwarder (UDP and TCP) on one address:port
for every VM, which nftables redirects each VM's port 53 to. The peer address
says which VM asks; its policy says what happens to the question:

    asker                                   answer
    not a VM we know (policy_for -> None)   REFUSED
    egress off                              REFUSED
    egress, no allow-list                   forwarded
    allow-list, name allowed                forwarded (any type: AAAA like A)
    allow-list, name not allowed            NXDOMAIN
    malformed, not a query, over the bounds dropped, no answer

NXDOMAIN rather than REFUSED for names outside an allow-list: a stub resolver
takes REFUSED as a broken server and tries the next one or reports a temporary
failure (EAI_AGAIN, which pip and npm retry for a long time); NXDOMAIN fails
at once with "name not known", which is the truth as far as the VM goes.

Forwarded queries go to the host's own resolvers (/etc/resolv.conf) unchanged
and the answer comes back unchanged (same id): over UDP from a fresh socket
each (a random source port, and the connected socket only takes the server's
answers), over TCP for TCP questions. Each attempt waits `timeout_s`; the
attempts go round the resolvers. Domain rules hold only with the SNI/Host proxy
too: a VM can pin an address in /etc/hosts without asking DNS at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from arker.engine.egress._bounds import PerVmSlots, TaskSet
from arker.engine.egress.policy import Policy, name_allowed

__all__ = ["DnsForwarder", "PolicyLookup", "Question", "parse_query", "read_resolv_conf"]

log = logging.getLogger(__name__)

PolicyLookup = Callable[[str], Policy | None]

NOERROR: Final = 0
NXDOMAIN: Final = 3
REFUSED: Final = 5
_MAX_QUERY_BYTES: Final = 4096  # a question with EDNS options is ~50-300 bytes
_MAX_ANSWER_BYTES: Final = 65535
_TCP_IDLE_S: Final = 10.0


@dataclass(frozen=True)
class Question:
    """The parts of a query the forwarder decides on."""

    id: int
    flags: int
    name: str  # lowercased, no trailing dot; "" is the root
    qtype: int
    end: int  # offset just past the question, for copying it into a reply


def parse_query(data: bytes) -> Question:
    """The single question of a standard query, or ValueError: the forwarder
    answers only what it can read whole (no compression in a question)."""
    if len(data) < 12 or len(data) > _MAX_QUERY_BYTES:
        raise ValueError("bad size")
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1:
        raise ValueError("not a standard query with one question")
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length > 63 or pos + length > len(data):
            raise ValueError("bad label")
        label = data[pos : pos + length]
        if b"." in label:
            raise ValueError("a dot inside a label")
        labels.append(label.decode("latin-1").lower())
        pos += length
    if pos + 4 > len(data) or pos - 12 > 255:
        raise ValueError("truncated question")
    (qtype,) = struct.unpack_from("!H", data, pos)
    return Question(qid, flags, ".".join(labels), qtype, pos + 4)


def reply(query: bytes, q: Question, rcode: int) -> bytes:
    """An answer with no records: the question echoed, RD copied, RA set."""
    flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | rcode  # QR, opcode + RD, RA
    return struct.pack("!HHHHHH", q.id, flags, 1, 0, 0, 0) + query[12 : q.end]


def read_resolv_conf(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's resolvers, as (address, 53), in the file's order."""
    servers = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    servers.append((str(ipaddress.ip_address(fields[1].split("%")[0])), 53))
    return servers


class DnsForwarder:
    """UDP and TCP on one port. `policy_for(ip)` is called on the event
    loop's thread for each query; `open` and `close` run on that loop."""

    def __init__(
        self,
        policy_for: PolicyLookup,
        *,
        upstreams: Sequence[tuple[str, int]] | None = None,
        timeout_s: float = 1.5,
        attempts: int = 2,
        max_inflight: int = 512,
        max_inflight_per_vm: int = 64,
        max_tcp_connections: int = 128,
    ) -> None:
        self._policy_for = policy_for
        self._upstreams = list(upstreams) if upstreams is not None else read_resolv_conf()
        if not self._upstreams:
            raise ValueError("no upstream resolver (no nameserver in /etc/resolv.conf)")
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._inflight = PerVmSlots(max_inflight, max_inflight_per_vm)
        self._max_tcp = max_tcp_connections
        self._tcp_connections = 0
        self._tasks = TaskSet()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def open(self, host: str, port: int) -> int:
        """Bind UDP and TCP on host:port (port 0: one free port for both) and
        return the port."""
        loop = asyncio.get_running_loop()
        for _ in range(20):  # port 0: UDP picks a port TCP may find taken; try again
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port), family=socket.AF_INET
            )
            bound = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, host, bound, family=socket.AF_INET, reuse_address=True
                )
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp = udp
            return int(bound)
        raise OSError(f"no port free for both UDP and TCP on {host}")

    async def close(self) -> None:
        """Stop listening and cancel the queries in flight."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        await self._tasks.cancel_all()

    def _admit(self, ip: str) -> bool:
        if self._inflight.acquire(ip):
            return True
        log.debug("dns: %s over the in-flight bound, dropped", ip)
        return False

    async def answer(self, ip: str, query: bytes, *, tcp: bool) -> bytes | None:
        """The bytes to send back to `ip` for `query`, or None for no answer."""
        try:
            q = parse_query(query)
        except ValueError as exc:
            log.debug("dns: malformed query from %s dropped: %s", ip, exc)
            return None
        policy = self._policy_for(ip)
        if policy is None or not policy.egress:
            log.info("dns: refused %s for %s (%s)", q.name, ip, "egress off" if policy else "no VM")
            return reply(query, q, REFUSED)
        if not name_allowed(policy, q.name):
            log.info("dns: %s asked for %s, not in its allow-list", ip, q.name)
            return reply(query, q, NXDOMAIN)
        log.debug("dns: forwarding %s (type %d) for %s", q.name, q.qtype, ip)
        return await (self._ask_tcp(query) if tcp else self._ask_udp(query))

    async def _ask_udp(self, query: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for attempt in range(self._attempts):
            server = self._upstreams[attempt % len(self._upstreams)]
            family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                try:
                    sock.connect(server)
                    await loop.sock_sendall(sock, query)
                    async with asyncio.timeout(self._timeout_s):
                        while True:
                            data = await loop.sock_recv(sock, _MAX_ANSWER_BYTES)
                            if len(data) >= 12 and data[:2] == query[:2] and data[2] & 0x80:
                                return data
                except (TimeoutError, OSError) as exc:
                    log.debug("dns: upstream %s over UDP: %r", server[0], exc)
        return None

    async def _ask_tcp(self, query: bytes) -> bytes | None:
        for attempt in range(self._attempts):
            server = self._upstreams[attempt % len(self._upstreams)]
            writer = None
            try:
                async with asyncio.timeout(self._timeout_s):
                    reader, writer = await asyncio.open_connection(*server)
                    writer.write(struct.pack("!H", len(query)) + query)
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                    if len(data) >= 12 and data[:2] == query[:2]:
                        return data
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.debug("dns: upstream %s over TCP: %r", server[0], exc)
            finally:
                if writer is not None:
                    writer.close()
        return None

    async def _udp_query(self, ip: str, port: int, query: bytes) -> None:
        try:
            answer = await self.answer(ip, query, tcp=False)
            if answer is not None and self._udp is not None:
                self._udp.sendto(answer, (ip, port))
        finally:
            self._inflight.release(ip)

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        ip, port = addr[0], addr[1]
        if len(data) > _MAX_QUERY_BYTES or not self._admit(ip):
            return
        self._tasks.track(asyncio.get_running_loop().create_task(self._udp_query(ip, port, data)))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.track(asyncio.current_task())  # so that close() ends TCP sessions too
        ip = writer.get_extra_info("peername")[0]
        self._tcp_connections += 1
        try:
            if self._tcp_connections > self._max_tcp:
                return
            while True:
                async with asyncio.timeout(_TCP_IDLE_S):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    query = await reader.readexactly(length)
                if not self._admit(ip):
                    return
                try:
                    answer = await self.answer(ip, query, tcp=True)
                finally:
                    self._inflight.release(ip)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_connections -= 1
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder) -> None:
        self._forwarder = forwarder

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._forwarder.datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: UDP error: %r", exc)
