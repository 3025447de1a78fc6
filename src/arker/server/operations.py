"""Operations: an org's long jobs (an import of a golden) as rows that any
replica answers for, polled (`GET /v1/operations/{id}`) or streamed (SSE).

The job runs in this server's worker threads; its progress is written to its
row at most every PROGRESS_EVERY_S, and its end always. A server that stops
mid-job leaves a row `running` that the next start marks failed (one server;
a cluster's replicas cannot tell a peer's job from a dead one, so theirs stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import select, update
from ulid import ULID

from arker import _types as t
from arker.errors import ArkerError, ErrorCode
from arker.server import wire
from arker.server.events import KEEPALIVE, KEEPALIVE_S, format_event
from arker.server.store import Database, Operation

__all__ = ["Operations"]

log = logging.getLogger("arker.server")

PROGRESS_EVERY_S = 0.5
POLL_S = 0.25


def _wire(row: Operation) -> t.Operation:
    error = None
    if row.error:
        error = t.OperationError.model_validate(row.error)
    return t.Operation(
        operation_id=row.id,
        kind=row.kind,
        state=row.state,
        progress=t.OperationProgress(done=row.done, total=row.total, message=row.message),
        golden=t.Golden.model_validate(row.golden) if row.golden else None,
        error=error,
        created_at=wire.ts(row.created_at),
        updated_at=wire.ts(row.updated_at),
    )


class Operations:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """Operations a stopped server left running failed with it."""
        async with self.db.session() as s:
            await s.execute(
                update(Operation)
                .where(Operation.state == "running")
                .values(
                    state="failed",
                    error={
                        "code": "unavailable",
                        "message": "the server stopped during the operation; start it again",
                        "status": 503,
                    },
                    updated_at=time.time(),
                )
            )
            await s.commit()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):  # its failure is recorded by it
                await task

    async def start(
        self,
        org: str,
        kind: str,
        job: Callable[[Callable[[int, int | None, str], None]], Awaitable[t.Golden]],
        on_failure: Callable[[], Awaitable[None]],
    ) -> t.Operation:
        """Record the operation and run `job(progress)` in the background;
        its result (a Golden) or its error end the operation."""
        now = time.time()
        row = Operation(
            id="op_" + str(ULID()),
            org=org,
            kind=kind,
            state="running",
            done=0,
            total=None,
            message="starting",
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as s:
            s.add(row)
            await s.commit()
        op_id = row.id
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: int, total: int | None, message: str) -> None:
            # Called from the job's worker thread.
            at = time.monotonic()
            if at - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = at
            values = {"done": done, "total": total, "message": message[:500]}
            asyncio.run_coroutine_threadsafe(self._update(op_id, values), loop)

        async def run() -> None:
            try:
                golden = await job(progress)
            except BaseException as exc:
                await _quietly(on_failure())
                error = _error_of(exc)
                if error["code"] == "internal":
                    log.error("operation %s failed", op_id, exc_info=exc)
                await self._update(op_id, {"state": "failed", "error": error}, final=True)
                if not isinstance(exc, Exception):
                    raise
                return
            await self._update(
                op_id,
                {"state": "succeeded", "golden": json.loads(golden.model_dump_json())},
                final=True,
            )

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _wire(row)

    async def _update(self, op_id: str, values: dict[str, Any], final: bool = False) -> None:
        where = Operation.id == op_id
        if not final:
            where &= Operation.state == "running"  # a late progress never undoes the end
        else:
            values = {**values, "message": "failed" if values["state"] == "failed" else "done"}
        await self.db.write(update(Operation).where(where), {**values, "updated_at": time.time()})

    async def get(self, org: str, op_id: str) -> t.Operation:
        return _wire(await self._row(org, op_id))

    async def _row(self, org: str, op_id: str) -> Operation:
        async with self.db.session() as s:
            row: Operation | None = await s.scalar(
                select(Operation).where(Operation.id == op_id, Operation.org == org)
            )
        if row is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"operation {op_id!r} not found")
        return row

    async def events(self, org: str, op_id: str) -> AsyncIterator[bytes]:
        """`progress` each time the row changes, then `end`; 404 before any byte."""
        first = await self._row(org, op_id)

        async def stream() -> AsyncIterator[bytes]:
            row, seen, quiet_since = first, None, time.monotonic()
            while True:
                body = _wire(row).model_dump_json()
                if row.state != "running":
                    yield format_event("end", body)
                    return
                if body != seen:
                    yield format_event("progress", body)
                    seen, quiet_since = body, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield KEEPALIVE
                    quiet_since = time.monotonic()
                await asyncio.sleep(POLL_S)
                row = await self._row(org, op_id)

        return stream()


def _error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ArkerError):
        return {"code": str(exc.code), "message": exc.message, "status": exc.status}
    if isinstance(exc, asyncio.CancelledError):
        why = "the server stopped during the operation"
        return {"code": "unavailable", "message": why, "status": 503}
    return {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "status": 500}


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("cleaning up after a failed operation")
