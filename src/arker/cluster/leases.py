"""Host leases, after client-go's leaderelection: the record, the renew loop
and its callbacks, each a small named piece, and the fencing rule as one
function.

A host holds its row in `cluster_hosts` by a lease (`lease_expires_at`, on
the database's clock) and a fence, incremented on each acquisition. Every
write a host makes names the fence it holds, so a host that lost its lease
(and was acquired again, by itself restarted or after a partition) is
refused by its old fence. A VM's placement names the host and the fence it
was placed under: a host acts on the VM only while `may_act` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ColumnElement

from arker.server.store import ClusterHost, ClusterReplica, Database

__all__ = [
    "DEFAULT_TTL_S",
    "HostCard",
    "Lease",
    "LeaseCallbacks",
    "LeaseKeeper",
    "acquire",
    "db_now",
    "lapsed_replicas",
    "may_act",
    "renew",
]

log = logging.getLogger("arker.host")

DEFAULT_TTL_S = 5.0
RENEW_EVERY_S = 1.0
# The host stops acting this long before the database would call its lease
# expired: its clock and the round trip must not let two hosts act at once.
SAFETY_S = 1.0


def db_now() -> ColumnElement[Any]:
    """Now, in unix seconds, on the database's clock (the one every lease uses)."""
    return func.extract("epoch", func.clock_timestamp())


def lapsed_replicas() -> Select[str]:
    """The ids of the API replicas whose lease has lapsed (cluster/replica.py):
    what they drove or were restoring is another replica's to take."""
    return select(ClusterReplica.id).where(ClusterReplica.lease_expires_at < db_now())


