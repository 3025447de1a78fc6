"""VMs that clean up after themselves, part of the service layer: a VM is
deleted at its `expires_at` (its TTL) and stopped once it has had nothing to
do for `idle_stop_s`. A sweep does both, every `lifecycle_interval_s`.

Busy means: held (`Activity.hold`, which streams, terminals and port relays
wrap themselves in), touched a moment ago (`Activity.touch`, which every call
that uses the VM makes), or a run in flight (a row in the database, so any
server's run counts). Each server keeps its VMs' last activity in memory and
writes it to `vms.active_at` every sweep, so servers sharing one database
agree on when a VM went idle, and a restarted one does not think every VM
idle. Every action is a conditional update first: a VM is deleted only if it
is still expired, and stopped only if it is still idle, when the update runs;
of several servers, one wins and the others find nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import cast

from sqlalchemy import Table, bindparam, delete, exists, or_, select, update

from arker.engine.base import Engine, VmPower
from arker.errors import ArkerError
from arker.server.metrics import Metrics
from arker.server.periodic import Periodic
from arker.server.runs import IN_FLIGHT, Runs
from arker.server.store import Database, Run, Upload, Vm
from arker.server.threads import Threads

__all__ = ["Activity", "Lifecycle", "powers"]

log = logging.getLogger("arker.server")

BATCH = 500  # VMs looked at per query (an IN list stays well under SQLite's bound)

# Written once per sweep for every VM used since the last one; only VMs with
# an idle stop need it, and a later activity is never overwritten by an older one.
# On the table, not the ORM class: one executemany, not an ORM bulk update.
_TABLE = cast(Table, Vm.__table__)
_VMS = _TABLE.c
_WRITE_ACTIVE = (
    update(_TABLE)
    .where(
        _VMS.id == bindparam("vid"),
        _VMS.idle_stop_s.is_not(None),
        or_(_VMS.active_at.is_(None), _VMS.active_at < bindparam("at")),
    )
    .values(active_at=bindparam("at"))
)


# A TTL's delete, claimed only while the VM is still expired (a PATCH may have
# just moved its TTL); its runs and uploads go in the same transaction, and
# only if the claim (deleted_at = this sweep's `now`) took.
_CLAIM_EXPIRED = (
    update(_TABLE)
    .where(
        _VMS.id == bindparam("vid"), _VMS.deleted_at.is_(None), _VMS.expires_at <= bindparam("now")
    )
    .values(deleted_at=bindparam("now"))
)
_CLAIMED = exists().where(_VMS.id == bindparam("vid"), _VMS.deleted_at == bindparam("now"))
_DROP_CLAIMED_RUNS = delete(Run).where(Run.vm_id == bindparam("vid"), _CLAIMED)
_DROP_CLAIMED_UPLOADS = delete(Upload).where(Upload.vm_id == bindparam("vid"), _CLAIMED)


def powers(engine: Engine, vm_ids: list[str]) -> dict[str, VmPower]:
    """Each VM's power, for those the engine has (blocking: call it in a thread)."""
    out: dict[str, VmPower] = {}
    for vm_id in vm_ids:
        with contextlib.suppress(ArkerError):
            out[vm_id] = engine.power(vm_id)
    return out


