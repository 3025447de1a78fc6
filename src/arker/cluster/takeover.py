"""Takeover, in every API replica: VMs whose host lost its lease.

About every 100 ms a replica locks, with `SELECT … FOR UPDATE SKIP LOCKED`,
the placements of live VMs whose host's lease has expired or whose fence is
older than the host's (it was acquired again since). In that transaction
each durable VM is placed on the healthy host with the most free memory
(under that host's fence) and each other VM is marked lost. Two replicas
racing lock disjoint rows, and each change is an UPDATE conditional on the
row as read (its old host and fence; for a lost VM, not yet lost), so a row
that another replica took after this one's snapshot is left alone: each VM
is taken over exactly once. Then, outside the lock, the new host restores the
VM's latest complete checkpoint from the blob store and the service's own
recovery (Runs.recover_vm) starts its in-flight runs again, retry_count + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update

from arker.cluster.codec import from_wire
from arker.cluster.leases import db_now, lapsed_replicas
from arker.cluster.router import ClusterEngine
from arker.engine.base import Limits, NetworkPolicy
from arker.server.runs import Runs
from arker.server.store import ClusterHost, Database, Placement, Vm
from arker.server.threads import Threads

__all__ = ["Moved", "Takeover", "claim"]

log = logging.getLogger("arker.cluster")

POLL_S = 0.1
BATCH = 20


@dataclass(frozen=True)
class Moved:
    vm_id: str
    host_id: str
    spec: dict[str, Any]
    found_at: float  # monotonic: when this replica saw the expired lease


class Takeover:
    def __init__(
        self,
        db: Database,
        router: ClusterEngine,
        runs: Runs,
        threads: Threads,
        forget: Any,
        poll_s: float = POLL_S,
        me: str | None = None,
    ) -> None:
        self.db, self.router, self.runs, self.threads = db, router, runs, threads
        self.me = me  # this replica's id (replica.ReplicaLease): who is restoring what it claims
        self.forget = forget  # service._forget_vm-like: drop a lost VM's cached row
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self.resumed: list[tuple[str, float]] = []  # (vm_id, seconds from found to restarted)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("takeover sweep failed", exc_info=True)
            await asyncio.sleep(self.poll_s)

    async def sweep(self) -> int:
        """One pass; how many VMs it took over or marked lost."""
        moved, lost = await claim(self.db, self.me)
        for vm_id, org in lost:
            log.warning("vm %s is lost with its host", vm_id)
            self.forget(vm_id, org)
            await self.runs.finish_vm_runs(vm_id, "the vm's host was lost")
        for m in moved:
            await self._resume(m)
        return len(moved) + len(lost)

    async def _resume(self, m: Moved) -> None:
        try:
            await self._restore(m)
        finally:
            if self.me is not None:  # restored, or its runs failed: nothing left to redo
                await self.db.write(
                    update(Placement)
                    .where(Placement.vm_id == m.vm_id, Placement.taking_over == self.me)
                    .values(taking_over=None),
                    {},
                )

    async def _restore(self, m: Moved) -> None:
        self.router._placed.pop(m.vm_id, None)
        log.info("durable vm %s: taking it over on host %s", m.vm_id, m.host_id)
        try:
            restored = await self.threads.call(
                self.router.adopt,  # type: ignore[attr-defined]
                m.vm_id,
                hostname=m.spec.get("hostname") or m.vm_id.lower(),
                limits=from_wire(m.spec.get("limits"), Limits | None),
                network=from_wire(m.spec.get("network"), NetworkPolicy | None),
            )
        except Exception as exc:
            log.exception("could not restore vm %s on host %s", m.vm_id, m.host_id)
            await self.runs.finish_vm_runs(m.vm_id, f"could not restore it on a new host: {exc}")
            return
        if restored is None:
            await self.runs.finish_vm_runs(m.vm_id, "its host was lost before any checkpoint")
            return
        await self.runs.recover_vm(m.vm_id)
        self.resumed.append((m.vm_id, time.monotonic() - m.found_at))


async def claim(db: Database, me: str | None = None) -> tuple[list[Moved], list[tuple[str, str]]]:
    """The transaction of a pass: lock (skipping rows another replica holds)
    the placements of VMs whose host lost its lease; place each durable one
    on a healthy host and mark each other one lost. With `me` (this
    replica's id), each move is marked as this replica's to restore, and a
    move whose restoring replica's lease lapsed before it had restored is
    taken again. What it moved, and the (vm_id, org) of what it marked lost."""
    found_at = time.monotonic()
    moved: list[Moved] = []
    lost: list[tuple[str, str]] = []
    async with db.session() as s, s.begin():
        now = db_now()
        rows = (
            await s.execute(
                select(Placement, Vm.durable, Vm.org)
                .join(ClusterHost, ClusterHost.id == Placement.host_id)
                .join(Vm, Vm.id == Placement.vm_id)
                .where(
                    Vm.deleted_at.is_(None),
                    Vm.lost.is_(False),
                    or_(ClusterHost.lease_expires_at < now, ClusterHost.fence != Placement.fence),
                )
                .limit(BATCH)
                .with_for_update(of=Placement, skip_locked=True)
            )
        ).all()
        if not rows:
            return (await _stalled(s, me, found_at) if me is not None else []), []
        healthy = list(
            await s.scalars(select(ClusterHost).where(ClusterHost.lease_expires_at > now))
        )
        for placement, durable, org in rows:
            # Each change is conditional on the row as this pass read it. In
            # READ COMMITTED a row that another replica changed and committed
            # after this statement's snapshot can still come back locked here
            # (a lost VM's placement is not itself updated); the UPDATE takes a
            # fresh snapshot, so its rowcount says whether this pass won.
            target = _roomiest([h for h in healthy if h.id != placement.host_id] or healthy)
            if durable and target is not None:
                took = await s.execute(
                    update(Placement)
                    .where(
                        Placement.vm_id == placement.vm_id,
                        Placement.host_id == placement.host_id,
                        Placement.fence == placement.fence,
                    )
                    .values(host_id=target.id, fence=target.fence, taking_over=me)
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(took) == 1:
                    moved.append(Moved(placement.vm_id, target.id, dict(placement.spec), found_at))
            elif not durable:
                took = await s.execute(
                    update(Vm)
                    .where(Vm.id == placement.vm_id, Vm.lost.is_(False))
                    .values(lost=True)
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(took) == 1:
                    lost.append((placement.vm_id, org))
        if me is not None:
            moved += await _stalled(s, me, found_at)
    return moved, lost


async def _stalled(s: Any, me: str, found_at: float) -> list[Moved]:
    """Moves whose restoring replica's lease lapsed before it had restored:
    each taken, by a conditional UPDATE (so once), to restore again."""
    lapsed = lapsed_replicas()
    rows = (
        await s.execute(
            select(Placement.vm_id, Placement.host_id, Placement.taking_over, Placement.spec)
            .join(Vm, Vm.id == Placement.vm_id)
            .where(
                Vm.deleted_at.is_(None),
                Placement.taking_over.in_(lapsed),
                Placement.taking_over != me,  # not what this pass, or this replica, took
            )
            .limit(BATCH)
        )
    ).all()
    moved = []
    for vm_id, host_id, was, spec in rows:
        took = await s.execute(
            update(Placement)
            .where(Placement.vm_id == vm_id, Placement.taking_over == was)
            .values(taking_over=me)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(took) == 1:
            moved.append(Moved(vm_id, host_id, dict(spec), found_at))
    return moved


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _roomiest(hosts: list[ClusterHost]) -> ClusterHost | None:
    if not hosts:
        return None

    def room(h: ClusterHost) -> tuple[float, float]:
        cap = h.capacity or {}
        return (float(cap.get("memory_free_bytes", 0)), float(cap.get("cpu_free", 0)))

    return max(hosts, key=room)