@dataclass(frozen=True)
class Lease:
    """What this host holds: its id, the fence of this acquisition, and until
    when (this process's monotonic clock) it may act."""

    host_id: str
    fence: int
    deadline: float

    def live(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.deadline


def may_act(
    lease: Lease | None, placement: tuple[str, int] | None, now: float | None = None
) -> bool:
    """The fencing rule: a host acts on a VM only while its lease is live and
    the VM's placement (host id, fence) names this host under the fence of
    its current acquisition. A placement made under an earlier fence was
    made for an earlier life of the host: it is being taken over."""
    if lease is None or placement is None or not lease.live(now):
        return False
    return placement == (lease.host_id, lease.fence)


@dataclass(frozen=True)
class HostCard:
    """Who a host is: its id (kept in its data dir), where replicas call it,
    and the sha256 of the host token it takes."""

    id: str
    url: str
    token_hash: str


async def acquire(
    db: Database, card: HostCard, ttl_s: float = DEFAULT_TTL_S, resume: bool = False
) -> Lease:
    """Take the host's row with a new fence (whatever the old lease's state:
    the VMs placed under the old fence are taken over, see takeover.py).

    With `resume` (a host process starting, which holds its data dir's pool
    lock, so the process before it on this machine is gone), a lease still
    live under the same URL and token keeps its fence: a host agent
    restarted within its TTL (an upgrade, a crash and a restart) keeps its
    VMs instead of having them taken over. An expired lease, or one held
    under another URL (another machine with the same id), takes a new fence."""
    host_id, url, token_hash = card.id, card.url, card.token_hash
    started = time.monotonic()
    now = db_now()
    fence: Any = ClusterHost.fence + 1
    if resume:
        fence = case(
            (
                and_(
                    ClusterHost.lease_expires_at > now,
                    ClusterHost.url == url,
                    ClusterHost.token_hash == token_hash,
                ),
                ClusterHost.fence,
            ),
            else_=ClusterHost.fence + 1,
        )
    values = {
        "id": host_id,
        "url": url,
        "token_hash": token_hash,
        "fence": 1,
        "lease_expires_at": now + ttl_s,
        "seen_at": now,
    }
    stmt = (
        pg_insert(ClusterHost)
        .values(values)
        .on_conflict_do_update(
            index_elements=[ClusterHost.id],
            set_={
                "url": url,
                "token_hash": token_hash,
                "fence": fence,
                "lease_expires_at": now + ttl_s,
                "seen_at": now,
            },
        )
        .returning(ClusterHost.fence)
    )
    async with db.engine.begin() as conn:
        fence = (await conn.execute(stmt)).scalar_one()
    return Lease(host_id, int(fence), started + ttl_s - SAFETY_S)


async def renew(
    db: Database,
    lease: Lease,
    ttl_s: float = DEFAULT_TTL_S,
    capacity: dict[str, float] | None = None,
    goldens: list[str] | None = None,
) -> Lease | None:
    """The lease again for `ttl_s`, if this host still holds it by its fence
    and it has not expired; None when it is lost."""
    started = time.monotonic()
    now = db_now()
    values: dict[str, Any] = {"lease_expires_at": now + ttl_s, "seen_at": now}
    if capacity is not None:
        values["capacity"] = capacity
    if goldens is not None:
        values["goldens"] = goldens
    stmt = (
        update(ClusterHost)
        .where(
            ClusterHost.id == lease.host_id,
            ClusterHost.fence == lease.fence,
            ClusterHost.lease_expires_at > now,
        )
        .values(values)
    )
    count = await db.write(stmt, {})
    if not count:
        return None
    return Lease(lease.host_id, lease.fence, started + ttl_s - SAFETY_S)


async def live_hosts(db: Database) -> list[ClusterHost]:
    async with db.session() as s:
        rows = await s.scalars(select(ClusterHost).where(ClusterHost.lease_expires_at > db_now()))
        return list(rows)


@dataclass
class LeaseCallbacks:
    """What the keeper calls: on each acquisition (with the lease), on each
    renewal, and when the lease is lost (the host must stop acting at once)."""

    started: Callable[[Lease], Awaitable[None]]
    renewed: Callable[[Lease], Awaitable[None]]
    stopped: Callable[[], Awaitable[None]]
    # What the row reports each renewal: capacity and goldens held.
    report: Callable[[], Awaitable[tuple[dict[str, float], list[str]]]]


class LeaseKeeper:
    """The renew loop: acquire, renew about every second, and when a renewal
    fails (or cannot be made before the deadline) say so and acquire again."""

    def __init__(
        self,
        db: Database,
        card: HostCard,
        callbacks: LeaseCallbacks,
        ttl_s: float = DEFAULT_TTL_S,
        every_s: float = RENEW_EVERY_S,
    ) -> None:
        self.db, self.card, self.host_id = db, card, card.id
        self.callbacks = callbacks
        self.ttl_s, self.every_s = ttl_s, every_s
        self.lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None

    def current(self) -> Lease | None:
        lease = self.lease
        return lease if lease is not None and lease.live() else None

    async def start(self) -> None:
        """Acquire once (raising if the database cannot be reached), then keep
        it. This first acquisition resumes a lease still live (see `acquire`)."""
        await self._acquire(resume=True)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _acquire(self, resume: bool = False) -> None:
        self.lease = await acquire(self.db, self.card, self.ttl_s, resume=resume)
        log.info("host %s holds its lease with fence %d", self.host_id, self.lease.fence)
        await self.callbacks.started(self.lease)

    async def _lose(self) -> None:
        if self.lease is not None:
            log.warning("host %s lost its lease (fence %d)", self.host_id, self.lease.fence)
        self.lease = None
        await self.callbacks.stopped()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                if self.lease is None:
                    await self._acquire()
                    continue
                capacity, goldens = await self.callbacks.report()
                left = max(0.01, self.lease.deadline - time.monotonic())
                renewed = await asyncio.wait_for(
                    renew(self.db, self.lease, self.ttl_s, capacity, goldens), left
                )
                if renewed is None:
                    await self._lose()
                    continue
                self.lease = renewed
                await self.callbacks.renewed(renewed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
                if self.lease is not None and not self.lease.live():
                    await self._lose()
