"""The files API beyond single files, part of the service layer: directories
(list, stat, mkdir, move, remove) and archives (a directory as a tar stream,
a tar unpacked into one).

Every call checks the path with the one rule (`_paths.check_path`) and the
VM with the service's own check (the caller's org, not lost) before the
engine acts. An archive's body is spooled to a temp file in the data
directory (counted against --max-file-bytes by the edge) so that the engine
reads a file, and a download is zstd-compressed here, by the `zstd` binary
(already the engine's way to read .tar.zst), when the client accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

from arker import _types as t
from arker._paths import check_path
from arker.engine.base import ArchiveReader, Engine, FsEntry
from arker.server import wire
from arker.server.config import Settings
from arker.server.threads import Threads

__all__ = ["Fs", "accepts_zstd"]

ZSTD_LEVEL = "-3"
_PIPE_CHUNK = 1 << 20


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header lists zstd (with a q above 0)."""
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() != "zstd":
            continue
        q = params.strip().removeprefix("q=")
        try:
            return not params.strip() or float(q) > 0
        except ValueError:
            return False
    return False


def _entry(e: FsEntry) -> t.FsEntry:
    return t.FsEntry(
        name=e.name,
        path=e.path,
        type=e.type,
        size=e.size,
        mode=e.mode,
        mtime=wire.ts(e.mtime),
        link_target=e.link_target,
    )


class Fs:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        threads: Threads,
        usable_vm: Callable[[str, str, str], Awaitable[object]],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.threads = threads
        self._usable_vm = usable_vm

    async def _vm(self, org: str, vm_id: str, action: str) -> None:
        await self._usable_vm(org, vm_id, action)

    async def list(
        self, org: str, vm_id: str, path: str, depth: int, limit: int, offset: int
    ) -> t.FsList:
        clean = check_path(path, home=True)
        await self._vm(org, vm_id, "list a directory of")
        listing = await self.threads.call(
            self.engine.list_dir, vm_id, clean, depth=depth, limit=limit, offset=offset
        )
        return t.FsList(
            path=clean,
            entries=[_entry(e) for e in listing.entries],
            next_offset=listing.next_offset,
            truncated=listing.truncated,
        )

    async def stat(self, org: str, vm_id: str, path: str) -> t.FsEntry:
        clean = check_path(path, home=True)
        await self._vm(org, vm_id, "stat a file of")
        return _entry(await self.threads.call(self.engine.stat_path, vm_id, clean))

    async def mkdir(self, org: str, vm_id: str, req: t.FsMkdirRequest) -> t.FsEntry:
        clean = check_path(req.path)
        await self._vm(org, vm_id, "make a directory in")
        made = await self.threads.call(self.engine.make_dir, vm_id, clean, parents=req.parents)
        return _entry(made)

    async def move(self, org: str, vm_id: str, req: t.FsMoveRequest) -> t.FsEntry:
        src, dst = check_path(req.source), check_path(req.destination)
        await self._vm(org, vm_id, "move a file of")
        moved = await self.threads.call(
            self.engine.move_path, vm_id, src, dst, overwrite=req.overwrite
        )
        return _entry(moved)

    async def remove(self, org: str, vm_id: str, path: str, recursive: bool) -> None:
        clean = check_path(path)
        await self._vm(org, vm_id, "remove a file of")
        await self.threads.call(self.engine.remove_path, vm_id, clean, recursive=recursive)

    # -- archives
    async def download(self, org: str, vm_id: str, path: str, zstd: bool) -> AsyncIterator[bytes]:
        """The tar stream (opened now, so a missing path or a file fails
        before the response starts)."""
        clean = check_path(path, home=True)
        await self._vm(org, vm_id, "read a directory of")
        reader = await self.threads.call(self.engine.open_archive, vm_id, clean)
        return _compressed(self.threads, reader) if zstd else _plain(self.threads, reader)

    async def upload(
        self, org: str, vm_id: str, path: str, body: AsyncIterator[bytes]
    ) -> t.ArchiveUnpacked:
        clean = check_path(path, home=True)
        await self._vm(org, vm_id, "unpack an archive into")
        spool = os.path.join(self.settings.data_dir, "tmp")
        await self.threads.call(os.makedirs, spool, exist_ok=True)
        fd, name = await self.threads.call(tempfile.mkstemp, ".tar", "upload-", spool)
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in body:
                    await self.threads.call(f.write, chunk)
            done = await self.threads.call(
                self.engine.unpack_archive, vm_id, clean, name, self.settings.max_file_bytes
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        return t.ArchiveUnpacked(path=done.path, entries=done.entries, bytes=done.bytes)


async def _plain(threads: Threads, reader: ArchiveReader) -> AsyncIterator[bytes]:
    try:
        while piece := await threads.call(reader.read):
            yield piece
    finally:
        reader.close()


async def _compressed(threads: Threads, reader: ArchiveReader) -> AsyncIterator[bytes]:
    """The tar through `zstd`: a task feeds its stdin while this reads its stdout."""
    proc = await asyncio.create_subprocess_exec(
        "zstd", "-q", "-c", ZSTD_LEVEL,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    async def feed() -> None:
        try:
            while piece := await threads.call(reader.read):
                stdin.write(piece)
                await stdin.drain()
        finally:
            stdin.close()

    feeding = asyncio.ensure_future(feed())
    try:
        while chunk := await proc.stdout.read(_PIPE_CHUNK):
            yield chunk
        await feeding  # a failure of the walk surfaces here (the stream is cut)
        await proc.wait()
    finally:
        feeding.cancel()
        with contextlib.suppress(BaseException):
            await feeding
        if proc.returncode is None:
            proc.kill()  # our own child, by its pid
            await proc.wait()
        reader.close()
