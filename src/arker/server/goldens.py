"""Goldens while the server runs, part of the service layer: publish a VM's
files as a golden, import a rootfs tarball, delete, and who sees which.

    built-in   in the engine under its own name, no row: every org sees it
               (an admin key's `for_all` publish and import make these too)
    an org's   a row (org, name) -> engine_name `O-<ULID>`: only that org's
               keys see and fork it, and names never collide across orgs

The engine's names of org goldens are never accepted from a caller: `fork`
and this module resolve an org's name through its row, and the names that
the engine lists are filtered (`is_internal`) before anyone sees them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from arker import _types as t
from arker.engine.base import Engine, GoldenInfo
from arker.errors import ArkerError, ErrorCode
from arker.server import wire
from arker.server.config import Settings
from arker.server.operations import Operations
from arker.server.store import Database
from arker.server.store import Golden as GoldenRow
from arker.server.threads import Threads

__all__ = ["Goldens", "is_internal"]

_INTERNAL = re.compile(r"O-[0-9A-Z]{26}")
_PUBLIC = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# While a tarball arrives: how often the free space is looked at, and how
# much of it must stay free for the import to unpack into.
SPACE_CHECK_BYTES = 8 * 2**20
MIN_FREE_BYTES = 64 * 2**20


def is_internal(name: str) -> bool:
    """An engine name of an org's golden (never a name callers use)."""
    return _INTERNAL.fullmatch(name) is not None


def _check_name(name: str) -> str:
    if not _PUBLIC.fullmatch(name):
        raise ArkerError(
            ErrorCode.INVALID_REQUEST,
            f"golden name {name[:80]!r}: lowercase letters, digits and _.- only, "
            "starting with a letter or digit, at most 63",
            422,
        )
    return name


def _for_all_needs_admin(for_all: bool, admin: bool) -> None:
    if for_all and not admin:
        raise ArkerError(
            ErrorCode.UNAUTHORIZED,
            "for_all needs an admin key (made with `arker keys create --admin`)",
        )