class Activity:
    """When each VM was last busy, as this process saw it."""

    def __init__(self) -> None:
        # Nothing this process has not seen counts as idle for longer than
        # the process has run: a restart never finds every VM idle at once.
        self.since = time.time()
        self._touched: dict[str, float] = {}
        self._holds: Counter[str] = Counter()
        self._unwritten: set[str] = set()

    def touch(self, vm_id: str) -> None:
        """The VM is in use now (a run, a file, a port...): no I/O, call freely."""
        self._touched[vm_id] = time.time()
        self._unwritten.add(vm_id)

    @contextlib.asynccontextmanager
    async def hold(self, vm_id: str) -> AsyncIterator[None]:
        """The VM is busy for as long as this is held (a stream, a terminal)."""
        self._holds[vm_id] += 1
        self.touch(vm_id)
        try:
            yield
        finally:
            self._holds[vm_id] -= 1
            if self._holds[vm_id] <= 0:
                del self._holds[vm_id]
            self.touch(vm_id)  # idle from now, not from when the hold began

    def watch(self, vm_id: str) -> None:
        """Watch a VM this process has not used (one that runs as it starts):
        idle from the process's start at the earliest."""
        self._touched.setdefault(vm_id, self.since)

    def held(self, vm_id: str) -> bool:
        return self._holds.get(vm_id, 0) > 0

    def last(self, vm_id: str) -> float:
        return max(self._touched.get(vm_id, 0.0), self.since)

    def seen(self) -> list[str]:
        """Every VM used since this process started (or since it was stopped)."""
        return list(self._touched.keys() | self._holds.keys())

    def to_write(self, now: float) -> dict[str, float]:
        """vm_id -> last activity, for the VMs used since the last call; a held
        VM is busy now, every time."""
        out = {vm_id: self._touched[vm_id] for vm_id in self._unwritten if vm_id in self._touched}
        out.update(dict.fromkeys(self._holds, now))
        self._unwritten.clear()
        return out

    def unwritten(self, vm_ids: list[str]) -> None:
        """A write failed: try these again next time."""
        self._unwritten.update(vm_ids)

    def forget(self, vm_id: str) -> None:
        """The VM is stopped or deleted: nothing to watch until it is used again."""
        if not self.held(vm_id):
            self._touched.pop(vm_id, None)
            self._unwritten.discard(vm_id)


