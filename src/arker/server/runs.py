"""Run lifecycle, part of the service layer: idempotent starts, a task per run
that waits for the engine and commits the result, checkpoints for durable VMs,
and recovery after a crash. Reading a run and acting on one in flight (status,
events, stdin, signals, cancel) is run_control.py.

Every run is committed as `running` before the engine starts it, so a restart
knows what was in flight. A durable VM's run records the checkpoint taken just
before it; recovery restores the earliest in-flight checkpoint of the VM and
starts its runs again (retry_count + 1). Other interrupted runs become `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from arker import _types as t
from arker.engine.base import Engine, RunInfo, RunMoved, RunPhase, RunSpec
from arker.errors import ArkerError, ErrorCode
from arker.server import runspec, wire
from arker.server.config import Settings
from arker.server.events import Wakeups
from arker.server.forgetting import Forgetter
from arker.server.metrics import Metrics
from arker.server.store import Database, Run, Vm
from arker.server.threads import Threads

__all__ = ["Runs"]

log = logging.getLogger("arker.server")

IN_FLIGHT = ("queued", "running")
WAIT_CHUNK_S = 30.0
# A cluster replica answering for a run no task of its own drives (the
# replica that started it may have died): after this many looks (0.1 s
# each) it waits for the run itself and records its end. Two replicas
# doing so is harmless: only the first end is recorded.
ADOPT_AFTER_POLLS = 10

# Built once: constructing statements per run showed up in profiles of `true`.
_INSERT = insert(Run)
# The SET clause comes from the parameters; only runs still in flight are
# finished, so a cancel and the waiter cannot both record an end.
_FINISH = update(Run).where(Run.id == bindparam("finish_id"), Run.state.in_(IN_FLIGHT))
_UNRECORD = delete(Run).where(Run.id == bindparam("unrecord_id"))

_COLUMNS = tuple(c.key for c in Run.__table__.columns)

Answer = tuple[t.CompletedRun | t.TimedOutRun | t.CancelledRun | t.FailedRun | t.StartedRun, int]


def _values(row: Run) -> dict[str, Any]:
    return {key: getattr(row, key) for key in _COLUMNS}


def _end_values(info: RunInfo) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": info.phase.value,
        "exit_code": info.exit_code,
        "stdout": info.stdout,
        "stderr": info.stderr,
        "stdout_truncated": info.stdout_truncated,
        "stderr_truncated": info.stderr_truncated,
        # An engine that does not count them: what it gave is all there was.
        "stdout_bytes": max(info.stdout_bytes, len(info.stdout)),
        "stderr_bytes": max(info.stderr_bytes, len(info.stderr)),
        "oom_killed": info.oom_killed,
        "finished_at": info.finished_at or time.time(),
        "duration_ms": info.duration_ms,
        "warnings": (
            json.dumps([{"code": c, "message": m} for c, m in info.warnings])
            if info.warnings
            else None
        ),
    }
    if info.phase is RunPhase.FAILED:
        values["failure_reason"] = info.failure_reason or "the engine lost the run"
    return values


def _kept(values: dict[str, Any], keep: int) -> dict[str, Any]:
    """What the database keeps of a run's end: each stream up to `keep` bytes,
    its head and its tail (the end of a log matters most), marked truncated.
    The answer to a foreground run still carries the full output; small output
    (the common case) is stored as is, without a copy."""
    if len(values["stdout"]) <= keep and len(values["stderr"]) <= keep:
        return values
    kept = dict(values)
    for name in ("stdout", "stderr"):
        data = values[name]
        if len(data) > keep:
            head = keep // 2
            kept[name] = data[:head] + data[len(data) - (keep - head) :]
            kept[f"{name}_truncated"] = True
    return kept


class Runs:
    def __init__(
        self, settings: Settings, db: Database, engine: Engine, threads: Threads, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.db = db
        self.engine = engine
        self.threads = threads
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task[Run | None]] = {}
        self._vm_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._stopping = False
        self._forgetter = Forgetter(engine, threads)
        self.wakeups = Wakeups(engine)
        # In a cluster, this replica's id: recorded on the runs its tasks drive,
        # so that another replica adopts them if this one dies (cluster/replica.py).
        self.driver: str | None = None

    # -- starting
    async def run(self, vm: Vm, req: t.RunRequest, idem_key: str | None) -> Answer:
        background = bool(req.background)
        spec = runspec.stored(req)
        digest = runspec.request_hash({"vm": vm.id, "background": background, **spec})
        if idem_key is not None and (vm.durable or vm.lost):
            # A retry must not take a checkpoint (durable) or meet vm_lost before
            # its replay. Other runs skip this lookup: the insert's unique key
            # on (org, idem_key) finds a retry, and most runs are not retries.
            prior = await self._by_key(vm.org, idem_key)
            if prior is not None:
                return await self._replay(prior, digest)
        if vm.lost:
            raise ArkerError(ErrorCode.VM_LOST, f"cannot run in vm {vm.id!r} in state lost")
        # A pool below its reserve takes no new work: statvfs, cached for a second.
        self.engine.check_storage()
        stdin = runspec.decode_stdin(req.stdin)  # reject bad input before anything is recorded
        # The engine's spec from the request, not from the row's JSON parsed again.
        run_spec = runspec.for_engine(spec, self.settings.output_cap_bytes, stdin)
        now = time.time()
        row = Run(
            id=str(ULID()),
            vm_id=vm.id,
            org=vm.org,
            state="running",
            background=background,
            spec=json.dumps(spec),
            request_hash=digest,
            idem_key=idem_key,
            timeout_s=req.timeout_s,
            stdout=b"",
            stderr=b"",
            stdout_truncated=False,
            stderr_truncated=False,
            oom_killed=False,
            retry_count=0,
            created_at=now,
            started_at=now,
            driver=self.driver,
        )
        try:
            if vm.durable:
                # Under the VM's lock, so the next run sees this one in flight.
                async with self._vm_locks[vm.id]:
                    row.checkpoint_id = await self._checkpoint_for(vm.id)
                    await self.db.write(_INSERT, _values(row))
            # Otherwise the task records the run in its first worker-thread hop;
            # a foreground one also starts, waits and records the end there.
            await self._launch(
                row, run_spec, new=True, record=not vm.durable, wait_started=background
            )
            if not background:
                return await self._answer(row.id)
        except IntegrityError:
            prior = await self._by_key(vm.org, idem_key) if idem_key else None
            if prior is None:
                raise
            return await self._replay(prior, digest)  # a retry, or a concurrent twin
        return wire.started(row.id), 202

    async def _by_key(self, org: str, idem_key: str) -> Run | None:
        async with self.db.session() as s:
            return await s.scalar(select(Run).where(Run.org == org, Run.idem_key == idem_key))

    async def _replay(self, prior: Run, digest: str) -> Answer:
        if prior.request_hash != digest:
            raise ArkerError(
                ErrorCode.CONFLICT, "this Idempotency-Key was used for a different run request"
            )
        if prior.background:
            return wire.started(prior.id), 202
        return await self._answer(prior.id)

    async def _answer(self, run_id: str) -> Answer:
        """The foreground result, waiting for the run if it is still going."""
        polls = 0
        while True:
            task = self._tasks.get(run_id)
            # The task is shielded: a client hanging up must not stop the run
            # being waited for and recorded.
            row = await asyncio.shield(task) if task is not None else None
            if row is None:
                async with self.db.session() as s:
                    row = await s.get(Run, run_id)
            assert row is not None
            if row.state not in IN_FLIGHT:
                break
            polls += 1
            if polls == ADOPT_AFTER_POLLS and self.settings.cluster and run_id not in self._tasks:
                self.adopt(row)
            await asyncio.sleep(0.1)  # being recovered, or driven by another replica
        return wire.run_result(row), 200

    async def _checkpoint_for(self, vm_id: str) -> str:
        """A checkpoint for a new run of a durable VM. With runs already in flight,
        share the earliest one: recovery restores to it and re-runs them all."""
        async with self.db.session() as s:
            shared = await s.scalar(
                select(Run.checkpoint_id)
                .where(Run.vm_id == vm_id, Run.state.in_(IN_FLIGHT), Run.checkpoint_id.is_not(None))
                .order_by(Run.created_at)
                .limit(1)
            )
        if shared:
            return shared
        checkpoint_id = "cp_" + str(ULID())
        await self.threads.call(self._checkpoint_and_prune, vm_id, checkpoint_id)
        return checkpoint_id

    def _checkpoint_and_prune(self, vm_id: str, keep: str) -> None:
        # No run of this VM is in flight, so no older checkpoint is needed: a
        # durable VM holds one between runs and two at most, never a pile.
        self.engine.checkpoint(vm_id, keep)
        try:
            for old in self.engine.checkpoints(vm_id):
                if old != keep:
                    self.engine.delete_checkpoint(vm_id, old)
        except Exception:
            # The run is safe with its checkpoint taken; a leftover is pruned next time.
            log.warning("could not prune checkpoints of vm %s", vm_id, exc_info=True)

    def adopt(self, row: Run) -> None:
        """Wait for a run started elsewhere and record its end (cluster/): a
        foreground retry's, or one whose replica's lease lapsed."""
        if row.id in self._tasks:
            return  # this replica drives it already
        log.info("adopting run %s of vm %s: no replica is known to drive it", row.id, row.vm_id)
        run_spec = runspec.for_engine(row.spec, self.settings.output_cap_bytes)
        self._own(row.id, self._drive(row, run_spec, False, False, None, start=False))

    async def _launch(
        self, row: Run, run_spec: RunSpec, new: bool, record: bool, wait_started: bool
    ) -> None:
        """Hand the run to a task that records it (with `record`), starts it,
        waits for it and records the end. The task, not the request, owns the
        run: a client hanging up cannot leave it started but unwatched. With
        `wait_started`, return once the engine has started it (raising its
        error, or the record's, if it could not)."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] | None = loop.create_future() if wait_started else None
        self._own(row.id, self._drive(row, run_spec, new, record, started))
        if started is not None:
            await asyncio.shield(started)

    def _own(self, run_id: str, drive: Coroutine[Any, Any, Run | None]) -> None:
        """Run `drive` as the run's task until it ends; then wake its streams,
        which go on to its end."""
        task = asyncio.get_running_loop().create_task(drive)
        self._tasks[run_id] = task

        def done(_task: object) -> None:
            if self._tasks.get(run_id) is task:  # not a later attempt's task
                del self._tasks[run_id]
            self.wakeups.wake(run_id)

        task.add_done_callback(done)

    # -- in a worker thread
    def _begin(
        self, row: Run, spec: RunSpec, new: bool, record: bool, wait: bool
    ) -> tuple[RunInfo | None, Run | None]:
        """Record the run, start it and, with `wait`, wait for it and record
        its end, all in one worker-thread hop (a foreground run's hot path)."""
        if record:
            # A foreground run's record need not be fsynced by itself: its end
            # is, before the answer, and that makes both durable. Until then a
            # crash of the server keeps it (WAL); only an OS crash can take back
            # the record of a run never answered, in a VM that is not durable
            # (durable VMs record their runs on the loop, synced). A background
            # run's record is a promise made in the 202: synced.
            self.db.write_blocking(_INSERT, _values(row), sync=not wait)
        try:
            self.engine.start_run(row.vm_id, row.id, spec)
        except BaseException:
            if new:  # it never ran: unrecord it so a retry starts afresh
                self.db.write_blocking(_UNRECORD, {"unrecord_id": row.id})
            raise
        if new:
            self.metrics.runs_started.inc()
        if not wait:
            return None, None
        try:
            return self._wait(row)
        except ArkerError:
            return None, None  # it did start: the waiting loop meets this error again

    def _wait(self, row: Run) -> tuple[RunInfo, Run | None]:
        """Wait for the run a while; once it has ended, record the end where
        the database writes from threads (unless the server is stopping: then
        recovery decides) and return the row as recorded, if this side
        recorded it."""
        info = self.engine.wait_run(row.vm_id, row.id, WAIT_CHUNK_S)
        if not info.done or self._stopping or not self.db.writes_in_threads:
            return info, None
        values = _end_values(info)
        stored = _kept(values, self.settings.stored_output_bytes)
        count = self.db.write_blocking(_FINISH, {"finish_id": row.id, **stored})
        return info, self._finished(row, values, count)

    # -- finishing
    async def _drive(
        self,
        row: Run,
        spec: RunSpec,
        new: bool,
        record: bool,
        started: asyncio.Future[None] | None,
        start: bool = True,
    ) -> Run | None:
        """Record and start the run, wait for it and record its end; return the
        finished row, or None when it is left for recovery (shutdown) or
        recorded by a cancel first."""
        run_id, vm_id = row.id, row.vm_id
        # SQLite writes from the worker thread, in place; asyncpg's writes stay
        # on the loop, where its connections live.
        on_loop = not self.db.writes_in_threads
        info: RunInfo | None = None
        finished: Run | None = None
        try:
            if start:  # else started elsewhere: only wait for it (see adopt)
                if record and on_loop:
                    await self.db.write(_INSERT, _values(row))
                # A foreground run waits in this hop, so it goes with the waits.
                hop = self.threads.wait if started is None else self.threads.call
                info, finished = await hop(
                    self._begin, row, spec, new, record and not on_loop, started is None
                )
        except Exception as exc:
            if not new:  # a recovered run's only failure here is its start
                await self._fail([run_id], f"the engine could not start it again: {exc}")
            if started is None:
                raise
            started.set_exception(exc)
            return None
        if started is not None:
            started.set_result(None)
        try:
            while info is None or not info.done:
                info, finished = await self.threads.wait(self._wait, row)
        except RunMoved:
            return None  # started again elsewhere, and driven there (cluster takeover)
        except ArkerError as exc:
            if not self._stopping:
                await self._fail([run_id], f"the engine lost the run: {exc.message}")
            return None
        if self._stopping:
            return None  # killed by the shutdown: recovery decides, not this task
        if on_loop:
            finished = await self.record_end(row, info)
        self._forgetter.later(vm_id, run_id)  # after the answer, not on its path
        return finished

    def driven_here(self, run_id: str) -> bool:
        """Whether a task of this process drives the run (its end will wake its streams)."""
        task = self._tasks.get(run_id)
        return task is not None and not task.done()

    async def record_end(self, row: Run, info: RunInfo) -> Run | None:
        """Record the end once (a cancel may race the waiter); return the row as
        recorded, or None when the other side recorded it first."""
        values = _end_values(info)
        stored = _kept(values, self.settings.stored_output_bytes)
        count = await self.db.write(_FINISH, {"finish_id": row.id, **stored})
        return self._finished(row, values, count)

    def _finished(self, row: Run, values: dict[str, Any], count: int) -> Run | None:
        if not count:
            return None
        self.metrics.runs_finished.inc(state=values["state"])
        for name, value in values.items():
            setattr(row, name, value)
        return row

    async def _fail(self, run_ids: list[str], reason: str) -> None:
        async with self.db.session() as s:
            res = await s.execute(
                update(Run)
                .where(Run.id.in_(run_ids), Run.state.in_(IN_FLIGHT))
                .values(state="failed", failure_reason=reason, finished_at=time.time())
            )
            await s.commit()
        if res.rowcount:  # type: ignore[attr-defined]
            self.metrics.runs_finished.inc(res.rowcount, state="failed")  # type: ignore[attr-defined]

    async def finish_vm_runs(self, vm_id: str, reason: str) -> None:
        async with self.db.session() as s:
            ids = list(
                await s.scalars(select(Run.id).where(Run.vm_id == vm_id, Run.state.in_(IN_FLIGHT)))
            )
        if ids:
            await self._fail(ids, reason)

    async def in_flight_count(self, vm_ids: list[str]) -> int:
        """How many runs of these VMs are still in flight (deleted VMs' runs
        count as failed when their rows go)."""
        async with self.db.session() as s:
            count = await s.scalar(
                select(func.count()).where(Run.vm_id.in_(vm_ids), Run.state.in_(IN_FLIGHT))
            )
        return count or 0

    def count_failed(self, n: int) -> None:
        if n:
            self.metrics.runs_finished.inc(n, state="failed")

    # -- crash recovery and shutdown
    async def recover(self) -> None:
        async with self.db.session() as s:
            rows = (
                await s.scalars(
                    select(Run).where(Run.state.in_(IN_FLIGHT)).order_by(Run.created_at)
                )
            ).all()
            vms = {
                v.id: v
                for v in (
                    await s.scalars(select(Vm).where(Vm.id.in_({r.vm_id for r in rows})))
                ).all()
            }
        by_vm: defaultdict[str, list[Run]] = defaultdict(list)
        for r in rows:
            by_vm[r.vm_id].append(r)
        for vm_id, runs in by_vm.items():
            await self._recover_vm(vms.get(vm_id), vm_id, runs)

    async def recover_vm(self, vm_id: str) -> None:
        """What `recover` does, for one VM: its in-flight runs started again
        from their checkpoint (durable) or failed. A cluster's takeover calls
        it once the VM is on its new host."""
        async with self.db.session() as s:
            runs = (
                await s.scalars(
                    select(Run)
                    .where(Run.vm_id == vm_id, Run.state.in_(IN_FLIGHT))
                    .order_by(Run.created_at)
                )
            ).all()
            vm = await s.get(Vm, vm_id)
        if runs:
            await self._recover_vm(vm, vm_id, list(runs))

    async def _recover_vm(self, vm: Vm | None, vm_id: str, runs: list[Run]) -> None:
        ids = [r.id for r in runs]
        if vm is None or vm.deleted_at is not None or vm.lost:
            await self._fail(ids, f"vm {vm_id!r} is gone")
            return
        checkpoint = runs[0].checkpoint_id
        if not (vm.durable and self.engine.supports_checkpoints and checkpoint):
            log.info("failing %d interrupted run(s) of non-durable vm %s", len(ids), vm_id)
            await self._fail(
                ids, f"the server stopped during the run and vm {vm_id!r} is not durable"
            )
            for run_id in ids:
                with contextlib.suppress(ArkerError):
                    await self.threads.call(self.engine.forget_run, vm_id, run_id)
            return
        try:
            # Put the files back as they were before the first interrupted run, so
            # the half-done attempt leaves no trace.
            await self.threads.call(self.engine.restore, vm_id, checkpoint)
        except Exception as exc:  # one broken VM must not stop the server starting
            log.exception("could not restore vm %s to %s", vm_id, checkpoint)
            await self._fail(ids, f"could not restore checkpoint {checkpoint}: {exc}")
            return
        for r in runs:
            now = time.time()
            async with self.db.session() as s:
                live = await s.get(Run, r.id)
                assert live is not None
                live.state, live.retry_count, live.started_at = "running", live.retry_count + 1, now
                live.stdout, live.stderr = b"", b""
                live.stdout_bytes = live.stderr_bytes = 0
                live.driver = self.driver
                await s.commit()
            log.info("restarting run %s of durable vm %s from %s", r.id, vm_id, checkpoint)
            # The engine may still hold the lost attempt under the same run id.
            with contextlib.suppress(ArkerError):
                await self.threads.call(self.engine.forget_run, vm_id, r.id)
            try:
                run_spec = runspec.for_engine(live.spec, self.settings.output_cap_bytes)
                await self._launch(live, run_spec, new=False, record=False, wait_started=True)
            except Exception:
                log.exception("could not restart run %s", r.id)

    async def stop(self) -> None:
        self._stopping = True
        self.wakeups.close()  # streams end; their clients resume from their offsets
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._forgetter.flush()  # what ended is not left held in the engine