class Goldens:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        engine: Engine,
        threads: Threads,
        operations: Operations,
        builtins: Callable[[bool], Awaitable[dict[str, GoldenInfo]]],
        usable_vm: Callable[[str, str, str], Awaitable[object]],
    ) -> None:
        self.settings = settings
        self.db = db
        self.engine = engine
        self.threads = threads
        self.operations = operations
        self._builtins = builtins
        self._usable_vm = usable_vm

    async def recover(self) -> None:
        """Imports a stopped server left half-done hold their names no more
        (the pool's sweep removed their staging)."""
        async with self.db.session() as s:
            await s.execute(delete(GoldenRow).where(GoldenRow.ready.is_(False)))
            await s.commit()

    async def engine_name(self, org: str, name: str) -> str | None:
        """The engine's name of the org's golden `name`, or None."""
        if not _PUBLIC.fullmatch(name):
            return None
        async with self.db.session() as s:
            found: str | None = await s.scalar(
                select(GoldenRow.engine_name).where(
                    GoldenRow.org == org, GoldenRow.name == name, GoldenRow.ready.is_(True)
                )
            )
        return found

    async def list(self, org: str) -> t.GoldenList:
        builtins = await self._builtins(True)
        items = [wire.golden(g).model_copy(update={"scope": "all"}) for g in builtins.values()]
        async with self.db.session() as s:
            rows = await s.scalars(
                select(GoldenRow).where(GoldenRow.org == org, GoldenRow.ready.is_(True))
            )
            items += [_org_golden(r) for r in rows]
        return t.GoldenList(items=sorted(items, key=lambda g: (g.name, g.scope or "")))

    async def _not_taken(self, org: str, name: str, for_all: bool) -> None:
        if name in await self._builtins(True):
            raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} already exists (built in)")
        if not for_all and await self._row(org, name) is not None:
            raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} already exists in this org")

    async def _row(self, org: str, name: str) -> GoldenRow | None:
        async with self.db.session() as s:
            row: GoldenRow | None = await s.get(GoldenRow, (org, name))
        return row

    async def _reserve(self, org: str, name: str, description: str | None) -> str:
        """Take the name for the org (conflict if taken, a race included);
        the engine name to make the golden under."""
        engine_name = f"O-{ULID()}"
        try:
            async with self.db.session() as s:
                s.add(
                    GoldenRow(
                        org=org,
                        name=name,
                        engine_name=engine_name,
                        description=description,
                        created_at=time.time(),
                        ready=False,
                    )
                )
                await s.commit()
        except IntegrityError:
            raise ArkerError(
                ErrorCode.CONFLICT, f"golden {name!r} already exists in this org"
            ) from None
        return engine_name

    async def _ready(self, org: str, name: str, info: GoldenInfo) -> t.Golden:
        async with self.db.session() as s:
            await s.execute(
                update(GoldenRow)
                .where(GoldenRow.org == org, GoldenRow.name == name)
                .values(ready=True, created_at=info.created_at)
            )
            await s.commit()
            row = await s.get(GoldenRow, (org, name), populate_existing=True)
        assert row is not None
        return _org_golden(row)

    async def _release(self, org: str, name: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(GoldenRow).where(GoldenRow.org == org, GoldenRow.name == name))
            await s.commit()

    async def publish(self, org: str, admin: bool, req: t.PublishGoldenRequest) -> t.Golden:
        name = _check_name(req.name)
        for_all = bool(req.for_all)
        _for_all_needs_admin(for_all, admin)
        await self._usable_vm(org, req.from_vm, "publish a golden from")
        await self._not_taken(org, name, for_all)
        await self.threads.call(self.engine.check_storage)
        description = req.description or f"published from vm {req.from_vm}"
        if for_all:
            info = await self.threads.call(
                self.engine.publish_golden, req.from_vm, name, description
            )
            await self._builtins(True)
            return wire.golden(info).model_copy(update={"scope": "all"})
        engine_name = await self._reserve(org, name, description)
        try:
            info = await self.threads.call(
                self.engine.publish_golden, req.from_vm, engine_name, description
            )
        except BaseException:
            await self._release(org, name)
            raise
        return await self._ready(org, name, info)

    async def delete(self, org: str, admin: bool, name: str) -> None:
        row = await self._row(org, name) if _PUBLIC.fullmatch(name) else None
        if row is not None and row.ready:
            await self._release(org, name)  # no fork finds it from now on
            await self.threads.call(self.engine.delete_golden, row.engine_name)
            return
        if row is None and admin and not is_internal(name) and name in await self._builtins(True):
            await self.threads.call(self.engine.delete_golden, name)
            await self._builtins(True)
            return
        if row is not None:
            raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} is still being imported")
        raise ArkerError(ErrorCode.NOT_FOUND, f"golden {name!r} not found")

    async def import_(
        self,
        org: str,
        admin: bool,
        name: str,
        body: AsyncIterator[bytes],
        description: str | None,
        for_all: bool,
    ) -> t.Operation:
        """Spool the tarball (bounded by the free space), then import it as
        an operation. Nothing is kept of a failed one: its staging goes with
        the engine's failure, its name with its row, its spool file here."""
        _check_name(name)
        _for_all_needs_admin(for_all, admin)
        await self._not_taken(org, name, for_all)
        await self.threads.call(self.engine.check_storage)
        engine_name = name if for_all else await self._reserve(org, name, description)

        async def release() -> None:
            if not for_all:
                await self._release(org, name)

        try:
            spool = await self._spool(body)
        except BaseException:
            await release()
            raise

        async def job(progress: Callable[[int, int | None, str], None]) -> t.Golden:
            try:
                info = await self.threads.call(
                    self.engine.import_golden,
                    engine_name,
                    spool,
                    progress,
                    description=description or "imported through the API",
                    require_shell=True,
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spool)
            if for_all:
                await self._builtins(True)
                return wire.golden(info).model_copy(update={"scope": "all"})
            return await self._ready(org, name, info)

        try:
            return await self.operations.start(org, "import_golden", job, release)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
            await release()
            raise

    async def _spool(self, body: AsyncIterator[bytes]) -> str:
        """The body in a temp file of the data directory; insufficient_storage
        (and the file removed) once what is left free would be too little
        for the import to unpack into."""
        spool_dir = os.path.join(self.settings.data_dir, "tmp")
        await self.threads.call(os.makedirs, spool_dir, exist_ok=True)
        fd, path = await self.threads.call(tempfile.mkstemp, ".tar", "golden-", spool_dir)
        reserve = max(MIN_FREE_BYTES, self.settings.pool_reserve_mib * 2**20)
        try:
            with os.fdopen(fd, "wb") as f:
                since_check = SPACE_CHECK_BYTES  # look before the first byte too
                async for chunk in body:
                    if since_check >= SPACE_CHECK_BYTES:
                        await self.threads.call(_check_space, spool_dir, reserve)
                        since_check = 0
                    await self.threads.call(f.write, chunk)
                    since_check += len(chunk)
            return path
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArkerError(
                    ErrorCode.INSUFFICIENT_STORAGE,
                    "no space left for the tarball: nothing was kept",
                ) from exc
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise


def _check_space(directory: str, reserve: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < reserve:
        raise ArkerError(
            ErrorCode.INSUFFICIENT_STORAGE,
            f"the tarball would leave {free // 2**20} MiB free, below the "
            f"{reserve // 2**20} MiB an import needs: nothing was kept",
        )


def _org_golden(row: GoldenRow) -> t.Golden:
    return t.Golden(
        name=row.name, description=row.description, created_at=wire.ts(row.created_at), scope="org"
    )
