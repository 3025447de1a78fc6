"""The transparent proxy that nftables redirects a VM's TCP 80 and 443 to. It
decides on the name the connection itself carries, and never on the address
the VM chose, which a VM can pin to anything in its own /etc/hosts:

    step                                   refused when                 HTTP answer
    1  peer address -> policy_for(ip)      no VM, or egress off         (closed)
    2  peek the first bytes, replayed      no SNI/Host within 16 KiB    403
       later: TLS ClientHello SNI, or      and 5 s, or a malformed
       the HTTP request head's Host        head
    3  the name against the policy         not allowed                  403
    4  the proxy resolves the name itself  every address in a denied    403
                                           range (DENIED_IPV4) or one
                                           of the host's own
    5  connect to that address, port       unreachable                  502
       443 (TLS) or 80 (HTTP), send the
       peeked bytes, relay both ways with
       half-close, until both sides end
       or idle_timeout_s passes

A connection whose original destination (SO_ORIGINAL_DST) is inside one of
the policy's own CIDRs goes there as it is, without a name: the CIDR is the
rule for it, as for every other port.

What a name check cannot see: inside TLS, the Host may differ from the SNI
(domain fronting, where a CDN serves both names); and on plain HTTP, later
requests on a kept-alive connection are relayed without their Host being
read. Both reach only servers of an allowed name's addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from arker.engine.egress._bounds import PerVmSlots, TaskSet
from arker.engine.egress.dns import PolicyLookup
from arker.engine.egress.policy import (
    Policy,
    cidr_allowed,
    is_denied,
    name_allowed,
)
from arker.engine.egress.sniff import (
    Incomplete,
    host_from_request_head,
    is_tls,
    sni_from_client_hello,
)

__all__ = ["EgressProxy", "Resolver", "system_resolve"]

log = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[list[str]]]

_SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv4.h
_CHUNK: Final = 65536
DEFAULT_PORTS: Final[Mapping[str, int]] = {"tls": 443, "http": 80}


def may_reach(ip: str) -> bool:
    """Whether the proxy may connect to `ip` for a VM: never a denied range,
    and never the host itself (its uplink address, say, which no denied range
    holds here): connecting from the host, the proxy would reach services
    that the VM's own packets cannot."""
    if is_denied(ip):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))  # succeeds only for an address of this host
        except OSError:
            return True
    return False


