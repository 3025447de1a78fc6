"""The DNS forwarder and the proxy on one background thread with its own
event loop: the engine is synchronous code called from worker threads, and
this is the one place where it meets asyncio.

    engine thread                      egress thread
    EgressServices(policy_for)
    .start(dns_addr, proxy_addr) ----> loop: DnsForwarder.open, EgressProxy.open
                  <---- (dns_port, proxy_port)
    policies[ip] = Policy(...)         policy_for(ip) per query and connection
    .stop() -------------------------> close both, cancel their tasks, stop loop

`policy_for` is called on the egress thread; a plain dict's `get` is safe to
hand in (the engine updates the dict, a reader sees the old or new value).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from arker.engine.egress.dns import DnsForwarder, PolicyLookup
from arker.engine.egress.proxy import DEFAULT_PORTS, EgressProxy, Resolver, system_resolve

__all__ = ["EgressPorts", "EgressServices"]


class EgressPorts(NamedTuple):
    dns: int
    proxy: int


class EgressServices:
    """Start once, stop any number of times (each stop releases every socket);
    both are safe from any thread but the egress thread itself."""

    def __init__(
        self,
        policy_for: PolicyLookup,
        *,
        upstreams: Sequence[tuple[str, int]] | None = None,
        resolve: Resolver = system_resolve,
        upstream_ports: Mapping[str, int] = DEFAULT_PORTS,
    ) -> None:
        self.dns = DnsForwarder(policy_for, upstreams=upstreams)
        self.proxy = EgressProxy(policy_for, resolve=resolve, upstream_ports=upstream_ports)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.ports: EgressPorts | None = None

    def start(self, dns_addr: tuple[str, int], proxy_addr: tuple[str, int]) -> EgressPorts:
        """Listen for DNS (UDP and TCP) on dns_addr and for the proxy on
        proxy_addr; port 0 picks a free one. Returns the bound ports; a second
        start returns the first one's."""
        with self._lock:
            if self.ports is not None:
                return self.ports
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="arker-egress", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                self.ports = asyncio.run_coroutine_threadsafe(
                    self._open(dns_addr, proxy_addr), loop
                ).result()
            except BaseException:
                self._shut_down()
                raise
            return self.ports

    async def _open(self, dns_addr: tuple[str, int], proxy_addr: tuple[str, int]) -> EgressPorts:
        dns_port = await self.dns.open(*dns_addr)
        try:
            proxy_port = await self.proxy.open(*proxy_addr)
        except BaseException:
            await self.dns.close()
            raise
        return EgressPorts(dns_port, proxy_port)

    async def _close(self) -> None:
        await self.proxy.close()
        await self.dns.close()

    def stop(self) -> None:
        """Close both services and end the thread. Idempotent."""
        with self._lock:
            self._shut_down()

    def _shut_down(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None
            self.ports = None

    def __enter__(self) -> EgressServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
