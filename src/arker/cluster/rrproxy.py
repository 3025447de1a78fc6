"""A round-robin TCP proxy: one local port in front of the API replicas of a
local cluster (`arker cluster up`). Each new connection goes to the next
replica that accepts it; a replica that refuses is skipped. For a real
deployment put a real load balancer there (deploy/README has one).

    python -m arker.cluster.rrproxy --listen 127.0.0.1:8820 127.0.0.1:8821 127.0.0.1:8822
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal

__all__ = ["main", "serve"]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: tuple[str, int], backends: list[tuple[str, int]]) -> None:
    """Proxy until SIGTERM or SIGINT."""
    turn = itertools.cycle(range(len(backends)))

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for _ in backends:
            host, port = backends[next(turn)]
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            except (OSError, TimeoutError):
                continue
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
            return
        client_w.close()  # no replica answers

    server = await asyncio.start_server(handle, listen[0], listen[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("backends", nargs="+", help="HOST:PORT of each replica")
    args = parser.parse_args(argv)
    asyncio.run(serve(_address(args.listen), [_address(b) for b in args.backends]))


if __name__ == "__main__":
    main()