async def system_resolve(name: str) -> list[str]:
    """The host's IPv4 addresses for `name`, through its own resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _original_dst(writer: asyncio.StreamWriter) -> tuple[str, int] | None:
    """Where the VM meant to connect before the redirect, if conntrack says."""
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    except (OSError, AttributeError):
        return None
    port, packed = struct.unpack_from("!H4s", raw, 2)
    dst = (socket.inet_ntoa(packed), int(port))
    return None if dst == writer.get_extra_info("sockname") else dst


def _http_error(status: str, text: str) -> bytes:
    body = text.encode("ascii", "replace") + b"\n"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _Refused(Exception):
    """Why a connection goes no further: logged at info, and for plain HTTP
    answered with `status` and the message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class EgressProxy:
    """One listening socket for every VM; `open` and `close` run on its loop."""

    def __init__(
        self,
        policy_for: PolicyLookup,
        *,
        resolve: Resolver = system_resolve,
        upstream_ports: Mapping[str, int] = DEFAULT_PORTS,
        peek_limit_bytes: int = 16384,
        peek_timeout_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 300.0,
        max_connections: int = 2048,
        max_connections_per_vm: int = 256,
        reachable: Callable[[str], bool] | None = None,
    ) -> None:
        self._policy_for = policy_for
        # Tests reach their loopback upstream through this; nothing else may.
        self._reachable = reachable or may_reach
        self._resolve = resolve
        self._ports = dict(upstream_ports)
        self._peek_limit = peek_limit_bytes
        self._peek_timeout_s = peek_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._connections = PerVmSlots(max_connections, max_connections_per_vm)
        self._tasks = TaskSet()
        self._server: asyncio.Server | None = None

    async def open(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port) and return the port."""
        self._server = await asyncio.start_server(
            self._serve, host, port, family=socket.AF_INET, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._tasks.cancel_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.track(asyncio.current_task())
        ip = str(writer.get_extra_info("peername")[0])
        if not self._connections.acquire(ip):
            log.info("proxy: %s over the connection bound, closed", ip)
            writer.close()
            return
        try:
            await self._handle(ip, reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("proxy: %s: %r", ip, exc)
        finally:
            self._connections.release(ip)
            writer.close()

    async def _handle(
        self, ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        policy = self._policy_for(ip)
        if policy is None or not policy.egress:
            log.info("proxy: %s refused (%s)", ip, "egress off" if policy else "no VM")
            return
        head = bytearray()
        name = None
        try:
            name = await self._peek(reader, head)
            kind = "tls" if is_tls(head) else "http"
            upstream = await self._upstream(ip, policy, kind, name, _original_dst(writer))
        except _Refused as refused:
            log.info("proxy: %s -> %s refused: %s", ip, name, refused)
            if head and not is_tls(head):
                writer.write(_http_error(refused.status, f"arker egress: {refused}"))
                with contextlib.suppress(OSError):
                    await writer.drain()
            return
        up_reader, up_writer = upstream
        try:
            up_writer.write(head)
            await self._relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _peek(self, reader: asyncio.StreamReader, head: bytearray) -> str | None:
        """The name the first bytes carry; `head` keeps the bytes read, to be
        replayed upstream."""
        try:
            async with asyncio.timeout(self._peek_timeout_s):
                while True:
                    chunk = await reader.read(self._peek_limit - len(head))
                    if not chunk:
                        raise _Refused("400 Bad Request", "connection ended before a name")
                    head += chunk
                    try:
                        if is_tls(head):
                            return sni_from_client_hello(bytes(head))
                        return host_from_request_head(bytes(head), self._peek_limit)
                    except Incomplete:
                        if len(head) >= self._peek_limit:
                            raise _Refused(
                                "431 Request Header Fields Too Large",
                                f"no name in the first {self._peek_limit} bytes",
                            ) from None
                    except ValueError as exc:
                        raise _Refused("400 Bad Request", str(exc)) from exc
        except TimeoutError:
            raise _Refused(
                "408 Request Timeout", f"no name within {self._peek_timeout_s:g} s"
            ) from None

    async def _upstream(
        self,
        ip: str,
        policy: Policy,
        kind: str,
        name: str | None,
        original: tuple[str, int] | None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The decision (steps 3 to 5 of the table) and the open connection."""
        port = self._ports[kind]
        if (
            original is not None
            and cidr_allowed(policy, original[0])
            and self._reachable(original[0])
        ):
            log.debug("proxy: %s -> %s:%d by its CIDR", ip, *original)
            addresses, port = [original[0]], original[1]
        elif name is None:
            raise _Refused("403 Forbidden", "a connection with no host name is not allowed")
        else:
            addresses = await self._addresses(policy, name)
        log.debug("proxy: %s -> %s (%s) port %d", ip, name, ",".join(addresses), port)
        last: Exception | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    return await asyncio.open_connection(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc
        raise _Refused("502 Bad Gateway", f"{name} ({addresses[0]}) is unreachable: {last!r}")

    async def _addresses(self, policy: Policy, name: str) -> list[str]:
        """The name's addresses this VM may use: a denied range only where the
        policy's own CIDRs hold it."""
        try:
            literal: str | None = str(ipaddress.IPv4Address(name))
        except ValueError:
            literal = None
        if literal is not None:
            allowed = cidr_allowed(policy, literal) if policy.allow else policy.egress
            if not (allowed and self._reachable(literal)):
                raise _Refused("403 Forbidden", f"{name} is not allowed")
            return [literal]
        if not name_allowed(policy, name):
            raise _Refused("403 Forbidden", f"{name} is not allowed")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                resolved = await self._resolve(name)
        except (OSError, TimeoutError) as exc:
            raise _Refused("502 Bad Gateway", f"{name} does not resolve: {exc}") from exc
        usable = [a for a in resolved if self._reachable(a)]
        if not usable:
            raise _Refused(
                "403 Forbidden", f"{name} resolves only to denied addresses ({', '.join(resolved)})"
            )
        return usable

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Both directions until both have ended (an EOF is passed on as a
        half-close) or nothing moved for idle_timeout_s; an error on either
        side ends both."""
        loop = asyncio.get_running_loop()
        last = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(_CHUNK):
                last[0] = loop.time()
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        pending = {
            loop.create_task(pump(reader, up_writer)),
            loop.create_task(pump(up_reader, writer)),
        }
        try:
            while pending:
                wait_s = last[0] + self._idle_timeout_s - loop.time()
                if wait_s <= 0:
                    log.debug("proxy: idle for %g s, closed", self._idle_timeout_s)
                    return
                done, pending = await asyncio.wait(pending, timeout=wait_s)
                if any(t.exception() is not None for t in done):
                    return
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
