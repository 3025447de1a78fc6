#!/usr/bin/env python3
"""What the egress services add, next to the same work done directly, in turns:

    DNS     an A query for the package index's name: through the forwarder on
            127.0.0.1 vs straight to the host's resolver (/etc/resolv.conf)
    proxy   a new TLS connection and `GET /simple/six/` to its first byte:
            through the proxy on 127.0.0.1 vs straight to the index
    relay   the proxy alone on loopback: connect, 64 KiB each way, close,
            against a local echo upstream vs the upstream directly

    bench/bench_egress.py [--rounds 20]

The outside names come from pip (the package registries are the only hosts
these machines reach). Prints medians and the ratios.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pip._internal.models.index import PyPI

from arker.engine.egress import EgressServices, Policy, read_resolv_conf, system_resolve

ME = "127.0.0.1"


def _dns(server: tuple[str, int], name: str) -> None:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query, server)
        assert s.recv(4096)[3] & 0xF == 0


def _https(addr: tuple[str, int], host: str) -> None:
    ctx = ssl.create_default_context()
    with (
        socket.create_connection(addr, timeout=15) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET /simple/six/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert tls.recv(16).startswith(b"HTTP/1.1 200")


def _relay(addr: tuple[str, int], hello: bytes) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(hello + b"x" * 65536)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := s.recv(65536):
            got += len(chunk)
        assert got == len(hello) + 65536


def _echo_server() -> tuple[socket.socket, int]:
    lsock = socket.create_server((ME, 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return lsock, lsock.getsockname()[1]


def _turns(rounds: int, a: Callable[[], None], b: Callable[[], None]) -> tuple[float, float]:
    ta, tb = [], []
    a(), b()  # warm caches on both paths
    for _ in range(rounds):
        for f, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    return statistics.median(ta) * 1000, statistics.median(tb) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/engine/egress"))
    from egress_helpers import client_hello

    echo, echo_port = _echo_server()
    policies = {ME: Policy(True, (PyPI.netloc, "relay.test", "127.0.0.1"))}

    async def resolve(name: str) -> list[str]:
        return [ME] if name == "relay.test" else await system_resolve(name)

    with EgressServices(policies.get, resolve=resolve) as services:
        ports = services.start((ME, 0), (ME, 0))
        upstream = read_resolv_conf()[0]
        rows = [
            ("DNS", _turns(args.rounds, lambda: _dns((ME, ports.dns), PyPI.netloc),
                           lambda: _dns(upstream, PyPI.netloc))),
            ("proxy", _turns(args.rounds, lambda: _https((ME, ports.proxy), PyPI.netloc),
                             lambda: _https((PyPI.netloc, 443), PyPI.netloc))),
        ]  # fmt: skip
    hello = client_hello("relay.test")
    with EgressServices(policies.get, resolve=resolve, upstream_ports={"tls": echo_port}) as relay:
        rports = relay.start((ME, 0), (ME, 0))
        rows.append(
            ("relay", _turns(args.rounds, lambda: _relay((ME, rports.proxy), hello),
                             lambda: _relay((ME, echo_port), hello)))
        )  # fmt: skip
    echo.close()
    for name, (through, direct) in rows:
        print(f"{name:6} through {through:7.2f} ms  direct {direct:7.2f} ms  "
              f"ratio {through / direct:5.2f}  added {through - direct:+.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
