"""What an API replica of a cluster runs beside the service: the router's
view of the hosts kept fresh, the takeover loop, and its own lease.

Each replica holds a row in `cluster_replicas` by a lease renewed about
every second, and names itself on the runs its tasks drive (`runs.driver`).
A replica SIGKILLed mid-run leaves those runs going on their hosts with no
one to record their ends: a background run would say `running` for ever.
So each pass, a replica takes the runs whose driver's lease has lapsed, in
one UPDATE conditional on the driver as read (two replicas racing: the
second finds the row already taken), and waits for each on its host,
recording its end (Runs.adopt). A run whose VM's host was lost too is the
takeover's (it restarts it from a checkpoint or fails it); the adopted
watch then ends without recording anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from ulid import ULID

from arker.cluster.leases import DEFAULT_TTL_S, RENEW_EVERY_S, db_now, lapsed_replicas
from arker.cluster.router import ClusterEngine
from arker.cluster.takeover import Takeover
from arker.server.runs import IN_FLIGHT, Runs
from arker.server.service import Service
from arker.server.store import ClusterReplica, Database, Run

__all__ = ["ReplicaLease", "replica", "take_orphans"]

log = logging.getLogger("arker.cluster")

# A dead replica's row is dropped once its lease is this old and no run in
# flight names it.
FORGET_AFTER_S = 600.0


class ReplicaLease:
    """This replica's lease, and adoption of the runs of replicas that lost theirs."""

    def __init__(
        self,
        db: Database,
        runs: Runs,
        ttl_s: float = DEFAULT_TTL_S,
        every_s: float = RENEW_EVERY_S,
    ) -> None:
        self.db, self.runs = db, runs
        self.ttl_s, self.every_s = ttl_s, every_s
        self.id = "r-" + str(ULID())
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register (raising if the database cannot be reached), then keep the lease."""
        await self.renew()
        self.runs.driver = self.id
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop renewing and give the lease up, so that the other replicas
        adopt this one's runs in flight at once rather than after its TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    update(ClusterReplica)
                    .where(ClusterReplica.id == self.id)
                    .values(lease_expires_at=db_now() - 1)
                )

    async def renew(self) -> None:
        now = db_now()
        values = {"id": self.id, "lease_expires_at": now + self.ttl_s, "seen_at": now}
        stmt = (
            pg_insert(ClusterReplica)
            .values(values)
            .on_conflict_do_update(
                index_elements=[ClusterReplica.id],
                set_={"lease_expires_at": now + self.ttl_s, "seen_at": now},
            )
        )
        async with self.db.engine.begin() as conn:
            await conn.execute(stmt)

    async def adopt_orphans(self) -> list[str]:
        """Take the runs in flight whose driver's lease lapsed; start watching
        each. Their ids."""
        taken = await take_orphans(self.db, self.id)
        if not taken:
            return []
        async with self.db.session() as s:
            rows = list(await s.scalars(select(Run).where(Run.id.in_(taken))))
        for row in rows:
            log.info("run %s of vm %s: its replica's lease lapsed", row.id, row.vm_id)
            self.runs.adopt(row)
        return taken

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.renew()
                await self.adopt_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("replica lease pass failed", exc_info=True)


async def take_orphans(db: Database, me: str) -> list[str]:
    """In one statement, make `me` the driver of every run in flight whose
    driver's lease lapsed (a row another replica took first no longer
    matches: each run is taken once); drop long-dead replicas' rows."""
    now = db_now()
    lapsed = lapsed_replicas()
    async with db.engine.begin() as conn:
        taken = list(
            (
                await conn.execute(
                    update(Run)
                    .where(Run.state.in_(IN_FLIGHT), Run.driver.in_(lapsed))
                    .values(driver=me)
                    .returning(Run.id)
                )
            ).scalars()
        )
        await conn.execute(
            delete(ClusterReplica).where(
                ClusterReplica.lease_expires_at < now - FORGET_AFTER_S,
                ~exists().where(and_(Run.driver == ClusterReplica.id, Run.state.in_(IN_FLIGHT))),
            )
        )
    return taken


@asynccontextmanager
async def replica(service: Service) -> AsyncIterator[Takeover]:
    router = service.engine
    if not isinstance(router, ClusterEngine):
        raise TypeError("a cluster replica serves over the cluster engine")
    await router.refresh_hosts()
    lease = ReplicaLease(service.db, service.runs)
    await lease.start()
    takeover = Takeover(
        service.db, router, service.runs, service.threads, service._forget_vm, me=lease.id
    )
    takeover.start()
    service.takeover = takeover  # type: ignore[attr-defined]
    service.replica_lease = lease  # type: ignore[attr-defined]
    try:
        yield takeover
    finally:
        await takeover.stop()
        await lease.stop()
