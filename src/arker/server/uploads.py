"""File uploads, part of the service layer: the body goes to the engine in
pieces as it arrives, so an upload is never whole in the server's memory and
receiving the next piece overlaps writing the last. A body that fits in one
piece takes the one-call path (engine.write_file), as small files are most."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable

from arker.engine.base import Engine, FileInfo
from arker.server.threads import Threads

__all__ = ["PIECE_BYTES", "hash_body", "write_body"]

# Each piece is one worker-thread hop: large enough that hops are few
# (25 for 100 MiB), small enough to stay in cache and overlap with receiving.
PIECE_BYTES = 4 * 1024 * 1024


async def _pieces(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body regrouped into pieces of at least PIECE_BYTES (the last may
    be smaller; an empty body is one empty piece)."""
    held: list[bytes] = []
    size = 0
    async for chunk in body:
        held.append(chunk)
        size += len(chunk)
        if size >= PIECE_BYTES:
            yield held[0] if len(held) == 1 else b"".join(held)
            held, size = [], 0
    if held or size == 0:
        yield b"".join(held)


async def write_body(
    threads: Threads,
    engine: Engine,
    vm_id: str,
    path: str,
    body: AsyncIterator[bytes],
    max_bytes: int,
) -> FileInfo:
    """Write the body to `path` in the VM; atomic, as engine.write_file."""
    pieces = _pieces(body)
    first = await anext(pieces)
    second = await anext(pieces, None)
    if second is None:
        return await threads.call(engine.write_file, vm_id, path, first)
    writer = await threads.call(engine.open_file_writer, vm_id, path, max_bytes)
    writing: Awaitable[None] | None = None
    try:
        for piece in (first, second):
            await threads.call(writer.write, piece)
        async for piece in pieces:
            # One write at a time (the writer is not thread-safe), but the
            # next piece is received while the last one is written.
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(threads.call(writer.write, piece))
        if writing is not None:
            await writing
            writing = None
        return await threads.call(writer.commit)
    except BaseException:
        if writing is not None:
            with contextlib.suppress(BaseException):
                await writing  # never abort under a write still running
        writer.abort()  # close and unlink: quick enough for the event loop
        raise


async def hash_body(threads: Threads, body: AsyncIterator[bytes]) -> str:
    """sha256 of the body, hashed piece by piece in worker threads."""
    hasher = hashlib.sha256()
    async for piece in _pieces(body):
        await threads.call(hasher.update, piece)
    return hasher.hexdigest()