class Lifecycle:
    """The sweep: expired VMs deleted, idle ones stopped, each logged and counted."""

    def __init__(
        self,
        db: Database,
        engine: Engine,
        threads: Threads,
        metrics: Metrics,
        runs: Runs,
        interval_s: float,
        on_deleted: Callable[[str, str], None],
    ) -> None:
        self.db = db
        self.engine = engine
        self.threads = threads
        self.metrics = metrics
        self.runs = runs
        self.activity = Activity()
        self._on_deleted = on_deleted  # (vm_id, org): the service forgets what it cached
        self._periodic = Periodic("vm lifecycle sweep", interval_s, self.sweep)

    async def watch_running(self) -> None:
        """Watch the VMs the engine runs (an engine that kept them through
        this server's restart): the sweep looks only at VMs it watches."""
        ids = await self.threads.call(self.engine.vm_ids)
        found = await self.threads.call(powers, self.engine, ids)
        for vm_id, power in found.items():
            if power is VmPower.RUNNING:
                self.activity.watch(vm_id)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def sweep(self, now: float | None = None) -> tuple[int, int]:
        """One pass; returns (VMs deleted at their TTL, VMs stopped as idle)."""
        now = time.time() if now is None else now
        await self._note_runs()
        await self._write_activity(now)  # first: other servers' sweeps see it
        return await self._expire(now), await self._stop_idle(now)

    async def _note_runs(self) -> None:
        """A VM with a run in flight (started by any server) is busy now."""
        async with self.db.session() as s:
            busy = await s.scalars(select(Run.vm_id).where(Run.state.in_(IN_FLIGHT)).distinct())
            for vm_id in busy:
                self.activity.touch(vm_id)

    async def _write_activity(self, now: float) -> None:
        entries = self.activity.to_write(now)
        if not entries:
            return
        try:
            async with self.db.session() as s:
                await s.execute(_WRITE_ACTIVE, [{"vid": k, "at": v} for k, v in entries.items()])
                await s.commit()
        except BaseException:
            self.activity.unwritten(list(entries))
            raise

    # -- TTL
    async def _expire(self, now: float) -> int:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(Vm.id, Vm.org, Vm.lost)
                    .where(Vm.deleted_at.is_(None), Vm.expires_at <= now)
                    .order_by(Vm.expires_at)
                    .limit(BATCH)
                )
            ).all()
        count = 0
        for vm_id, org, lost in rows:
            # A VM this host does not hold is another host's to delete (its
            # storage is there); a lost one has none left anywhere.
            if not lost and not await self._here(vm_id):
                continue
            if await self._claim_expired(vm_id, now):
                self._on_deleted(vm_id, org)
                self.activity.forget(vm_id)
                # After the claim: a crash before this is mended at the next
                # start (storage of a VM the database says deleted is freed).
                await self.threads.call(self.engine.delete, vm_id)
                self.metrics.vms_expired.inc()
                log.info("vm %s of org %s reached its ttl: deleted", vm_id, org)
                count += 1
        return count

    async def _here(self, vm_id: str) -> bool:
        try:
            await self.threads.call(self.engine.power, vm_id)
        except ArkerError:
            return False
        return True

    async def _claim_expired(self, vm_id: str, now: float) -> bool:
        """Mark the VM deleted if it is still expired, with its runs and
        uploads, in one transaction (on SQLite in this process's turn of
        writing, as deletes are)."""
        in_flight = await self.runs.in_flight_count([vm_id])
        params = {"vid": vm_id, "now": now}
        claimed, _, _ = await self.db.write_all(
            [
                (_CLAIM_EXPIRED, params),
                (_DROP_CLAIMED_RUNS, params),
                (_DROP_CLAIMED_UPLOADS, params),
            ]
        )
        if claimed:
            self.runs.count_failed(in_flight)
        return bool(claimed)

    # -- idle stop
    async def _stop_idle(self, now: float) -> int:
        seen = self.activity.seen()
        count = 0
        for start in range(0, len(seen), BATCH):
            count += await self._stop_idle_among(seen[start : start + BATCH], now)
        return count

    async def _stop_idle_among(self, vm_ids: list[str], now: float) -> int:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(Vm.id, Vm.idle_stop_s, Vm.active_at).where(
                        Vm.id.in_(vm_ids),
                        Vm.deleted_at.is_(None),
                        Vm.lost.is_(False),
                        Vm.idle_stop_s.is_not(None),
                    )
                )
            ).all()
        watched = {row.id for row in rows}
        for vm_id in vm_ids:
            if vm_id not in watched:
                self.activity.forget(vm_id)  # no idle stop (or gone): nothing to watch
        idle = [
            row.id
            for row in rows
            if self._idle(row.id, row.idle_stop_s, now)
            and (row.active_at is None or row.active_at + row.idle_stop_s <= now)
        ]
        if not idle:
            return 0
        found = await self.threads.call(powers, self.engine, idle)
        count = 0
        for vm_id in idle:
            if found.get(vm_id) is not VmPower.RUNNING:
                self.activity.forget(vm_id)  # stopped already, or not on this host
                continue
            if not await self._claim_idle(vm_id, now):
                continue
            idle_s = next(r.idle_stop_s for r in rows if r.id == vm_id)
            # Claimed, but this process may have used it while the claim ran
            # (a touch then is later than `now`, so it fails this again).
            if not self._idle(vm_id, idle_s, now):
                continue
            await self.threads.call(self.engine.stop, vm_id)
            self.activity.forget(vm_id)
            self.metrics.vms_idle_stopped.inc()
            log.info("vm %s had nothing to do for %d s: stopped (its files stay)", vm_id, idle_s)
            count += 1
        return count

    def _idle(self, vm_id: str, idle_stop_s: int, now: float) -> bool:
        return not self.activity.held(vm_id) and self.activity.last(vm_id) + idle_stop_s <= now

    async def _claim_idle(self, vm_id: str, now: float) -> bool:
        """Still idle as the database sees it (no server wrote a later
        activity, no run in flight)? Then mark it active now, so no other
        server stops it too, and say so."""
        in_flight = exists().where(Run.vm_id == Vm.id, Run.state.in_(IN_FLIGHT))
        async with self.db.session() as s:
            res = await s.execute(
                update(Vm)
                .where(
                    Vm.id == vm_id,
                    Vm.deleted_at.is_(None),
                    Vm.idle_stop_s.is_not(None),
                    or_(Vm.active_at.is_(None), Vm.active_at + Vm.idle_stop_s <= now),
                    ~in_flight,
                )
                .values(active_at=now)
            )
            await s.commit()
        return bool(res.rowcount)  # type: ignore[attr-defined]
